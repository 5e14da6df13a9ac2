"""Token-level (process) reward models on the decomposable bigram task, whose true per-token
reward is known: trained from per-step labels, and from outcome labels only."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.mdp.demonstrations import from_optimum
from jirl.mdp.tasks import make_task
from jirl.models.heads import TokenRewardModel
from jirl.models.scoring import gather_response, response_mask
from jirl.models.transformer import gpt2_tiny
from jirl.rewards.losses import outcome_decomposition_loss, step_label_loss
from jirl.train.step import init_train_state, make_update_step

TASK = make_task("bigram", num_chars=3, horizon=4, seed=5)


def data(num, seed):
    demos = from_optimum(TASK, jax.random.key(seed), num, beta=100.0)
    return {
        "tokens": np.asarray(demos.tokens), "prompt_len": np.asarray(demos.prompt_lens),
        "response_len": np.asarray(demos.response_lens), "true": np.asarray(demos.rewards),
    }


def token_rewards(graphdef, params, batch):
    per_slot = nnx.merge(graphdef, params)(jnp.asarray(batch["tokens"]))
    return gather_response(per_slot, jnp.asarray(batch["prompt_len"]), TASK.horizon)


def train(kind, steps=600):
    graphdef, params = nnx.split(TokenRewardModel(gpt2_tiny(TASK.vocab_size, max_len=8, d_model=32), rngs=nnx.Rngs(0)))

    def loss_fn(params, batch, key):
        r = token_rewards(graphdef, params, batch)
        mask = response_mask(batch["response_len"], TASK.horizon)
        if kind == "steps":
            return step_label_loss(r, (batch["true"] > 0).astype(jnp.float32), mask), {}
        return outcome_decomposition_loss(r, mask, jnp.sum(batch["true"], axis=1)), {}

    optimizer = optax.adam(3e-3)
    state = init_train_state(params, optimizer, jax.random.key(0))
    step = make_update_step(loss_fn, optimizer)
    pool = data(4096, 0)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, 4096, 64)
        state, _ = step(state, {k: v[idx] for k, v in pool.items()})
    return graphdef, state.full_params


@pytest.mark.slow
def test_a_process_reward_model_learns_per_step_labels():
    graphdef, params = train("steps")
    test = data(1024, 1)
    mask = np.asarray(response_mask(test["response_len"], TASK.horizon))
    predicted = np.asarray(token_rewards(graphdef, params, test)) > 0
    accuracy = np.mean(predicted[mask] == (test["true"][mask] > 0))
    assert accuracy > 0.95, accuracy


@pytest.mark.slow
def test_token_rewards_from_outcome_labels_sum_to_the_outcome_and_track_the_true_credit():
    graphdef, params = train("outcome")
    test = data(1024, 1)
    mask = np.asarray(response_mask(test["response_len"], TASK.horizon))
    r = np.asarray(token_rewards(graphdef, params, test))
    totals, outcome = (r * mask).sum(1), test["true"].sum(1)
    assert 1 - np.mean((totals - outcome) ** 2) / np.var(outcome) > 0.9  # R^2 of the sums
    # Per-token credit is identified only up to shaping, yet here it follows the truth.
    correlation = np.corrcoef(r[mask], test["true"][mask])[0, 1]
    assert correlation > 0.5, correlation
