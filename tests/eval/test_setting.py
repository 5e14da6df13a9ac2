"""``Setting``: the one shared setting of a study, exact (with the oracle tree) or not, with its
extras."""

import jax
import numpy as np
import pytest
from flax import nnx

from jirl.eval.setting import Setting
from jirl.mdp import oracle
from jirl.mdp.tasks import TaskConfig, make_task
from jirl.models.transformer import ModelSize, Transformer

MODEL = ModelSize(family="gpt2", d_model=16)


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_exact_setting_holds_the_task_its_tree_and_the_initial_policy_as_reference():
    setting = Setting.build(TaskConfig("bigram", ("num_chars=2", "horizon=3")), MODEL, seed=3)
    task = setting.task
    assert setting.exact and task.horizon == 3
    assert setting.model_config.max_len == task.prompt_width + task.horizon
    _, initial = nnx.split(Transformer(setting.model_config, rngs=nnx.Rngs(3)))
    assert same(setting.reference, initial)
    # The reference's tree is its own: KL 0 to itself; its exact reward is the oracle's.
    at_reference = setting.evaluate(setting.reference, beta=0.5)
    assert at_reference["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert at_reference["expected_reward"] == pytest.approx(float(oracle.expected_reward(setting.spec, setting.ref_tree, setting.rewards)))
    # pi*_beta beats the reference on the objective and is at KL 0 from itself.
    optimum = setting.optimum(0.5)
    at_optimum = setting.evaluate_tree(optimum, 0.5, optimum)
    assert at_optimum["objective"] > at_reference["objective"] and at_optimum["kl_to_optimal"] == pytest.approx(0.0, abs=1e-6)


def test_a_built_task_gives_the_same_setting_as_its_config():
    from_config = Setting.build(TaskConfig("bigram", ("num_chars=2", "horizon=3")), MODEL, seed=0, exact=False)
    from_task = Setting.build(make_task("bigram", num_chars=2, horizon=3), MODEL, seed=0, exact=False)
    assert same(from_config.reference, from_task.reference)
    assert np.array_equal(from_config.task.score_table, from_task.task.score_table)


def test_a_setting_that_is_not_exact_refuses_exact_evaluation():
    setting = Setting.build(make_task("bigram", num_chars=4, horizon=64), MODEL, seed=0, exact=False)
    assert not setting.exact and setting.spec is None and setting.ref_tree is None
    with pytest.raises(ValueError, match="exact=True"):
        setting.evaluate(setting.reference, beta=1.0)


def test_extras_survive_a_new_reference():
    setting = Setting.build(TaskConfig("bigram", ("num_chars=2", "horizon=2")), MODEL, seed=0)
    setting.extras["test"] = {"tokens": 1}
    trained = jax.tree_util.tree_map(lambda x: x + 0.1, setting.reference)
    moved = setting.with_reference(trained)
    assert moved.extras == {"test": {"tokens": 1}} and moved.extras is not setting.extras
    assert same(moved.reference, trained) and same(setting.ref_tree, setting.policy_tree(setting.reference))
    # The exact tree follows the new reference: it is at KL 0 from it, the old one is not.
    assert float(oracle.kl_divergence(moved.spec, moved.policy_tree(trained), moved.ref_tree)) == pytest.approx(0.0, abs=1e-6)
    assert float(oracle.kl_divergence(moved.spec, setting.ref_tree, moved.ref_tree)) > 1e-4
