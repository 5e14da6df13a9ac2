"""GGUF reading: dequantisation against the ``gguf`` package's reference, metadata, errors, the
offline file helpers, and the real SmolLM2-135M-Instruct file (slow: fetched once, 93 MB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize

from jirl.config import JirlError
from jirl.models.gguf import (
    SUPPORTED_TYPES,
    GGUFError,
    dequantize_bytes,
    hf_to_llama_qk_order,
    llama_qk_to_hf_order,
    read_gguf,
    smollm2_gguf_path,
)

Q = GGMLQuantizationType
SHAPE = (6, 96)  # numpy order: 6 rows of 96 = three 32-element blocks each


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, Q]], metadata: dict | None = None) -> Path:
    """A GGUF file holding ``tensors`` (already quantised: stored bytes or float arrays) and metadata."""
    writer = GGUFWriter(str(path), "llama")
    for key, value in (metadata or {}).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    for name, (data, kind) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def stored(values: np.ndarray, kind: Q) -> np.ndarray:
    """``values`` as a GGUF file stores them for type ``kind`` (via the gguf package's quantiser)."""
    if kind == Q.F32:
        return values.astype(np.float32)
    return quantize(values, kind)


@pytest.fixture(scope="module")
def random_values() -> np.ndarray:
    return np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory, random_values) -> Path:
    """One tensor per supported type, one unsupported (Q6_K), and metadata of every kind."""
    tensors = {f"t.{kind}": (stored(random_values, Q[kind]), Q[kind]) for kind in SUPPORTED_TYPES}
    # 256-element Q6_K blocks of 210 bytes: any bytes will do, it must only be refused.
    tensors["t.Q6_K"] = (np.zeros((2, 210), dtype=np.uint8), Q.Q6_K)
    metadata = {
        "general.name": "tiny",
        "llama.block_count": 2,
        "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.tokens": ["a", "b", "ü"],
        "tokenizer.ggml.token_type": [1, 1, 3],
    }
    return write_gguf(tmp_path_factory.mktemp("gguf") / "small.gguf", tensors, metadata)


# --------------------------------------------------------------------------- dequantisation


@pytest.mark.parametrize("kind", SUPPORTED_TYPES)
def test_tensor_matches_gguf_reference_dequantize(small_file, random_values, kind):
    data = stored(random_values, Q[kind])
    got = read_gguf(small_file).tensor(f"t.{kind}")
    expected = dequantize(data, Q[kind]).reshape(SHAPE)
    assert got.dtype == np.float32 and got.shape == SHAPE
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "kind, atol", [("F32", 0), ("F16", 2e-3), ("BF16", 2e-2), ("Q8_0", 2e-2), ("Q4_0", 0.4), ("Q4_1", 0.3)]
)
def test_dequantised_values_are_close_to_the_originals(small_file, random_values, kind, atol):
    np.testing.assert_allclose(read_gguf(small_file).tensor(f"t.{kind}"), random_values, atol=atol)


def test_tensor_info_reports_numpy_shape_and_type(small_file):
    gguf_file = read_gguf(small_file)
    info = gguf_file.tensor_info("t.Q4_1")
    assert (info.shape, info.ggml_type, info.n_elements) == (SHAPE, "Q4_1", SHAPE[0] * SHAPE[1])
    assert info.n_bytes == SHAPE[0] * SHAPE[1] // 32 * 20
    assert gguf_file.tensor_names[: len(SUPPORTED_TYPES)] == [f"t.{kind}" for kind in SUPPORTED_TYPES]
    assert "t.Q8_0" in gguf_file and "nope" not in gguf_file


def fp16_bytes(value: float) -> bytes:
    return np.array([value], dtype="<f2").tobytes()


def test_hand_built_q8_0_block():
    quants = np.arange(-16, 16, dtype=np.int8)
    raw = np.frombuffer(fp16_bytes(0.5) + quants.tobytes(), dtype=np.uint8)
    expected = 0.5 * quants.astype(np.float32)
    np.testing.assert_array_equal(dequantize_bytes(raw, "Q8_0"), expected)
    np.testing.assert_array_equal(dequantize(raw.reshape(1, -1), Q.Q8_0).reshape(-1), expected)


def nibble_block(low: np.ndarray, high: np.ndarray) -> bytes:
    """16 bytes holding elements 0..15 in the low nibbles and 16..31 in the high nibbles."""
    return (low.astype(np.uint8) | (high.astype(np.uint8) << 4)).tobytes()


