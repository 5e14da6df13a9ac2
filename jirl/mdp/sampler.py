"""Batched, jit-compiled generation with a preallocated KV cache.

Prompts of different lengths share one left-aligned buffer ``[batch, prompt_width +
max_new_tokens]``: the prompt occupies slots ``0..p-1``, response step ``t`` goes to slot
``p + t``, so each row decodes at its own position. One prefill call fills the cache for the
whole prompt buffer (slots past a row's prompt hold junk that is overwritten before any query
can see it, because a query at position ``j`` only attends to slots ``<= j``); a
``lax.while_loop`` then decodes one token per row per step until every row has emitted EOS or
``max_new_tokens`` tokens.

Returned log-probs come from ``jirl.models.scoring.token_log_probs`` applied to the decoding
logits at the sampling temperature, i.e. ``log softmax(logits / temperature)`` of the *full*
distribution (before top-k/top-p truncation): the same numbers ``response_log_probs`` gives
when it re-scores the sequence (contract 3).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jirl.checks import check_lengths, check_token_ids
from jirl.models.scoring import response_mask, token_log_probs
from jirl.models.transformer import KVCache, forward


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick each token. ``top_k=0`` and ``top_p=1`` disable those filters."""

    max_new_tokens: int
    eos_id: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False

    def __post_init__(self):
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not _is_int(self.eos_id) or self.eos_id < 0:
            raise ValueError(f"eos_id must be a token id (an integer >= 0), got {self.eos_id!r}")
        if not _is_real(self.temperature) or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(
                f"temperature must be a finite number > 0 (use greedy=True for argmax), got {self.temperature!r}"
            )
        _check_filters(self.top_k, self.top_p)
        if not isinstance(self.greedy, bool):
            raise ValueError(f"greedy must be True or False, got {self.greedy!r}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_filters(top_k, top_p) -> None:
    """ValueError unless ``top_k`` is an integer >= 0 and ``top_p`` a number in (0, 1] (NaN is not)."""
    if not _is_int(top_k) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0: no top-k filter), got {top_k!r}")
    if not _is_real(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1] (1: no nucleus filter), got {top_p!r}")


