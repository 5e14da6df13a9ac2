"""Response embeddings from any jirl backbone, computed once and cached on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jirl.models.transformer import forward


def pool_hidden(hidden, lengths, pooling: Literal["last", "mean"] = "last"):
    """``[B, L, d] -> [B, d]``: the last real token's hidden state, or the mean over the first
    ``lengths`` positions (left-aligned buffers)."""
    if pooling == "last":
        index = jnp.maximum(lengths - 1, 0)[:, None, None]
        return jnp.take_along_axis(hidden, index, axis=1)[:, 0]
    if pooling == "mean":
        mask = (jnp.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(hidden.dtype)
        return jnp.sum(hidden * mask[..., None], axis=1) / jnp.maximum(mask.sum(1, keepdims=True), 1)
    raise ValueError(f"unknown pooling {pooling!r}; use 'last' or 'mean'")


def embed_sequences(graphdef, params, tokens, lengths, pooling: str = "last", batch_size: int = 64) -> np.ndarray:
    """Embeddings ``[N, d]`` (float32 NumPy) of left-aligned sequences, in fixed-size chunks so
    the forward pass compiles once (the last chunk is padded)."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)

    @jax.jit
    def embed_chunk(tokens, lengths):
        return pool_hidden(forward(graphdef, params, tokens).hidden, lengths, pooling).astype(jnp.float32)

    out = []
    for start in range(0, len(tokens), batch_size):
        chunk, chunk_lens = tokens[start : start + batch_size], lengths[start : start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            chunk_lens = np.concatenate([chunk_lens, np.repeat(chunk_lens[-1:], pad)])
        out.append(np.asarray(embed_chunk(chunk, chunk_lens))[: batch_size - pad])
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
