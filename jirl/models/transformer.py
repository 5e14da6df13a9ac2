"""A decoder-only transformer in Flax NNX, configurable as the Llama or the GPT-2 family.

Layout convention used across jirl: a sequence buffer is *left-aligned* and right-padded,
so the token at buffer slot ``j`` has position ``j``. With that layout a causal mask alone is
correct for every real token, and the KV cache slot of a token is its position.

Functional use (DESIGN.md contract 1)::

    model = Transformer(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)            # once, outside jit
    out = forward(graphdef, params, tokens)        # pure, inside jit
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jirl.config import ConfigError, at_least

Family = Literal["llama", "gpt2"]

# Finite "minus infinity" for masked attention scores: exp() underflows to exactly 0 in fp32
# and bf16, and a fully masked row (never produced by our layouts) would still not be NaN.
_MASK_VALUE = -1e30


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture hyper-parameters.

    ``family="llama"``: RMSNorm, rotary position embeddings with base ``rope_base``, grouped-query
    attention (``num_kv_heads`` < ``num_heads``), SwiGLU MLP, no biases (``qkv_bias`` for Qwen2).
    ``family="gpt2"``: LayerNorm, learned absolute positions, GELU MLP, biases everywhere.
    """

    vocab_size: int
    family: Family = "llama"
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None  # None: same as num_heads (multi-head attention)
    head_dim: int | None = None  # None: d_model // num_heads
    d_ff: int | None = None  # None: 4 * d_model (gpt2) or 8/3 * d_model rounded up to 16 (llama)
    max_len: int = 128  # context length: learned positions (gpt2) and the sampler's buffer limit
    rope_base: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qkv_bias: bool = False  # llama family only; gpt2 always has biases
    dtype: str = "float32"  # compute dtype; parameters are always kept in float32

    def __post_init__(self):
        if self.family not in ("llama", "gpt2"):
            raise ValueError(f"unknown model family {self.family!r}; use 'llama' or 'gpt2'")
        sizes = {"vocab_size": self.vocab_size, "d_model": self.d_model, "num_layers": self.num_layers,
                 "num_heads": self.num_heads, "max_len": self.max_len, "num_kv_heads": self.kv_heads}
        bad = {name: size for name, size in sizes.items() if size < 1}
        if bad:
            raise ValueError(f"model sizes must be >= 1, got {bad}")
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                "change one of them or set head_dim explicitly"
            )
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.kv_heads}"
            )
        if self.family == "llama" and self.dims_per_head % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {self.dims_per_head}")

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads: ``num_kv_heads``, or ``num_heads`` when it is None."""
        return self.num_kv_heads or self.num_heads

    @property
    def dims_per_head(self) -> int:
        """The width of one attention head: ``head_dim``, or ``d_model // num_heads`` when it is
        None."""
        return self.head_dim or self.d_model // self.num_heads

    @property
    def ff_dim(self) -> int:
        """The MLP's hidden width: ``d_ff`` if set, else ``4 * d_model`` (gpt2) or ``8/3 *
        d_model`` rounded up to a multiple of 16 (llama)."""
        if self.d_ff is not None:
            return self.d_ff
        if self.family == "gpt2":
            return 4 * self.d_model
        return -(-(8 * self.d_model // 3) // 16) * 16

    @property
    def compute_dtype(self):
        """``dtype`` as a ``jnp.dtype``: the dtype activations are computed in."""
        return jnp.dtype(self.dtype)


@struct.dataclass
class KVCache:
    """Per-layer key/value buffers, ``[batch, kv_heads, max_len, head_dim]`` each.

    Slot ``j`` holds the key/value of the token at position ``j`` (left-aligned layout). Heads
    come before slots so that attention's products over the slots read each head's keys as one
    contiguous block: with slots first, every decoding step transposed the whole cache (3x
    slower attention on a CPU, measured by ``benchmarks/profile_decode.py``).
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]

    @classmethod
    def zeros(cls, config: TransformerConfig, batch_size: int, length: int | None = None):
        """An all-zero cache for ``batch_size`` rows of ``length`` slots (default
        ``config.max_len``), one ``[batch, kv_heads, length, head_dim]`` key and value buffer per
        layer (each its own array, so the cache can be donated)."""
        shape = (batch_size, config.kv_heads, length or config.max_len, config.dims_per_head)

        def buffers():
            return tuple(jnp.zeros(shape, config.compute_dtype) for _ in range(config.num_layers))

        return cls(keys=buffers(), values=buffers())

    @property
    def length(self) -> int:
        """The number of slots per row."""
        return self.keys[0].shape[2]