def test_hand_built_q4_0_block():
    low, high = np.arange(16), 15 - np.arange(16)
    raw = np.frombuffer(fp16_bytes(2.0) + nibble_block(low, high), dtype=np.uint8)
    expected = 2.0 * (np.concatenate([low, high]) - 8).astype(np.float32)
    np.testing.assert_array_equal(dequantize_bytes(raw, "Q4_0"), expected)
    np.testing.assert_array_equal(dequantize(raw.reshape(1, -1), Q.Q4_0).reshape(-1), expected)


def test_hand_built_q4_1_blocks():
    low, high = np.arange(16), np.full(16, 15)
    first = fp16_bytes(0.25) + fp16_bytes(-1.0) + nibble_block(low, high)
    second = fp16_bytes(1.0) + fp16_bytes(3.0) + nibble_block(high, low)
    raw = np.frombuffer(first + second, dtype=np.uint8)
    expected = np.concatenate([
        0.25 * np.concatenate([low, high]) - 1.0,
        1.0 * np.concatenate([high, low]) + 3.0,
    ]).astype(np.float32)
    np.testing.assert_array_equal(dequantize_bytes(raw, "Q4_1"), expected)
    np.testing.assert_array_equal(dequantize(raw.reshape(2, -1), Q.Q4_1).reshape(-1), expected)


def test_hand_built_bf16_and_f16():
    bf16 = np.array([0x3F80, 0xC000, 0x0000, 0x4049], dtype="<u2")  # 1, -2, 0, 3.140625
    np.testing.assert_array_equal(dequantize_bytes(bf16.view(np.uint8), "BF16"), [1.0, -2.0, 0.0, 3.140625])
    f16 = np.array([0.5, -3.0, 65504.0], dtype="<f2")
    np.testing.assert_array_equal(dequantize_bytes(f16.view(np.uint8), "F16"), [0.5, -3.0, 65504.0])


def test_partial_block_is_refused():
    with pytest.raises(GGUFError, match="whole number of 20-byte blocks"):
        dequantize_bytes(np.zeros(30, dtype=np.uint8), "Q4_1")


# --------------------------------------------------------------------------- errors


def test_unsupported_type_names_tensor_type_and_supported_types(small_file):
    with pytest.raises(JirlError) as caught:
        read_gguf(small_file).tensor("t.Q6_K")
    message = str(caught.value)
    assert "'t.Q6_K'" in message and "Q6_K" in message
    assert all(kind in message for kind in SUPPORTED_TYPES)
    # Its layout is still reported.
    assert read_gguf(small_file).tensor_info("t.Q6_K").shape == (2, 256)
    with pytest.raises(JirlError, match="Q5_K"):
        dequantize_bytes(np.zeros(176, dtype=np.uint8), "Q5_K")


def test_missing_tensor_names_it_and_lists_available(small_file):
    with pytest.raises(JirlError) as caught:
        read_gguf(small_file).tensor("t.Q4_2")
    assert "'t.Q4_2'" in str(caught.value) and "t.Q4_1" in str(caught.value)
    with pytest.raises(JirlError, match="for example: t.F32"):
        read_gguf(small_file).tensor_info("completely different")


def test_missing_file_is_a_file_not_found_jirl_error(tmp_path):
    missing = tmp_path / "absent.gguf"
    with pytest.raises(JirlError, match="not found") as caught:
        read_gguf(missing)
    assert isinstance(caught.value, FileNotFoundError) and str(missing) in str(caught.value)


def test_non_gguf_file_is_refused(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(GGUFError, match="not a readable GGUF"):
        read_gguf(bogus)


# --------------------------------------------------------------------------- metadata


def test_metadata_is_decoded_to_python_values(small_file):
    metadata = read_gguf(small_file).metadata
    assert metadata["general.name"] == "tiny"
    assert metadata["general.architecture"] == "llama"
    assert metadata["llama.block_count"] == 2 and type(metadata["llama.block_count"]) is int
    assert metadata["llama.rope.freq_base"] == 10000.0 and type(metadata["llama.rope.freq_base"]) is float
    assert metadata["llama.attention.layer_norm_rms_epsilon"] == 1e-5  # float32 read back as its shortest decimal
    assert metadata["tokenizer.ggml.add_bos_token"] is True
    assert metadata["tokenizer.ggml.tokens"] == ["a", "b", "ü"]
    assert metadata["tokenizer.ggml.token_type"] == [1, 1, 3]
    assert not any(key.startswith("GGUF.") for key in metadata)


# --------------------------------------------------------------------------- llama Q/K layout


def test_qk_permutation_pairs_rotary_halves_as_adjacent_rows():
    # One head of dim 4: Hugging Face pairs rows (0, 2) and (1, 3); llama.cpp makes them adjacent.
    rows = np.arange(4.0)[:, None]
    np.testing.assert_array_equal(hf_to_llama_qk_order(rows, 1)[:, 0], [0, 2, 1, 3])
    weight = np.random.default_rng(1).normal(size=(3 * 8, 5))
    np.testing.assert_array_equal(llama_qk_to_hf_order(hf_to_llama_qk_order(weight, 3), 3), weight)
    with pytest.raises(JirlError):
        llama_qk_to_hf_order(np.zeros((9, 2)), 3)


def test_smollm2_env_override(tmp_path, monkeypatch):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"GGUF")
    monkeypatch.setenv("JIRL_SMOLLM2_GGUF", str(target))
    assert smollm2_gguf_path() == target
    monkeypatch.setenv("JIRL_SMOLLM2_GGUF", str(tmp_path / "absent.gguf"))
    with pytest.raises(JirlError, match="JIRL_SMOLLM2_GGUF"):
        smollm2_gguf_path()


