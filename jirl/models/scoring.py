"""The one log-prob path (DESIGN.md contract 3).

The sampler and every training objective get token log-probs from ``token_log_probs``, so a
sampled sequence's log-prob equals its re-scored log-prob up to float rounding.

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
    # The LM head runs on the response's hidden states only (see ``Transformer.head``).
    step_hidden = gather_response(model(tokens).hidden, prompt_lens, horizon, shift=-1)
    targets = gather_response(tokens, prompt_lens, horizon)
    return token_log_probs(model.head(step_hidden), targets, temperature)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, tokens):
    return forward(graphdef, params, tokens).logits


def logits_fn(graphdef, params):
    """``tokens [batch, time] -> logits [batch, time, vocab]`` of a split model, the form the
    exact oracle takes a reference or policy model in. Compiled once per graph and shape; the
    parameters are an argument, not constants baked into the program."""
    return functools.partial(_logits, graphdef, params)
