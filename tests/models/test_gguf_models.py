"""Llama and GPT-2 weights from GGUF files: the tiny random reference models (saved by
transformers, ``tests/models/fixtures``) written to GGUF as llama.cpp's converter lays them out
(this test's own name mapping, Q/K rows permuted, Conv1D weights transposed), loaded by jirl,
and compared with the reference implementation's logits."""

import json
from pathlib import Path

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from jirl.config import JirlError
from jirl.models.gguf import hf_to_llama_qk_order
from jirl.models.pretrained import load_gguf

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "tiny_models.json").read_text())


def write_gguf(path, architecture, fields, tensors, quantize=()):
    writer = gguf.GGUFWriter(str(path), architecture)
    for method, value in fields:
        getattr(writer, method)(value)
    for name, array in tensors.items():
        if name in quantize:  # stored as Q8_0 bytes, as llama.cpp would
            writer.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, np.ascontiguousarray(array, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_gguf(path, quantize=(), permute=True):
    hf = load_file(str(FIXTURES / "tiny_llama" / "model.safetensors"))
    config = json.loads((FIXTURES / "tiny_llama" / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    order = hf_to_llama_qk_order if permute else (lambda w, n: w)
    tensors = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"], "output.weight": hf["lm_head.weight"]}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        tensors.update({
            f"blk.{n}.attn_norm.weight": hf[p + "input_layernorm.weight"],
            f"blk.{n}.ffn_norm.weight": hf[p + "post_attention_layernorm.weight"],
            f"blk.{n}.attn_q.weight": order(hf[p + "self_attn.q_proj.weight"], heads),
            f"blk.{n}.attn_k.weight": order(hf[p + "self_attn.k_proj.weight"], kv_heads),
            f"blk.{n}.attn_v.weight": hf[p + "self_attn.v_proj.weight"],
            f"blk.{n}.attn_output.weight": hf[p + "self_attn.o_proj.weight"],
            f"blk.{n}.ffn_gate.weight": hf[p + "mlp.gate_proj.weight"],
            f"blk.{n}.ffn_up.weight": hf[p + "mlp.up_proj.weight"],
            f"blk.{n}.ffn_down.weight": hf[p + "mlp.down_proj.weight"],
        })
    fields = [
        ("add_vocab_size", config["vocab_size"]), ("add_context_length", config["max_position_embeddings"]),
        ("add_embedding_length", config["hidden_size"]), ("add_block_count", config["num_hidden_layers"]),
        ("add_feed_forward_length", config["intermediate_size"]), ("add_head_count", heads), ("add_head_count_kv", kv_heads),
        ("add_rope_freq_base", config["rope_parameters"]["rope_theta"]), ("add_layer_norm_rms_eps", config["rms_norm_eps"]),
    ]
    return write_gguf(path, "llama", fields, tensors, quantize)


def gpt2_gguf(path):
    hf = load_file(str(FIXTURES / "tiny_gpt2" / "model.safetensors"))
    config = json.loads((FIXTURES / "tiny_gpt2" / "config.json").read_text())
    t = "transformer."
    tensors = {
        "token_embd.weight": hf[t + "wte.weight"], "position_embd.weight": hf[t + "wpe.weight"],
        "output_norm.weight": hf[t + "ln_f.weight"], "output_norm.bias": hf[t + "ln_f.bias"],
    }
    for n in range(config["n_layer"]):
        p = f"{t}h.{n}."
        for hf_name, g in (("ln_1", "attn_norm"), ("ln_2", "ffn_norm"), ("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"), ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down")):
            weight = hf[p + hf_name + ".weight"]
            tensors[f"blk.{n}.{g}.weight"] = weight.T if weight.ndim == 2 else weight  # Conv1D [in, out] -> [out, in]
            tensors[f"blk.{n}.{g}.bias"] = hf[p + hf_name + ".bias"]
    fields = [
        ("add_vocab_size", config["vocab_size"]), ("add_context_length", config["n_positions"]),
        ("add_embedding_length", config["n_embd"]), ("add_block_count", config["n_layer"]),
        ("add_feed_forward_length", 4 * config["n_embd"]), ("add_head_count", config["n_head"]),
        ("add_layer_norm_eps", config["layer_norm_epsilon"]),
    ]
    return write_gguf(path, "gpt2", fields, tensors)


def relative_error(got, expected):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_gguf_weights_give_the_reference_logits(name, tmp_path):
    path = (llama_gguf if name == "tiny_llama" else gpt2_gguf)(tmp_path / f"{name}.gguf")
    config, graphdef, params, _ = load_gguf(path)
    assert config.family == ("llama" if name == "tiny_llama" else "gpt2")
    for ids, expected in zip(REFERENCE["prompts"], REFERENCE[name]):
        logits = nnx.merge(graphdef, params)(jnp.asarray([ids])).logits[0, -1]
        assert relative_error(logits, expected) <= 1e-4


def test_q8_0_weights_stay_close_and_unpermuted_rows_matter(tmp_path):
    quantized = [f"blk.{n}.{w}.weight" for n in range(2) for w in ("attn_q", "attn_k", "ffn_up")]
    config, graphdef, params, _ = load_gguf(llama_gguf(tmp_path / "q8.gguf", quantize=quantized))
    ids, expected = REFERENCE["prompts"][0], REFERENCE["tiny_llama"][0]
    logits = nnx.merge(graphdef, params)(jnp.asarray([ids])).logits[0, -1]
    assert 1e-6 < relative_error(logits, expected) < 0.05  # 8-bit weights: close, not equal
    # Written without llama.cpp's Q/K row order, the file reads back as a different model.
    _, graphdef, params, _ = load_gguf(llama_gguf(tmp_path / "plain.gguf", permute=False))
    assert relative_error(nnx.merge(graphdef, params)(jnp.asarray([ids])).logits[0, -1], expected) > 1e-2


def test_an_unknown_gguf_architecture_is_refused(tmp_path):
    path = write_gguf(tmp_path / "x.gguf", "mamba", [("add_block_count", 1)], {"token_embd.weight": np.zeros((4, 4), np.float32)})
    with pytest.raises(JirlError, match=r"GGUF architecture 'mamba' is not supported; jirl reads \['gpt2', 'llama'\]"):
        load_gguf(path)
