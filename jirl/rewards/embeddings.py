"""Response embeddings from any jirl backbone, computed once and cached on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jirl.models.transformer import forward


Pooling = Literal["last", "mean", "response_mean"]


def pool_hidden(hidden, lengths, pooling: Pooling = "last", starts=None):
    """``[B, L, d] -> [B, d]`` for left-aligned buffers of ``lengths`` tokens: the last real
    token's hidden state (``last``), the mean over all real tokens (``mean``), or the mean over
    slots ``starts..lengths-1`` (``response_mean`` with ``starts`` = prompt lengths: the
    response only, which is all that differs between two answers to one prompt)."""
    if pooling == "last":
        index = jnp.maximum(lengths - 1, 0)[:, None, None]
        return jnp.take_along_axis(hidden, index, axis=1)[:, 0]
    if pooling not in ("mean", "response_mean"):
        raise ValueError(f"unknown pooling {pooling!r}; use 'last', 'mean' or 'response_mean'")
    if pooling == "response_mean" and starts is None:
        raise ValueError("response_mean pooling needs starts= (the prompt lengths)")
    slots = jnp.arange(hidden.shape[1])[None, :]
    mask = slots < lengths[:, None]
    if pooling == "response_mean":
        mask &= slots >= starts[:, None]
    mask = mask.astype(hidden.dtype)
    return jnp.sum(hidden * mask[..., None], axis=1) / jnp.maximum(mask.sum(1, keepdims=True), 1)


def embed_sequences(
    graphdef, params, tokens, lengths, pooling: Pooling = "last", batch_size: int = 64, starts=None
) -> np.ndarray:
    """Embeddings ``[N, d]`` (float32 NumPy) of left-aligned sequences (see ``pool_hidden``), in
    fixed-size chunks so the forward pass compiles once (the last chunk is padded)."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    starts = np.zeros_like(lengths) if starts is None else np.asarray(starts)
    if pooling == "response_mean" and not starts.any():
        raise ValueError("response_mean pooling needs starts= (the prompt lengths)")

    @jax.jit
    def embed_chunk(tokens, lengths, starts):
        hidden = forward(graphdef, params, tokens).hidden
        return pool_hidden(hidden, lengths, pooling, starts).astype(jnp.float32)

    out = []
    for first in range(0, len(tokens), batch_size):
        rows = slice(first, first + batch_size)
        chunk = [tokens[rows], lengths[rows], starts[rows]]
        pad = batch_size - len(chunk[0])
        if pad:
            chunk = [np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) for x in chunk]
        out.append(np.asarray(embed_chunk(*chunk))[: batch_size - pad])
    return np.concatenate(out)


def fingerprint(*arrays) -> str:
    """A short digest of arrays (model parameters, token ids) to key a cache file."""
    digest = hashlib.sha256()
    for array in arrays:
        for leaf in jax.tree_util.tree_leaves(array):
            leaf = np.asarray(leaf)
            digest.update(str(leaf.shape).encode() + str(leaf.dtype).encode())
            digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()[:16]


def cached_array(path: str | Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load ``path`` (.npy) if it exists, else compute, save and return the array."""
    path = Path(path)
    if path.exists():
        return np.load(path)
    array = np.asarray(compute())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written cache
    return array
