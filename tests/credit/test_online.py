"""``make_credit_rl_programs``: seed-vmapped RL whose rewards are the credit function's, with the
online model of PRIME / return decomposition updated on the same samples (``online_model``)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.credit.online import OnlineModel, make_credit_rl_programs, online_model
from jirl.eval.setting import Setting
from jirl.mdp.env import sequence_rewards
from jirl.mdp.tasks import make_task
from jirl.models.heads import TokenRewardModel
from jirl.models.transformer import ModelSize
from jirl.rl.loop import RLConfig, check_update_metrics
from jirl.train.loop import NonFiniteLossError
from jirl.train.losses import LossOutput

RL = RLConfig(advantage="rloo", policy_loss="pg", prompts_per_iteration=2, group_size=2)
SEED_KEYS = jax.random.split(jax.random.key(9), 2)


@pytest.fixture(scope="module")
def setting():
    return Setting.build(make_task("bigram", num_chars=2, horizon=3), ModelSize(family="gpt2", d_model=8, num_layers=1), seed=0, exact=False)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def row(tree, i):
    return [x[i] for x in leaves(tree)]


def equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_online_model_of_each_scheme(setting):
    opt = optax.adam(1e-3)
    assert online_model("terminal", setting, opt, seed=0, prime_beta=1.0, decomposition_subset=2) is None
    prime = online_model("prime", setting, opt, seed=0, prime_beta=1.0, decomposition_subset=2)
    assert prime.graphdef is setting.graphdef and equal(leaves(prime.init), leaves(setting.reference))
    assert all(a is not b for a, b in zip(jax.tree_util.tree_leaves(prime.init), jax.tree_util.tree_leaves(setting.reference)))
    decomposition = online_model("decomposition", setting, opt, seed=5, prime_beta=1.0, decomposition_subset=2)
    assert equal(leaves(decomposition.init), leaves(nnx.split(TokenRewardModel(setting.model_config, rngs=nnx.Rngs(5)))[1]))


def test_the_policy_learns_from_the_credit_and_seeds_are_independent(setting):
    task = setting.task

    def true_credit(aux, tokens, prompt_lens, response_lens):
        assert aux == {}  # no online model
        return sequence_rewards(task, tokens, prompt_lens, response_lens)

    def zero_credit(aux, tokens, prompt_lens, response_lens):
        return jnp.zeros_like(sequence_rewards(task, tokens, prompt_lens, response_lens))

    def evaluate(policy, aux, key):
        return {"first_leaf": jax.tree_util.tree_leaves(policy)[0].sum()}

    reference = leaves(setting.reference)
    # No credit, no advantage: every seed's policy stays exactly the reference.
    iterate, _, init = make_credit_rl_programs(setting, RL, optax.adam(1e-2), zero_credit, evaluate)
    carry, metrics = iterate(init(SEED_KEYS), jax.random.split(jax.random.key(0), 2))
    assert equal(row(carry[0].full_params, 0), reference) and equal(row(carry[0].full_params, 1), reference)
    assert metrics["reward"].shape == (2,) and not np.any(metrics["update/nonfinite"])

    iterate, evaluate, init = make_credit_rl_programs(setting, RL, optax.adam(1e-2), true_credit, evaluate)
    k0, k1 = jax.random.split(jax.random.key(1), 2)
    two, _ = iterate(init(SEED_KEYS), jnp.stack([k0, k1]))
    same, _ = iterate(init(SEED_KEYS), jnp.stack([k0, k0]))
    assert not equal(row(two[0].full_params, 0), reference)
    assert not equal(row(two[0].full_params, 0), row(two[0].full_params, 1))  # seeds draw their own samples
    assert equal(row(two[0].full_params, 0), row(same[0].full_params, 0))  # and do not see each other's
    assert equal(row(same[0].full_params, 0), row(same[0].full_params, 1))
    scores = evaluate(two, jnp.stack([k0, k1]))["first_leaf"]
    np.testing.assert_allclose(scores, [row(two[0].full_params, s)[0].sum() for s in (0, 1)], rtol=1e-6)


def test_the_online_model_is_updated_on_the_policys_samples(setting):
    online = online_model("prime", setting, optax.adam(1e-2), seed=0, prime_beta=1.0, decomposition_subset=2)
    seen = []

    def credit(aux, tokens, prompt_lens, response_lens):
        seen.append(jax.tree_util.tree_structure(aux))
        return sequence_rewards(setting.task, tokens, prompt_lens, response_lens)

    iterate, _, init = make_credit_rl_programs(setting, RL, optax.adam(1e-2), credit, lambda *a: {}, online)
    carry = init(SEED_KEYS)
    assert equal(row(carry[1].full_params, 0), leaves(online.init))
    carry, _ = iterate(carry, jax.random.split(jax.random.key(2), 2))
    assert seen and seen[0] == jax.tree_util.tree_structure(online.init)  # the credit reads the online model
    after = row(carry[1].full_params, 0)
    assert not equal(after, leaves(online.init)) and all(np.all(np.isfinite(x)) for x in after)


def quadratic_online_model(target):
    """An online model whose loss ``sum_leaves sum (w - target)^2`` ignores the batch: one SGD
    step from ``w0`` at rate ``lr`` lands on ``w0 - 2 lr (w0 - target)`` (closed form)."""
    graphdef, init = nnx.split(nnx.Linear(2, 1, rngs=nnx.Rngs(0)))

    def loss(params, batch, key):
        total = sum(jnp.sum((w - target) ** 2) for w in jax.tree_util.tree_leaves(params))
        return LossOutput(total=total, count=jnp.ones(())), {}

    return OnlineModel(graphdef, init, loss, optax.sgd(0.1))


def test_the_online_update_is_one_guarded_train_step(setting):
    """The online model takes exactly one optimizer step per iteration (closed form), and a NaN
    loss leaves it untouched, raises its flag and makes check_update_metrics name it."""
    zero = lambda aux, t, p, r: jnp.zeros_like(sequence_rewards(setting.task, t, p, r))  # noqa: E731
    online = quadratic_online_model(1.0)
    iterate, _, init = make_credit_rl_programs(setting, RL, optax.adam(1e-2), zero, lambda *a: {}, online)
    carry, metrics = iterate(init(SEED_KEYS), SEED_KEYS)
    for seed in (0, 1):
        expected = [w - 0.2 * (w - 1.0) for w in leaves(online.init)]
        for got, want in zip(row(carry[1].full_params, seed), expected):
            np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not np.any(metrics["online/nonfinite"]) and np.all(np.asarray(carry[1].step) == 1)

    broken = quadratic_online_model(jnp.nan)
    iterate, _, init = make_credit_rl_programs(setting, RL, optax.adam(1e-2), zero, lambda *a: {}, broken)
    carry, metrics = iterate(init(SEED_KEYS), SEED_KEYS)
    assert np.all(metrics["online/nonfinite"]) and np.all(np.asarray(carry[1].step) == 0)
    assert equal(row(carry[1].full_params, 0), leaves(broken.init))
    with pytest.raises(NonFiniteLossError, match="online model"):
        check_update_metrics(jax.device_get(metrics))
