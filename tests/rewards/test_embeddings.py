"""Cached embeddings: pooling against NumPy loops, chunked embedding against one forward pass, the
on-disk cache, and MiniLM text embeddings against sentence-transformers' stored output."""

import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from jirl.models.transformer import ModelSize, Transformer, forward
from jirl.rewards.embeddings import cached_array, embed_sequences, embed_texts, pool_hidden

MINILM_FIXTURE = Path(__file__).parents[1] / "models" / "fixtures" / "minilm_embeddings.json"


def test_pooling_matches_numpy_loops():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 6, 4)).astype(np.float32)
    lengths, starts = np.array([6, 3, 1]), np.array([2, 1, 0])
    last = np.stack([hidden[b, lengths[b] - 1] for b in range(3)])
    mean = np.stack([hidden[b, : lengths[b]].mean(0) for b in range(3)])
    response = np.stack([hidden[b, starts[b] : lengths[b]].mean(0) for b in range(3)])
    np.testing.assert_allclose(pool_hidden(hidden, lengths, "last"), last, rtol=1e-6)
    np.testing.assert_allclose(pool_hidden(hidden, lengths, "mean"), mean, rtol=1e-5)
    np.testing.assert_allclose(pool_hidden(hidden, lengths, "response_mean", starts), response, rtol=1e-5)
    with pytest.raises(ValueError, match="starts="):
        pool_hidden(hidden, lengths, "response_mean")
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_hidden(hidden, lengths, "max")


def test_chunked_embedding_equals_one_forward_pass():
    model = Transformer(ModelSize(family="gpt2", d_model=16, num_heads=2).build(20, 8), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 20, size=(7, 8)).astype(np.int32)
    lengths, starts = rng.integers(3, 9, size=7), rng.integers(1, 3, size=7)
    # 7 rows in chunks of 3: the last chunk is padded, and its padding must not leak into the output.
    chunked = embed_sequences(graphdef, params, tokens, lengths, "response_mean", batch_size=3, starts=starts)
    whole = pool_hidden(forward(graphdef, params, tokens).hidden, lengths, "response_mean", starts)
    np.testing.assert_allclose(chunked, np.asarray(whole), rtol=1e-5, atol=1e-6)


def test_cached_array_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(3.0)

    path = tmp_path / "sub" / "x.npy"
    np.testing.assert_array_equal(cached_array(path, compute), np.arange(3.0))
    np.testing.assert_array_equal(cached_array(path, compute), np.arange(3.0))
    assert len(calls) == 1 and not list(tmp_path.rglob("*.tmp.npy"))


def test_embed_texts_refuses_a_bare_string():
    with pytest.raises(TypeError, match="sequence of strings"):
        embed_texts("one text", encoder=(None, None, None))


@pytest.mark.slow
def test_minilm_text_embeddings_match_sentence_transformers():
    reference = json.loads(MINILM_FIXTURE.read_text())
    # Small chunks, so texts are reordered by length, padded, split, and put back in order.
    vectors = embed_texts(reference["sentences"], batch_size=2)
    expected = np.asarray(reference["embeddings"], np.float32)
    assert vectors.shape == expected.shape
    cosine = (vectors * expected).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine
