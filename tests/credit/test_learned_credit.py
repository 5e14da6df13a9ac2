"""Credit learned from outcomes only (jirl/credit/prime.py, jirl/credit/decomposition.py): the
losses against hand formulas, and, on the decomposable bigram task whose true per-token reward
is known, learned token rewards that correlate with the truth (measured: PRIME's implicit PRM
0.64, randomised return decomposition 0.64 on held-out samples; random would be 0)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.credit.decomposition import decomposition_loss, random_step_subsets, randomized_decomposition_loss
from jirl.credit.models import token_rewards
from jirl.credit.prime import group_relative_labels, prime_loss, prime_process_rewards
from jirl.credit.schemes import credit_correlation
from jirl.mdp.env import sequence_rewards
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.mdp.tasks import make_task
from jirl.models.heads import TokenRewardModel
from jirl.models.scoring import response_log_probs, response_mask
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.rewards.losses import outcome_decomposition_loss
from jirl.train.loop import train_on_arrays
from jirl.train.step import init_train_state, make_update_step

TASK = make_task("bigram", num_chars=4, horizon=8, seed=3)
CONFIG = gpt2_tiny(TASK.vocab_size, max_len=TASK.prompt_width + TASK.horizon, d_model=32)
GROUP = 8


@functools.cache
def reference():
    return nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(0)))


@functools.cache
def samples(seed, n):
    """Responses of the reference policy in groups of 8 per prompt, with their true per-token
    rewards, sparse returns and group-relative outcome labels."""
    graphdef, ref = reference()
    prompt_key, sample_key = jax.random.split(jax.random.key(seed))
    prompts, lens = TASK.sample_prompts(prompt_key, n // GROUP)
    prompts, lens = jnp.repeat(prompts, GROUP, 0), jnp.repeat(lens, GROUP)
    out = generate(graphdef, ref, prompts, lens, sample_key, SamplingConfig(TASK.horizon, TASK.eos_id))
    true = sequence_rewards(TASK, out.tokens, out.prompt_lens, out.response_lens)
    return {
        "tokens": np.asarray(out.tokens), "prompt_len": np.asarray(out.prompt_lens),
        "response_len": np.asarray(out.response_lens),
        "ref_log_probs": np.asarray(response_log_probs(graphdef, ref, out.tokens, out.prompt_lens, TASK.horizon)),
        "returns": np.asarray(true.sum(1)), "labels": np.asarray(group_relative_labels(true.sum(1), GROUP)),
        "true": np.asarray(true),
    }


def fit(loss_fn, params, data, steps=300):
    optimizer = optax.adam(3e-3)
    state = init_train_state(params, optimizer, jax.random.key(0))
    state, _ = train_on_arrays(state, make_update_step(loss_fn, optimizer), data, steps, 64, 0)
    return state.full_params


def correlation_on_held_out(token_credit):
    test = samples(2, 512)
    mask = response_mask(jnp.asarray(test["response_len"]), TASK.horizon)
    return float(credit_correlation(token_credit(test), jnp.asarray(test["true"]), mask))


def test_group_relative_labels():
    returns = jnp.array([1.0, 3.0, 2.0, 2.0, 0.0, 5.0])
    np.testing.assert_array_equal(group_relative_labels(returns, 3), [0, 1, 0, 0, 0, 1])


def test_prime_loss_is_cross_entropy_on_the_summed_log_ratio():
    graphdef, ref = reference()
    data = {k: jnp.asarray(v[:16]) for k, v in samples(1, 2048).items()}
    params = jax.tree_util.tree_map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), ref)
    beta = 0.7
    loss, _ = prime_loss(graphdef, TASK.horizon, beta)(params, data, None)
    lp = np.asarray(response_log_probs(graphdef, params, data["tokens"], data["prompt_len"], TASK.horizon), np.float64)
    mask = np.arange(TASK.horizon)[None, :] < np.asarray(data["response_len"])[:, None]
    summed = beta * np.sum(np.where(mask, lp - np.asarray(data["ref_log_probs"]), 0), axis=1)
    labels = np.asarray(data["labels"])
    expected = -np.mean(labels * np.log(1 / (1 + np.exp(-summed))) + (1 - labels) * np.log(1 - 1 / (1 + np.exp(-summed))))
    assert float(loss.value) == pytest.approx(expected, rel=1e-4)


def test_prime_implicit_prm_learns_positive_token_credit_from_outcome_labels():
    graphdef, ref = reference()
    beta = 1.0
    train = {k: v for k, v in samples(1, 2048).items() if k not in ("returns", "true")}
    untrained = correlation_on_held_out(
        lambda d: prime_process_rewards(graphdef, ref, jnp.asarray(d["ref_log_probs"]), jnp.asarray(d["tokens"]),
                                        jnp.asarray(d["prompt_len"]), jnp.asarray(d["response_len"]), TASK.horizon, beta)
    )
    assert untrained == 0.0  # pi_phi = pi_ref: no credit at all
    prm = fit(prime_loss(graphdef, TASK.horizon, beta), ref, train)
    learned = correlation_on_held_out(
        lambda d: prime_process_rewards(graphdef, prm, jnp.asarray(d["ref_log_probs"]), jnp.asarray(d["tokens"]),
                                        jnp.asarray(d["prompt_len"]), jnp.asarray(d["response_len"]), TASK.horizon, beta)
    )
    assert learned > 0.45, learned


def test_randomized_decomposition_with_every_step_is_the_full_regression():
    rng = np.random.default_rng(0)
    predicted = jnp.asarray(rng.standard_normal((5, 6)), jnp.float32)
    mask = jnp.arange(6)[None, :] < jnp.array([6, 3, 1, 4, 2])[:, None]
    returns = jnp.asarray(rng.standard_normal(5), jnp.float32)
    full = outcome_decomposition_loss(predicted, mask, returns, kind="mse")
    random = randomized_decomposition_loss(predicted, mask, returns, jax.random.key(1), subset_size=6)
    assert float(random.value) == pytest.approx(float(full.value), rel=1e-5)


def test_random_subsets_have_the_right_size_and_give_unbiased_return_estimates():
    rng = np.random.default_rng(1)
    lengths = jnp.array([6, 3, 1, 5])
    mask = jnp.arange(6)[None, :] < lengths[:, None]
    predicted = jnp.where(mask, jnp.asarray(rng.standard_normal((4, 6)), jnp.float32), 0.0)
    keys = jax.random.split(jax.random.key(0), 4000)
    subsets = jax.vmap(lambda k: random_step_subsets(k, mask, 2))(keys)
    np.testing.assert_array_equal(subsets.sum(-1)[0], [2, 2, 1, 2])
    assert not bool(jnp.any(subsets & ~mask))
    scale = (lengths / jnp.minimum(lengths, 2))[None, :]
    estimates = scale * jnp.sum(jnp.where(subsets, predicted, 0.0), axis=-1)
    np.testing.assert_allclose(estimates.mean(0), predicted.sum(1), atol=0.08)


def test_return_decomposition_learns_positive_token_credit_from_returns():
    token_graphdef, params = nnx.split(TokenRewardModel(CONFIG, rngs=nnx.Rngs(1)))
    train = {k: samples(1, 2048)[k] for k in ("tokens", "prompt_len", "response_len", "returns")}
    learned = fit(decomposition_loss(token_graphdef, TASK.horizon, subset_size=4), params, train)
    correlation = correlation_on_held_out(
        lambda d: token_rewards(token_graphdef, learned, jnp.asarray(d["tokens"]), jnp.asarray(d["prompt_len"]), TASK.horizon)
    )
    assert correlation > 0.45, correlation
