"""The one log-prob path (DESIGN.md contract 3).

The sampler gets token log-probs from ``token_log_probs`` on its decoding logits; every training
objective gets them from ``response_log_probs``, which computes the same
``log softmax(logits / T)[target]`` with ``head_log_probs`` (in vocabulary chunks, never holding
the full logits). A sampled sequence's log-prob equals its re-scored log-prob up to float rounding.

Response-aligned arrays: for a left-aligned buffer with prompt length ``p``, response step
``t`` is the token at buffer slot ``p + t``, predicted by the logits at slot ``p + t - 1``.
All ``[batch, time]`` quantities in jirl (log-probs, rewards, masks) use this response time axis.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jirl.models.transformer import forward


def token_log_probs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``log softmax(logits / temperature)[target]``; logits ``[..., vocab]``, targets ``[...]``."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32)) / temperature  # bf16 -> f32, f64 stays
    # logit[target] - logsumexp(logits): the same value as gathering from log_softmax, without
    # writing a [..., vocab] log-prob array (the largest tensor of a small model's step).
    chosen = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return chosen - jax.nn.logsumexp(logits, axis=-1)


HEAD_CHUNK = 8192  # vocabulary entries per chunk of ``head_logsumexp``: the fastest of 4k, 8k, 16k in a CPU check


def head_log_probs(
    hidden: jax.Array, weight: jax.Array, targets: jax.Array, temperature: float = 1.0, chunk: int = HEAD_CHUNK
) -> jax.Array:
    """``token_log_probs(hidden @ weight.T, targets, temperature)`` without the ``[..., vocab]`` logits.

    hidden ``[..., d]``, weight ``[vocab, d]`` (``Transformer.head_weight``), targets ``[...]``::

        log pi(y | h) = h . W[y] / T  -  logsumexp_v (h . W[v] / T)

    The first term is one dot product per token; the second is ``head_logsumexp``. A
    vocabulary of at most ``chunk`` entries takes the plain path (one matmul, no scan).
    """
    hidden = hidden.astype(weight.dtype)
    if weight.shape[0] <= chunk:
        return token_log_probs(hidden @ weight.T, targets, temperature)
    acc = jnp.promote_types(weight.dtype, jnp.float32)
    chosen = jnp.einsum("...d,...d->...", hidden, weight[targets]).astype(acc) / temperature
    flat = hidden.reshape(-1, hidden.shape[-1])
    normaliser = head_logsumexp(flat, weight, jnp.asarray(temperature, acc), chunk)
    return chosen - normaliser.reshape(targets.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def head_logsumexp(hidden: jax.Array, weight: jax.Array, temperature: jax.Array, chunk: int) -> jax.Array:
    """``logsumexp(hidden @ weight.T / T, axis=-1)`` for hidden ``[n, d]``, in vocabulary chunks.

    A scan over ``chunk``-row blocks of ``weight`` keeps a running maximum ``m`` and sum
    ``s`` (the online softmax normaliser of Milakov & Gimelshein 2018)::

        m' = max(m, max_v l_v),   s' = s e^(m - m') + sum_v e^(l_v - m'),   result m + log s

    so no ``[n, vocab]`` array exists: it is the largest tensor of a small model's step, and
    writing and re-reading it made the unfused forward 2x slower on CPU. The backward pass
    recomputes each chunk's logits ``l_v = h . W_v / T`` and uses ``d lse / d l_v = softmax_v
    = e^(l_v - lse)`` (and ``d l_v / d (h . W_v) = 1 / T``)::

        dh = sum_chunks (g softmax / T) @ W_chunk,   dW_chunk = (g softmax / T).T @ h

    (one extra head matmul instead of storing the logits; measured as fast as the unfused
    gradient on CPU, and the memory stays ``[n, chunk]``).
    """
    return _head_logsumexp_forward(hidden, weight, temperature, chunk)[0]


def _weight_chunks(weight, chunk):
    """``weight [vocab, d]`` as ``[num_chunks, chunk, d]``, zero-padded to whole chunks."""
    num_chunks = -(-weight.shape[0] // chunk)
    padded = jnp.pad(weight, ((0, num_chunks * chunk - weight.shape[0]), (0, 0)))
    return padded.reshape(num_chunks, chunk, weight.shape[1])


def _chunk_logits(hidden, weight_chunk, index, vocab, temperature):
    """Float32-or-wider logits ``[n, chunk]`` of one chunk; padding columns are -inf."""
    chunk = weight_chunk.shape[0]
    logits = (hidden @ weight_chunk.T).astype(temperature.dtype) / temperature
    if vocab % chunk:
        logits = jnp.where(index * chunk + jnp.arange(chunk) < vocab, logits, -jnp.inf)
    return logits


def _head_logsumexp_forward(hidden, weight, temperature, chunk):
    vocab, chunks = weight.shape[0], _weight_chunks(weight, chunk)

    def add_chunk(carry, xs):
        running_max, running_sum = carry
        logits = _chunk_logits(hidden, xs[1], xs[0], vocab, temperature)
        new_max = jnp.maximum(running_max, logits.max(axis=-1))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.exp(logits - new_max[:, None]).sum(axis=-1)
        return (new_max, running_sum), None

    n = hidden.shape[0]
    init = (jnp.full((n,), -jnp.inf, temperature.dtype), jnp.zeros((n,), temperature.dtype))
    (running_max, running_sum), _ = jax.lax.scan(add_chunk, init, (jnp.arange(len(chunks)), chunks))
    result = running_max + jnp.log(running_sum)
    return result, (hidden, weight, temperature, result)


def _head_logsumexp_backward(chunk, residuals, cotangent):
    hidden, weight, temperature, result = residuals
    vocab, chunks = weight.shape[0], _weight_chunks(weight, chunk)

    def chunk_gradients(d_hidden, xs):
        logits = _chunk_logits(hidden, xs[1], xs[0], vocab, temperature)
        d_logits = (cotangent[:, None] * jnp.exp(logits - result[:, None]) / temperature).astype(hidden.dtype)
        return d_hidden + d_logits @ xs[1], d_logits.T @ hidden

    d_hidden, d_chunks = jax.lax.scan(chunk_gradients, jnp.zeros_like(hidden), (jnp.arange(len(chunks)), chunks))
    d_weight = d_chunks.reshape(-1, weight.shape[1])[:vocab]
    # The temperature is a hyper-parameter here, not something trained through this function.
    return d_hidden, d_weight.astype(weight.dtype), jnp.zeros_like(temperature)


head_logsumexp.defvjp(_head_logsumexp_forward, _head_logsumexp_backward)


def response_mask(response_lens: jax.Array, horizon: int) -> jax.Array:
    """``[batch, horizon]`` bool, True on the first ``response_lens`` response steps."""
    return jnp.arange(horizon)[None, :] < response_lens[:, None]


def gather_response(x: jax.Array, prompt_lens: jax.Array, horizon: int, shift: int = 0) -> jax.Array:
    """Read buffer-aligned ``x [batch, slots, ...]`` at slots ``prompt_lens + t + shift``.

    Slots past the end of the buffer are clamped; mask them with ``response_mask``.
    """
    slots = prompt_lens[:, None] + jnp.arange(horizon)[None, :] + shift
    slots = jnp.clip(slots, 0, x.shape[1] - 1)
    return jnp.take_along_axis(x, slots.reshape(slots.shape + (1,) * (x.ndim - 2)), axis=1)


def response_log_probs(
    graphdef, params, tokens: jax.Array, prompt_lens: jax.Array, horizon: int, temperature: float = 1.0
) -> jax.Array:
    """Log-probs ``[batch, horizon]`` of the response tokens of left-aligned buffers.

    Entry ``t`` is ``log pi(tokens[p + t] | tokens[:p + t])``; entries past a response's end
    are meaningless and must be masked with ``response_mask``.
    """
    model = nnx.merge(graphdef, params)
    # The LM head runs on the response's hidden states only (see ``Transformer.head``), in
    # vocabulary chunks that never hold all the logits (``head_log_probs``).
    step_hidden = gather_response(model(tokens).hidden, prompt_lens, horizon, shift=-1)
    targets = gather_response(tokens, prompt_lens, horizon)
    return head_log_probs(step_hidden, model.head_weight(), targets, temperature)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, tokens):
    return forward(graphdef, params, tokens).logits


def logits_fn(graphdef, params):
    """``tokens [batch, time] -> logits [batch, time, vocab]`` of a split model, the form the
    exact oracle takes a reference or policy model in. Compiled once per graph and shape; the
    parameters are an argument, not constants baked into the program."""
    return functools.partial(_logits, graphdef, params)
