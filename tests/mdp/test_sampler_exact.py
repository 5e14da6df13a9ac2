"""The sampler's draws follow ``softmax(logits)`` to float rounding, at a 49k vocabulary too.

The sampling distribution is computed exactly rather than estimated: a large vocabulary is
drawn from integer weights (a block, then a token inside it) with exact cumulative sums, so
each token's sampling probability is ``w_block / sum(w) * v_token / sum(v)``, read off the
weights the sampler itself computes; 10^5 real draws are then checked against it. The
one-level float32 inverse CDF the sampler used before fails the same check (its sampling
distribution is enumerated over the uniform's 2^23-point grid): it can never draw thousands
of tokens whose probability is above 1e-6.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jirl.mdp.sampler import blocks_of, integer_weights, sample_from_logits

VOCAB = 49_152  # SmolLM2's vocabulary
GRID = 2**23  # float32 uniforms are k * 2^-23, k < 2^23
F32 = np.float32


def peaked_logits(kind: str) -> jax.Array:
    rng = np.random.default_rng(0)
    if kind == "zipf":  # a language model's long tail: p ~ rank^-1.1, shuffled over ids
        logits = -1.1 * np.log(1.0 + rng.permutation(VOCAB))
    elif kind == "one_peak":  # one token holds nearly all the mass
        logits = rng.normal(size=VOCAB)
        logits[123] += 12.0
    else:  # Gaussian logits at scale 3
        logits = 3.0 * rng.normal(size=VOCAB)
    return jnp.asarray(logits, jnp.float32)


def two_level_distribution(probs) -> np.ndarray:
    """Each token's exact sampling probability: its block's weight share times its weight share
    inside the block, from the sampler's own integer weights."""
    blocks = blocks_of(probs)
    block_w = np.asarray(integer_weights(jnp.sum(blocks, axis=-1)), np.float64)
    inside_w = np.asarray(jax.vmap(integer_weights)(blocks), np.float64)
    inside_w[block_w == 0] = 0.0  # never drawn (and its shares are 0/0)
    shares = inside_w / np.maximum(inside_w.sum(axis=1, keepdims=True), 1.0)
    return (block_w[:, None] / block_w.sum() * shares).reshape(-1)[: len(probs)]


def one_level_distribution(probs) -> np.ndarray:
    """The same for the one-level inverse CDF over the whole vocabulary (the old sampler)."""
    cdf = np.asarray(jnp.cumsum(probs))
    points = (np.arange(GRID, dtype=F32) * F32(2.0**-23) * cdf[-1]).astype(F32)
    counts = np.bincount(np.minimum(np.searchsorted(cdf, points, side="right"), len(cdf) - 1), minlength=len(cdf))
    return counts / GRID


def true_probs(logits) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("kind", ["zipf", "one_peak", "gaussian"])
def test_every_token_is_drawn_with_its_probability(kind):
    logits = peaked_logits(kind)
    p = true_probs(logits)
    q = two_level_distribution(jax.nn.softmax(logits))
    assert abs(q.sum() - 1.0) < 1e-9
    assert not np.any((p > 1e-6) & (q == 0)), "a token of probability above 1e-6 can never be drawn"
    assert 0.5 * np.abs(q - p).sum() < 1e-6  # the issue asks for 1e-5

    old = one_level_distribution(jax.nn.softmax(logits))  # the check can fail: the old sampler does
    assert np.any((p > 1e-6) & (old == 0)) or 0.5 * np.abs(old - p).sum() > 1e-5


def test_draws_follow_the_computed_distribution():
    """10^5 real draws against the exact distribution (a chi-square on the 20 likeliest tokens
    and the rest pooled): the enumeration describes what the sampler does."""
    logits = peaked_logits("zipf")
    q = two_level_distribution(jax.nn.softmax(logits))
    n = 100_000
    draws = jax.jit(jax.vmap(lambda k: sample_from_logits(k, logits)))(jax.random.split(jax.random.key(0), n))
    top = np.argsort(q)[::-1][:20]
    observed = np.bincount(np.asarray(draws), minlength=VOCAB)
    cells_obs = np.append(observed[top], n - observed[top].sum())
    cells_exp = n * np.append(q[top], 1.0 - q[top].sum())
    chi2 = np.sum((cells_obs - cells_exp) ** 2 / cells_exp)
    assert chi2 < 50.0  # 20 degrees of freedom: P(chi2 > 50) ~ 2e-4


def test_small_vocabularies_keep_the_one_level_draws():
    logits = jax.random.normal(jax.random.key(3), (500, 40)) * 2
    keys = jax.random.split(jax.random.key(5), 500)
    cdf = jnp.cumsum(jax.nn.softmax(logits), axis=-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, (1,)))(keys) * cdf[:, -1:]
    expected = jnp.minimum(jnp.sum(cdf <= u, axis=-1), 39)
    np.testing.assert_array_equal(jax.vmap(sample_from_logits)(keys, logits), expected)