# --------------------------------------------------------------------------- SmolLM2-135M-Instruct


@pytest.fixture(scope="module")
def smollm2():
    return read_gguf(smollm2_gguf_path())


LAYER_TENSORS = {
    "attn_norm": ((576,), "F32"),
    "attn_q": ((576, 576), "Q4_1"),
    "attn_k": ((192, 576), "Q4_1"),
    "attn_v": ((192, 576), "Q4_1"),
    "attn_output": ((576, 576), "Q4_1"),
    "ffn_norm": ((576,), "F32"),
    "ffn_gate": ((1536, 576), "Q4_1"),
    "ffn_up": ((1536, 576), "Q4_1"),
    "ffn_down": ((576, 1536), "Q4_1"),
}


@pytest.mark.slow
def test_smollm2_metadata(smollm2):
    metadata = smollm2.metadata
    assert smollm2.architecture == "llama"
    assert metadata["llama.block_count"] == 30
    assert metadata["llama.embedding_length"] == 576
    assert metadata["llama.feed_forward_length"] == 1536
    assert metadata["llama.attention.head_count"] == 9
    assert metadata["llama.attention.head_count_kv"] == 3
    assert metadata["llama.rope.freq_base"] == 1e5
    assert metadata["llama.rope.dimension_count"] == 64
    assert metadata["llama.attention.layer_norm_rms_epsilon"] == 1e-5
    assert metadata["llama.context_length"] == 8192
    assert metadata["llama.vocab_size"] == 49152
    assert metadata["tokenizer.ggml.model"] == "gpt2" and metadata["tokenizer.ggml.pre"] == "smollm"
    assert len(metadata["tokenizer.ggml.tokens"]) == 49152


@pytest.mark.slow
def test_smollm2_tensor_layout(smollm2):
    expected = {"token_embd.weight": ((49152, 576), "Q8_0"), "output_norm.weight": ((576,), "F32")}
    for layer in range(30):
        for part, layout in LAYER_TENSORS.items():
            expected[f"blk.{layer}.{part}.weight"] = layout
    assert sorted(smollm2.tensor_names) == sorted(expected)  # no output.weight: embeddings are tied
    for name, (shape, kind) in expected.items():
        info = smollm2.tensor_info(name)
        assert (info.shape, info.ggml_type) == (shape, kind), name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["blk.7.ffn_down.weight", "token_embd.weight", "output_norm.weight"])
def test_smollm2_tensor_matches_gguf_reference(smollm2, name):
    got = smollm2.tensor(name)
    reader_tensor = smollm2.reader_tensor(name)
    expected = dequantize(reader_tensor.data, reader_tensor.tensor_type).reshape(got.shape)
    np.testing.assert_array_equal(got, expected)
    assert np.isfinite(got).all() and got.std() > 0


@pytest.mark.slow
def test_smollm2_qk_rows_are_in_llama_cpp_rotary_order(smollm2):
    """Trained Q/K row norms grow with the rotary frequency index. Stored rows follow that index
    across the whole head (pairs adjacent, llama.cpp's order); in Hugging Face's order it restarts
    half-way, so the rows just before the middle outweigh the rows just after it."""

    def middle_drop(weight: np.ndarray, n_heads: int) -> float:
        norms = np.linalg.norm(weight, axis=1).reshape(n_heads, -1)
        half = norms.shape[1] // 2
        return float(norms[:, half - 8 : half].mean() / norms[:, half : half + 8].mean())

    for part, n_heads in (("attn_q", 9), ("attn_k", 3)):
        weights = [smollm2.tensor(f"blk.{layer}.{part}.weight") for layer in range(30)]
        stored_drop = np.mean([middle_drop(w, n_heads) for w in weights])
        hf_drop = np.mean([middle_drop(llama_qk_to_hf_order(w, n_heads), n_heads) for w in weights])
        assert stored_drop < 1.05 and hf_drop > 1.25, (part, stored_drop, hf_drop)
