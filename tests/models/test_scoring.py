"""The chunked LM-head log-probs against full logits and a NumPy log-softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jirl.models.scoring import HEAD_CHUNK, gather_response, head_log_probs, response_log_probs, token_log_probs
from jirl.models.transformer import Transformer, llama_tiny


def numpy_log_probs(hidden, weight, targets, temperature):
    logits = np.asarray(hidden, np.float64) @ np.asarray(weight, np.float64).T / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return np.take_along_axis(log_softmax, np.asarray(targets)[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("vocab, chunk", [(1000, 256), (1024, 256), (300, 512)])
def test_head_log_probs_match_log_softmax_and_its_gradient(vocab, chunk):
    """Values against NumPy; gradients against autodiff of the unchunked ``token_log_probs``.
    1000 / 256 leaves a padded last chunk; 300 < 512 takes the plain path."""
    hidden = jax.random.normal(jax.random.key(0), (3, 5, 16))
    weight = jax.random.normal(jax.random.key(1), (vocab, 16))
    targets = jax.random.randint(jax.random.key(2), (3, 5), 0, vocab)
    chunked = jax.jit(head_log_probs, static_argnums=4)(hidden, weight, targets, 0.7, chunk)
    np.testing.assert_allclose(chunked, numpy_log_probs(hidden, weight, targets, 0.7), atol=1e-4)

    # A non-linear read of the log-probs, so every token's cotangent differs.
    def loss(log_probs_fn):
        return lambda h, w: jnp.sum(jnp.sin(log_probs_fn(h, w)))

    chunked_grads = jax.jit(jax.grad(loss(lambda h, w: head_log_probs(h, w, targets, 0.7, chunk)), argnums=(0, 1)))(hidden, weight)
    full_grads = jax.jit(jax.grad(loss(lambda h, w: token_log_probs(h @ w.T, targets, 0.7)), argnums=(0, 1)))(hidden, weight)
    for got, want in zip(chunked_grads, full_grads):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_response_log_probs_with_a_vocabulary_past_one_chunk_match_the_model_logits(tie_embeddings):
    """A vocabulary of ``HEAD_CHUNK + 808`` takes the chunked path in ``response_log_probs``;
    its log-probs and gradients equal those read from the model's full logits."""
    vocab = HEAD_CHUNK + 808
    config = llama_tiny(vocab, d_model=16, num_layers=1, num_heads=2, tie_embeddings=tie_embeddings)
    graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, vocab)
    prompt_lens, horizon = jnp.array([2, 3]), 4

    def from_logits(params):
        logits = nnx.merge(graphdef, params)(tokens).logits
        step_logits = gather_response(logits, prompt_lens, horizon, shift=-1)
        return token_log_probs(step_logits, gather_response(tokens, prompt_lens, horizon))

    def chunked(params):
        return response_log_probs(graphdef, params, tokens, prompt_lens, horizon)

    np.testing.assert_allclose(jax.jit(chunked)(params), jax.jit(from_logits)(params), atol=1e-5)
    got = jax.jit(jax.grad(lambda p: jnp.sum(chunked(p) ** 2)))(params)
    want = jax.jit(jax.grad(lambda p: jnp.sum(from_logits(p) ** 2)))(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):  # float32: tolerance scales with the entries
        np.testing.assert_allclose(g, w, atol=1e-6 * float(np.abs(w).max()) + 1e-6, rtol=1e-4)