@struct.dataclass
class SampleOutput:
    """What ``generate`` returns, per row: ``tokens [batch, prompt_width + max_new]`` (prompt
    then response, padded with EOS), ``prompt_lens [batch]``, ``response_tokens [batch,
    max_new]``, ``response_lens [batch]`` (generated tokens, a final EOS included),
    ``response_mask [batch, max_new]``, the sampled tokens' ``log_probs [batch, max_new]`` (0
    where masked) and ``truncated [batch]`` (stopped by ``max_new_tokens`` without EOS)."""

    tokens: jax.Array  # [batch, prompt_width + max_new] prompt then response, padded with eos
    prompt_lens: jax.Array  # [batch]
    response_tokens: jax.Array  # [batch, max_new], padded with eos
    response_lens: jax.Array  # [batch], number of generated tokens including a final EOS
    response_mask: jax.Array  # [batch, max_new] bool
    log_probs: jax.Array  # [batch, max_new], 0 where masked
    truncated: jax.Array  # [batch] bool, stopped by max_new_tokens without emitting EOS


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Set logits outside the top-k / top-p (nucleus) set to -inf. ``logits [..., vocab]``.

    ``top_k`` must be an integer >= 0 and ``top_p`` a number in (0, 1] (static Python values)."""
    _check_filters(top_k, top_p)
    if top_k > 0:
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        # Keep the smallest prefix whose mass reaches top_p (the top token is always kept).
        kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


# Vocabulary entries per block of the two-level draw (about the square root of a 49k vocabulary).
SAMPLING_BLOCK = 256
# Integer weights of a block (or of a token inside its block) sum to about 2^30: exact int32 sums.
WEIGHT_SCALE = 2.0**30


def sample_from_logits(key, logits: jax.Array) -> jax.Array:
    """One draw per row of ``softmax(logits)`` (``[..., vocab]`` -> ``[...]``). Entries at
    ``-inf`` (filtered out) have zero mass and are never drawn.

    A vocabulary of at most ``SAMPLING_BLOCK`` entries inverts the float32 cumulative
    distribution with one uniform ``u ~ U[0, 1)`` per row (the first index whose cumulative
    probability exceeds ``u * total``); each token's probability is then off by at most the
    uniform's grid, 2^-23 ~ 1.2e-7.

    A larger vocabulary cannot be inverted that way: past the first few thousand entries a
    float32 running sum stops changing, and tokens of probability 1e-4 could never be drawn. It
    is drawn in two levels with integer arithmetic (``two_level_draw``): a block of
    ``SAMPLING_BLOCK`` tokens with probability proportional to its mass, then a token inside
    the block, each from integer weights summing to about 2^30 whose cumulative sums are exact.
    Each token's sampling probability is its float32 probability to within about 1e-9
    relative plus 2^-31 absolute (total-variation distance about 1e-7 at 49k tokens;
    ``tests/mdp/test_sampler_exact.py``).

    Two integers per row instead of ``jax.random.categorical``'s Gumbel noise per entry: at
    SmolLM2's 49k vocabulary on a 2-core CPU under 1 ms instead of 9 ms per decoding step of
    16 rows.
    """
    probs = jax.nn.softmax(logits, axis=-1)
    vocab = logits.shape[-1]
    if vocab <= SAMPLING_BLOCK:
        cdf = jnp.cumsum(probs, axis=-1)
        u = jax.random.uniform(key, logits.shape[:-1] + (1,), probs.dtype)
        return jnp.minimum(jnp.sum(cdf <= u * cdf[..., -1:], axis=-1), vocab - 1)
    return two_level_draw(key, probs)


def integer_weights(probs: jax.Array) -> jax.Array:
    """``probs [..., n]`` as int32 weights proportional to them, summing to about 2^30."""
    share = probs / jnp.sum(probs, axis=-1, keepdims=True)
    return jnp.round(share * WEIGHT_SCALE).astype(jnp.int32)


def blocks_of(probs: jax.Array) -> jax.Array:
    """``probs [..., vocab] -> [..., num_blocks, SAMPLING_BLOCK]``, zero-padded."""
    vocab = probs.shape[-1]
    num_blocks = -(-vocab // SAMPLING_BLOCK)
    pad = [(0, 0)] * (probs.ndim - 1) + [(0, num_blocks * SAMPLING_BLOCK - vocab)]
    return jnp.pad(probs, pad).reshape(probs.shape[:-1] + (num_blocks, SAMPLING_BLOCK))


def draw_index(key, weights: jax.Array) -> jax.Array:
    """Index ``i`` of ``weights [..., n]`` (int32) with probability ``w_i / sum(w)``: a uniform
    integer below the sum, located in the exact cumulative sum. Zero weights are never drawn."""
    cumulative = jnp.cumsum(weights, axis=-1)
    point = jax.random.randint(key, weights.shape[:-1] + (1,), 0, jnp.maximum(cumulative[..., -1:], 1))
    return jnp.sum(cumulative <= point, axis=-1)


def two_level_draw(key, probs: jax.Array) -> jax.Array:
    """One token per row of ``probs [..., vocab]``: a block by its mass, then a token inside it
    (see ``sample_from_logits``)."""
    blocks = blocks_of(probs)
    block_key, token_key = jax.random.split(key)
    block = draw_index(block_key, integer_weights(jnp.sum(blocks, axis=-1)))
    inside = jnp.take_along_axis(blocks, block[..., None, None], axis=-2)[..., 0, :]
    return jnp.minimum(block * SAMPLING_BLOCK + draw_index(token_key, integer_weights(inside)), probs.shape[-1] - 1)


def choose_tokens(key, logits, config: SamplingConfig):
    """Next token ids ``[batch]`` from ``logits [batch, vocab]``."""
    if config.greedy:
        return jnp.argmax(logits, axis=-1)
    filtered = filter_logits(logits / config.temperature, config.top_k, config.top_p)
    return sample_from_logits(key, filtered)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _generate(graphdef, params, prompt_tokens, prompt_lens, key, config: SamplingConfig) -> SampleOutput:
    batch, width = prompt_tokens.shape
    horizon = config.max_new_tokens
    model_config = graphdef_config(graphdef, params)
    cache = KVCache.zeros(model_config, batch, width + horizon)
    rows = jnp.arange(batch)

    model = nnx.merge(graphdef, params)
    prefill = model(prompt_tokens, None, cache)
    first_logits = model.head(prefill.hidden[rows, prompt_lens - 1])  # the head at each prompt's last token only

    def cond(carry):
        t, _, _, _, _, _, done = carry
        return (t < horizon) & ~jnp.all(done)

    def body(carry):
        t, logits, cache, key, response, log_probs, done = carry
        key, step_key = jax.random.split(key)
        token = choose_tokens(step_key, logits, config)
        token = jnp.where(done, config.eos_id, token)
        step_log_prob = jnp.where(done, 0.0, token_log_probs(logits, token, config.temperature))
        response = response.at[:, t].set(token)
        log_probs = log_probs.at[:, t].set(step_log_prob)
        done = done | (token == config.eos_id)
        out = forward(graphdef, params, token[:, None], (prompt_lens + t)[:, None], cache)
        return t + 1, out.logits[:, 0], out.cache, key, response, log_probs, done

    init = (
        jnp.int32(0),
        first_logits,
        prefill.cache,
        key,
        jnp.full((batch, horizon), config.eos_id, jnp.int32),
        jnp.zeros((batch, horizon), first_logits.dtype),
        jnp.zeros((batch,), bool),
    )
    _, _, _, _, response, log_probs, done = jax.lax.while_loop(cond, body, init)

    # A row's length is the index of its first EOS plus one, or the horizon if it never ended.
    is_eos = response == config.eos_id
    ended = jnp.any(is_eos, axis=1)
    response_lens = jnp.where(ended, jnp.argmax(is_eos, axis=1) + 1, horizon)
    mask = response_mask(response_lens, horizon)

    buffer = jnp.full((batch, width + horizon), config.eos_id, jnp.int32)
    prompt_slots = jnp.arange(width)[None, :] < prompt_lens[:, None]
    buffer = buffer.at[:, :width].set(jnp.where(prompt_slots, prompt_tokens, config.eos_id))
    slots = prompt_lens[:, None] + jnp.arange(horizon)[None, :]
    buffer = buffer.at[rows[:, None], slots].set(response)
    return SampleOutput(
        tokens=buffer,
        prompt_lens=prompt_lens,
        response_tokens=response,
        response_lens=response_lens.astype(jnp.int32),
        response_mask=mask,
        log_probs=jnp.where(mask, log_probs, 0.0),
        truncated=~ended,
    )


def graphdef_config(graphdef, params):
    """The ``TransformerConfig`` of a split ``Transformer`` (static, read at trace time)."""
    from flax import nnx

    return nnx.merge(graphdef, params).config


def generate(graphdef, params, prompt_tokens, prompt_lens, key, config: SamplingConfig) -> SampleOutput:
    """Sample responses for a batch of left-aligned prompts.

    Args:
      graphdef, params: a split ``jirl.models.Transformer`` (``nnx.split(model)``).
      prompt_tokens: ``[batch, prompt_width]`` int ids, each prompt left-aligned.
      prompt_lens: ``[batch]`` prompt lengths, ``1 <= p <= prompt_width``.
      key: PRNG key.
      config: ``SamplingConfig`` (static: a new value recompiles).

    Returns:
      ``SampleOutput`` with response-aligned ``[batch, max_new_tokens]`` tokens, mask and
      log-probs, and the full ``[batch, prompt_width + max_new_tokens]`` buffer.
    """
    if not isinstance(config, SamplingConfig):
        raise TypeError(f"config must be a SamplingConfig, got {type(config).__name__}")
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_lens = jnp.asarray(prompt_lens, jnp.int32)
    model_config = graphdef_config(graphdef, params)
    if prompt_tokens.ndim != 2 or prompt_lens.shape != prompt_tokens.shape[:1]:
        raise ValueError(
            f"prompt_tokens must be [batch, width] and prompt_lens [batch]; got {prompt_tokens.shape} "
            f"and {prompt_lens.shape}"
        )
    width = prompt_tokens.shape[1]
    if width + config.max_new_tokens > model_config.max_len:
        raise ValueError(
            f"prompt width {width} + max_new_tokens {config.max_new_tokens} = "
            f"{width + config.max_new_tokens} exceeds the model's context max_len={model_config.max_len}; "
            "shorten the prompts, lower max_new_tokens or use a model with a longer context"
        )
    check_token_ids(prompt_tokens, model_config.vocab_size, "prompt_tokens")
    check_lengths(prompt_lens, width)
    if config.top_k > model_config.vocab_size:
        raise ValueError(f"top_k={config.top_k} exceeds the vocabulary size {model_config.vocab_size}")
    if not 0 <= config.eos_id < model_config.vocab_size:
        raise ValueError(f"eos_id {config.eos_id} is outside the vocabulary [0, {model_config.vocab_size})")
    return _generate(graphdef, params, prompt_tokens, prompt_lens, key, config)
