"""Response embeddings from any jirl backbone, computed once and cached on disk."""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=8)
def _jitted_embed(graphdef, embed):
    """One compiled encoder per graph, so repeated calls (an RL reward each step) reuse it."""
    return jax.jit(lambda params, ids, mask: embed(graphdef, params, ids, mask))


def embed_texts(texts, encoder=None, batch_size: int = 64, pad_to_multiple_of: int = 32) -> np.ndarray:
    """Sentence embeddings ``[N, d]`` (float32 NumPy, unit length) of ``texts`` from a BERT encoder.

    ``encoder`` is ``(graphdef, params, tokenizer)`` as ``jirl.models.bert.load_minilm`` returns
    them (the default loads all-MiniLM-L6-v2). Texts are embedded in order of length, so a chunk
    pads little, with lengths rounded up to ``pad_to_multiple_of`` and the last chunk padded to
    ``batch_size`` rows, so the encoder compiles once per length bucket.
    """
    from jirl.models.bert import embed, encode_texts, load_minilm

    if isinstance(texts, str):
        raise TypeError("embed_texts takes a sequence of strings; wrap a single text in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("embed_texts needs at least one text")
    graphdef, params, tokenizer = encoder if encoder is not None else load_minilm()[:3]
    embed_chunk = _jitted_embed(graphdef, embed)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), 0), np.float32)
    for first in range(0, len(texts), batch_size):
        rows = order[first : first + batch_size]
        chunk = [texts[i] for i in rows]
        chunk += chunk[-1:] * (batch_size - len(chunk))
        ids, mask = encode_texts(tokenizer, chunk, pad_to_multiple_of=pad_to_multiple_of)
        vectors = np.asarray(embed_chunk(params, ids, mask), np.float32)[: len(rows)]
        if out.shape[1] == 0:
            out = np.zeros((len(texts), vectors.shape[1]), np.float32)
        out[rows] = vectors
    return out
