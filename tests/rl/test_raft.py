"""Best-of-N selection and rejection-sampling fine-tuning (RAFT), checked against loops and the
exact oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.mdp import oracle
from jirl.mdp.best_of_n import best_of_n_stats
from jirl.mdp.env import sequence_rewards
from jirl.mdp.tasks import make_task
from jirl.models.scoring import logits_fn
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.rl.raft import RAFTConfig, best_in_groups, raft_iteration, select_best_of_n
from jirl.train.sft import sft_loss
from jirl.train.step import init_train_state, make_update_step

TASK = make_task("bigram", num_chars=3, horizon=4, seed=0)


@pytest.mark.parametrize("group_size", [1, 3, 8])
def test_best_in_groups_matches_a_loop(group_size):
    rng = np.random.default_rng(group_size)
    scores = rng.integers(0, 4, size=5 * group_size).astype(np.float32)  # small ints: many ties
    expected = []
    for g in range(5):
        best = g * group_size
        for i in range(g * group_size, (g + 1) * group_size):
            if scores[i] > scores[best]:
                best = i
        expected.append(best)
    np.testing.assert_array_equal(np.asarray(best_in_groups(jnp.asarray(scores), group_size)), expected)
    with pytest.raises(ValueError, match="groups of"):
        best_in_groups(jnp.zeros(7), 2)


def split_policy():
    return nnx.split(Transformer(gpt2_tiny(TASK.vocab_size, max_len=8, d_model=32), rngs=nnx.Rngs(0)))


def test_selection_keeps_each_prompts_highest_return():
    graphdef, params = split_policy()
    config = RAFTConfig(n=6, prompts_per_iteration=4)
    batch, metrics = select_best_of_n(jax.random.key(3), TASK, graphdef, params, config)
    kept = sequence_rewards(TASK, batch["tokens"], batch["prompt_len"], batch["response_len"]).sum(1)
    assert metrics["best_reward"] == pytest.approx(float(kept.mean()), rel=1e-5)
    assert metrics["best_reward"] > metrics["reward"]


@pytest.mark.slow
def test_raft_raises_the_exact_expected_reward_and_moves_at_most_the_best_of_n_kl_per_round():
    spec = TASK.tree_spec()
    rewards = oracle.rewards_from_step_fn(spec, TASK.step_reward)
    graphdef, params = split_policy()
    ref_tree = oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, params))
    optimizer = optax.adam(3e-3)
    state = init_train_state(params, optimizer, jax.random.key(0))
    step = make_update_step(sft_loss(graphdef), optimizer)
    config = RAFTConfig(n=4, prompts_per_iteration=32)

    def exact(params):
        tree = oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, params))
        return oracle.evaluate(spec, tree, ref_tree, rewards, 1.0)

    start = exact(state.full_params)
    for round_ in range(30):
        state, metrics = raft_iteration(jax.random.key(round_), TASK, graphdef, state, step, config)
    end = exact(state.full_params)
    assert float(end["expected_reward"]) > float(start["expected_reward"]) + 0.5, (start, end)
    assert np.isfinite(metrics["sft_loss"])
    # Iterated selection compounds: after 30 rounds RAFT beats one exact best-of-4 of the start.
    one_round = best_of_n_stats(spec, ref_tree, rewards, 4)["expected_reward"]
    assert float(end["expected_reward"]) > one_round, (float(end["expected_reward"]), one_round)