@struct.dataclass
class TransformerOutput:
    """What ``Transformer.__call__`` returns: ``logits [batch, time, vocab]`` (float32, or
    float64 for a float64 model), the final-normed ``hidden [batch, time, d_model]`` states that
    heads read, the updated ``cache`` (None without one) and, with ``return_attention=True``, one
    ``[batch, heads, time, keys]`` array of attention probabilities per layer (else None)."""

    logits: jax.Array  # [batch, time, vocab], float32 (or float64 for a float64 model)
    hidden: jax.Array  # [batch, time, d_model], final-normed hidden states (input to heads)
    cache: KVCache | None
    # With ``return_attention=True``: one ``[batch, heads, time, keys]`` array of attention
    # probabilities per layer (attention-based credit reads them); otherwise None.
    attention: tuple[jax.Array, ...] | None = None


def rotary_embedding(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotate channel pairs ``(i, i + d/2)`` of ``x [b, t, h, d]`` by ``pos * base^(-2i/d)``.

    This is the "rotate-half" layout of Hugging Face Llama checkpoints (RoFormer, Su et al. 2021).
    """
    half = x.shape[-1] // 2
    dtype = jnp.promote_types(x.dtype, jnp.float32)  # at least float32 for the angles
    inv_freq = base ** (-jnp.arange(half, dtype=dtype) / half)
    angles = positions[..., None].astype(dtype) * inv_freq  # [b, t, half]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = x[..., :half].astype(dtype), x[..., half:].astype(dtype)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def attention(q, k, v, query_positions, key_positions):
    """Causal grouped-query attention over absolute positions.

    q: [b, tq, heads, d]; k, v: [b, tk, kv_heads, d]; query_positions: [b, tq];
    key_positions: [b, tk]. A query attends to the keys whose position is <= its own.
    Returns the output ``[b, tq, heads * d]`` and the probabilities ``[b, heads, tq, tk]``.
    """
    return heads_major_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), query_positions, key_positions)


def heads_major_attention(q, k, v, query_positions, key_positions):
    """``attention`` with keys and values in the KV cache's layout, ``[b, kv_heads, tk, d]``."""
    b, tq, num_heads, d = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(b, tq, kv_heads, num_heads // kv_heads, d)
    scores = jnp.einsum("bqkgd,bksd->bkgqs", q, k)
    scores = scores.astype(jnp.promote_types(scores.dtype, jnp.float32)) / jnp.sqrt(d)
    visible = key_positions[:, None, :] <= query_positions[:, :, None]  # [b, tq, tk]
    scores = jnp.where(visible[:, None, None], scores, _MASK_VALUE)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bksd->bqkgd", weights, v)
    return out.reshape(b, tq, num_heads * d), weights.reshape(b, num_heads, tq, -1)


class Attention(nnx.Module):
    """Causal self-attention with grouped-query heads (``kv_heads`` <= ``num_heads``), rotary
    position embeddings for the llama family, and an optional KV cache written at the tokens'
    positions. Projections ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        d, h, kvh, hd = config.d_model, config.num_heads, config.kv_heads, config.dims_per_head
        bias = config.family == "gpt2" or config.qkv_bias
        out_bias = config.family == "gpt2"
        dtype = config.compute_dtype
        self.q_proj = nnx.Linear(d, h * hd, use_bias=bias, dtype=dtype, rngs=rngs)
        self.k_proj = nnx.Linear(d, kvh * hd, use_bias=bias, dtype=dtype, rngs=rngs)
        self.v_proj = nnx.Linear(d, kvh * hd, use_bias=bias, dtype=dtype, rngs=rngs)
        self.o_proj = nnx.Linear(h * hd, d, use_bias=out_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x, positions, layer_cache=None):
        """Returns the attention output, with a cache the updated ``(keys, values)`` (else
        None), and the attention probabilities ``[b, heads, t, keys]``."""
        cfg = self.config
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, cfg.num_heads, cfg.dims_per_head)
        k = self.k_proj(x).reshape(b, t, cfg.kv_heads, cfg.dims_per_head)
        v = self.v_proj(x).reshape(b, t, cfg.kv_heads, cfg.dims_per_head)
        if cfg.family == "llama":
            q = rotary_embedding(q, positions, cfg.rope_base)
            k = rotary_embedding(k, positions, cfg.rope_base)
        if layer_cache is None:
            out, weights = attention(q, k, v, positions, positions)
            return self.o_proj(out), None, weights
        # Write this chunk into its slots (slot = position), then attend over the whole buffer.
        cache_k, cache_v = layer_cache
        rows, heads = jnp.arange(b)[:, None, None], jnp.arange(cfg.kv_heads)[None, :, None]
        at = (rows, heads, positions[:, None, :])  # [b, kv_heads, t] indices into [b, kv_heads, slots]
        cache_k = cache_k.at[at].set(jnp.swapaxes(k, 1, 2).astype(cache_k.dtype))
        cache_v = cache_v.at[at].set(jnp.swapaxes(v, 1, 2).astype(cache_v.dtype))
        slots = jnp.broadcast_to(jnp.arange(cache_k.shape[2]), (b, cache_k.shape[2]))
        out, weights = heads_major_attention(q, cache_k, cache_v, positions, slots)
        return self.o_proj(out), (cache_k, cache_v), weights


class MLP(nnx.Module):
    """SwiGLU, ``down(silu(gate(x)) * up(x))`` (llama), or ``fc2(gelu(fc1(x)))`` (gpt2)."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.family = config.family
        d, f, dtype = config.d_model, config.ff_dim, config.compute_dtype
        if config.family == "llama":
            self.gate_proj = nnx.Linear(d, f, use_bias=False, dtype=dtype, rngs=rngs)
            self.up_proj = nnx.Linear(d, f, use_bias=False, dtype=dtype, rngs=rngs)
            self.down_proj = nnx.Linear(f, d, use_bias=False, dtype=dtype, rngs=rngs)
        else:
            self.fc_in = nnx.Linear(d, f, dtype=dtype, rngs=rngs)
            self.fc_out = nnx.Linear(f, d, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        if self.family == "llama":
            return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.fc_out(jax.nn.gelu(self.fc_in(x), approximate=True))


def make_norm(config: TransformerConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The family's normalisation layer over ``d_model``: ``RMSNorm`` (llama) or ``LayerNorm``
    (gpt2)."""
    if config.family == "llama":
        return nnx.RMSNorm(config.d_model, epsilon=config.norm_eps, dtype=config.compute_dtype, rngs=rngs)
    return nnx.LayerNorm(config.d_model, epsilon=config.norm_eps, dtype=config.compute_dtype, rngs=rngs)


class Block(nnx.Module):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.attn_norm = make_norm(config, rngs)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = make_norm(config, rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, positions, layer_cache=None):
        attn_out, layer_cache, weights = self.attn(self.attn_norm(x), positions, layer_cache)
        x = x + attn_out
        x = x + self.mlp(self.mlp_norm(x))
        return x, layer_cache, weights


class Transformer(nnx.Module):
    """Decoder-only language model returning logits, final hidden states and the KV cache."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = config.compute_dtype
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=dtype, embedding_init=init, rngs=rngs)
        if config.family == "gpt2":
            self.position_embed = nnx.Embed(config.max_len, config.d_model, dtype=dtype, embedding_init=init, rngs=rngs)
        self.layers = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = make_norm(config, rngs)
        if not config.tie_embeddings:
            self.lm_head = nnx.Linear(config.d_model, config.vocab_size, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, tokens, positions=None, cache: KVCache | None = None, return_attention: bool = False) -> TransformerOutput:
        """tokens: [batch, time] ids; positions: [batch, time] (default ``0..time-1``).

        With a ``cache``, the tokens' keys/values are written to the slots given by
        ``positions`` and each token attends to every cached slot at or before its position
        (prefill and incremental decoding are the same call). ``return_attention`` also returns
        every layer's attention probabilities (unused ones cost nothing under jit).
        """
        b, t = tokens.shape
        if cache is None and t > self.config.max_len:
            raise ValueError(
                f"sequence length {t} exceeds the model's context max_len={self.config.max_len}; "
                "shorten or pad the batch to at most max_len, or build the model with a larger max_len"
            )
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        x = self.embed(tokens)
        if self.config.family == "gpt2":
            x = x + self.position_embed(positions)
        new_keys, new_values, attention_weights = [], [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            x, layer_cache, weights = layer(x, positions, layer_cache)
            attention_weights.append(weights)
            if layer_cache is not None:
                new_keys.append(layer_cache[0])
                new_values.append(layer_cache[1])
        hidden = self.final_norm(x)
        new_cache = None if cache is None else KVCache(tuple(new_keys), tuple(new_values))
        return TransformerOutput(
            logits=self.head(hidden), hidden=hidden, cache=new_cache,
            attention=tuple(attention_weights) if return_attention else None,
        )

    def head(self, hidden: jax.Array) -> jax.Array:
        """Logits ``[..., vocab]`` (float32 or wider) of final-normed hidden states.

        Callers that need logits at a few positions only (a response, a prompt's last token)
        gather ``hidden`` first and call this: under ``jit`` the unused full-width logits of
        ``__call__`` are dropped, and the LM head -- most of a small model's FLOPs with a 49k
        vocabulary -- runs only where it is read.
        """
        logits = self.embed.attend(hidden) if self.config.tie_embeddings else self.lm_head(hidden)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))

    def head_weight(self) -> jax.Array:
        """The LM head as a ``[vocab, d_model]`` matrix in the compute dtype: ``head(h) = h @ W.T``.

        For code that computes the head itself, e.g. ``scoring.head_log_probs``, which reads
        log-probs without materialising ``[..., vocab]`` logits.
        """
        weight = self.embed.embedding[...] if self.config.tie_embeddings else self.lm_head.kernel[...].T
        return weight.astype(self.config.compute_dtype)


def forward(graphdef, params, tokens, positions=None, cache=None) -> TransformerOutput:
    """Pure functional call of a split model: ``nnx.merge(graphdef, params)(tokens, ...)``."""
    return nnx.merge(graphdef, params)(tokens, positions, cache)


@dataclasses.dataclass
class ModelSize:
    """The size knobs experiments expose (``--set model.d_model=128``); the vocabulary and
    context come from the task. ``build`` gives the full ``TransformerConfig``."""

    family: Family = "llama"
    d_model: Annotated[int, at_least(1)] = 64
    num_layers: Annotated[int, at_least(1)] = 2
    num_heads: Annotated[int, at_least(1)] = 4
    num_kv_heads: Annotated[int | None, at_least(1)] = None  # None: one kv head per query head; fewer gives GQA
    dtype: Literal["float32", "bfloat16"] = "float32"

    def validate(self) -> None:
        """The sizes must make a model (heads divide ``d_model``, kv heads divide heads, an even
        head dimension for rotary embeddings)."""
        try:
            self.build(vocab_size=2, max_len=2)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def build(self, vocab_size: int, max_len: int) -> TransformerConfig:
        """The full ``TransformerConfig`` of this size for a task's ``vocab_size`` and context
        ``max_len`` (``num_kv_heads`` applies to the llama family only)."""
        return TransformerConfig(
            vocab_size=vocab_size,
            family=self.family,
            d_model=self.d_model,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads if self.family == "llama" else None,
            max_len=max_len,
            dtype=self.dtype,
        )


def llama_tiny(vocab_size: int, **overrides) -> TransformerConfig:
    """A small Llama-family config for tests and CPU experiments (GQA, 2 layers, d=64)."""
    defaults = dict(family="llama", d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, max_len=64)
    return TransformerConfig(vocab_size=vocab_size, **{**defaults, **overrides})


def gpt2_tiny(vocab_size: int, **overrides) -> TransformerConfig:
    """A small GPT-2-family config for tests and CPU experiments (2 layers, d=64)."""
    defaults = dict(family="gpt2", d_model=64, num_layers=2, num_heads=4, max_len=64)
    return TransformerConfig(vocab_size=vocab_size, **{**defaults, **overrides})
