"""The Llama family (Llama, SmolLM, Qwen2 naming): configs and weight names of Hugging Face
safetensors checkpoints and GGUF files, mapped onto ``jirl.models.transformer.Transformer``.

Hugging Face names (``model.`` prefix; Linear weights are ``[out, in]``, NNX kernels ``[in, out]``):

    model.embed_tokens.weight                      -> embed.embedding
    model.layers.N.input_layernorm.weight          -> layers.N.attn_norm.scale
    model.layers.N.self_attn.{q,k,v,o}_proj.weight -> layers.N.attn.{q,k,v,o}_proj.kernel (transposed)
    model.layers.N.self_attn.{q,k,v}_proj.bias     -> ...bias (Qwen2)
    model.layers.N.post_attention_layernorm.weight -> layers.N.mlp_norm.scale
    model.layers.N.mlp.{gate,up,down}_proj.weight  -> layers.N.mlp.{gate,up,down}_proj.kernel (transposed)
    model.norm.weight                              -> final_norm.scale
    lm_head.weight                                 -> lm_head.kernel (untied models only)

GGUF names (llama.cpp): ``token_embd``, ``blk.N.attn_norm``, ``blk.N.attn_{q,k,v,output}``,
``blk.N.ffn_norm``, ``blk.N.ffn_{gate,up,down}``, ``output_norm``, ``output``. llama.cpp stores
the query and key projections with each head's rows interleaved for its rotary layout; they
are permuted back to the "rotate-half" layout jirl and Hugging Face use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from jirl.models.loading import SafetensorsSource, TensorRule, WeightsError, hf_sizes_checked, load_params, read_hf_config, transpose
from jirl.models.transformer import Transformer, TransformerConfig

HF_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


def config_from_hf(hf: dict, max_len: int | None = None, dtype: str = "float32") -> TransformerConfig:
    """A ``TransformerConfig`` from a Llama/Qwen2 ``config.json`` dict."""
    # transformers >= 5 keeps RoPE settings in ``rope_parameters``; older files at the top level.
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or ({} if rope.get("rope_type", "default") == "default" else rope)
    if scaling:
        raise WeightsError(f"RoPE scaling {scaling} is not supported; jirl implements plain RoPE")
    rope_base = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
    if hf.get("use_sliding_window"):
        raise WeightsError("sliding-window attention (use_sliding_window=true) is not supported; jirl attends over the whole context")
    heads = hf["num_attention_heads"]
    qwen2 = hf.get("model_type") == "qwen2"
    with hf_sizes_checked(hf, "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        return TransformerConfig(
            vocab_size=hf["vocab_size"],
            family="llama",
            d_model=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim"),
            d_ff=hf["intermediate_size"],
            max_len=max_len or hf.get("max_position_embeddings", 2048),
            rope_base=float(rope_base),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=qwen2 or bool(hf.get("attention_bias", False)),
            dtype=dtype,
        )


def config_to_hf(config: TransformerConfig) -> dict:
    """The Hugging Face ``config.json`` of a jirl Llama-family config (for export)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.dims_per_head,
        "intermediate_size": config.ff_dim,
        "max_position_embeddings": config.max_len,
        "rope_theta": config.rope_base,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": config.qkv_bias,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }


def hf_rules(config: TransformerConfig) -> list[TensorRule]:
    """Every parameter's Hugging Face tensor name and layout change."""
    rules = [TensorRule("model.embed_tokens.weight", ("embed", "embedding")), TensorRule("model.norm.weight", ("final_norm", "scale"))]
    if not config.tie_embeddings:
        rules.append(TensorRule("lm_head.weight", ("lm_head", "kernel"), transpose, transpose))
    for n in range(config.num_layers):
        hf, jl = f"model.layers.{n}.", ("layers", n)
        rules += [
            TensorRule(hf + "input_layernorm.weight", jl + ("attn_norm", "scale")),
            TensorRule(hf + "post_attention_layernorm.weight", jl + ("mlp_norm", "scale")),
        ]
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            rules.append(TensorRule(hf + f"self_attn.{proj}.weight", jl + ("attn", proj, "kernel"), transpose, transpose))
            if config.qkv_bias and proj != "o_proj":
                rules.append(TensorRule(hf + f"self_attn.{proj}.bias", jl + ("attn", proj, "bias")))
        for proj in ("gate_proj", "up_proj", "down_proj"):
            rules.append(TensorRule(hf + f"mlp.{proj}.weight", jl + ("mlp", proj, "kernel"), transpose, transpose))
    return rules


def _ignored_hf(name: str) -> bool:
    return name.endswith("rotary_emb.inv_freq")


def load_hf(path: str | Path, mesh=None, strategy: str = "replicate", max_len: int | None = None, dtype: str = "float32"):
    """``(config, graphdef, params)`` of a Llama-family Hugging Face folder (``config.json`` and
    ``*.safetensors``), each tensor placed on ``mesh`` as it is read when one is given."""
    config = config_from_hf(read_hf_config(path), max_len, dtype)
    source = SafetensorsSource(path)
    ignore = _ignored_hf
    if config.tie_embeddings and "lm_head.weight" in source.names():
        if not np.array_equal(source.read("lm_head.weight"), source.read("model.embed_tokens.weight")):
            raise WeightsError(
                "config.json ties the output layer to the embedding (tie_word_embeddings=true) but the checkpoint's "
                "lm_head.weight differs from model.embed_tokens.weight; set tie_word_embeddings=false"
            )
        ignore = lambda name: _ignored_hf(name) or name == "lm_head.weight"  # noqa: E731  (a stored tied copy)
    graphdef, params = load_params(lambda: Transformer(config, rngs=nnx.Rngs(0)), hf_rules(config), source, mesh, strategy, ignore)
    return config, graphdef, params


# ---------------------------------------------------------------------------------------------
# GGUF


def config_from_gguf(metadata: dict, max_len: int | None = None, dtype: str = "float32") -> TransformerConfig:
    """A ``TransformerConfig`` from GGUF metadata (``general.architecture == "llama"``)."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise WeightsError(f"GGUF architecture {arch!r} is not supported; jirl reads 'llama' GGUF files")

    def field(key, default=None):
        value = metadata.get(f"llama.{key}", default)
        if value is None:
            raise WeightsError(f"GGUF metadata lacks the field 'llama.{key}'")
        return value

    heads = int(field("attention.head_count"))
    vocab = metadata.get("llama.vocab_size") or len(metadata.get("tokenizer.ggml.tokens", []))
    if not vocab:
        raise WeightsError("GGUF metadata gives no vocabulary size (llama.vocab_size or tokenizer.ggml.tokens)")
    return TransformerConfig(
        vocab_size=int(vocab),
        family="llama",
        d_model=int(field("embedding_length")),
        num_layers=int(field("block_count")),
        num_heads=heads,
        num_kv_heads=int(field("attention.head_count_kv", heads)),
        d_ff=int(field("feed_forward_length")),
        max_len=max_len or int(field("context_length", 2048)),
        rope_base=float(field("rope.freq_base", 10_000.0)),
        norm_eps=float(field("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings=True,  # set from the tensors by load_gguf
        dtype=dtype,
    )


def gguf_rules(config: TransformerConfig) -> list[TensorRule]:
    """Every parameter's GGUF tensor name and layout change (GGUF ``.tensor`` arrays are
    ``[out, in]`` like PyTorch's)."""
    from jirl.models.gguf import llama_qk_to_hf_order

    heads, kv_heads = config.num_heads, config.kv_heads
    query = lambda w: transpose(llama_qk_to_hf_order(w, heads))  # noqa: E731
    key = lambda w: transpose(llama_qk_to_hf_order(w, kv_heads))  # noqa: E731
    rules = [TensorRule("token_embd.weight", ("embed", "embedding")), TensorRule("output_norm.weight", ("final_norm", "scale"))]
    if not config.tie_embeddings:
        rules.append(TensorRule("output.weight", ("lm_head", "kernel"), transpose))
    for n in range(config.num_layers):
        g, jl = f"blk.{n}.", ("layers", n)
        rules += [
            TensorRule(g + "attn_norm.weight", jl + ("attn_norm", "scale")),
            TensorRule(g + "ffn_norm.weight", jl + ("mlp_norm", "scale")),
            TensorRule(g + "attn_q.weight", jl + ("attn", "q_proj", "kernel"), query),
            TensorRule(g + "attn_k.weight", jl + ("attn", "k_proj", "kernel"), key),
            TensorRule(g + "attn_v.weight", jl + ("attn", "v_proj", "kernel"), transpose),
            TensorRule(g + "attn_output.weight", jl + ("attn", "o_proj", "kernel"), transpose),
            TensorRule(g + "ffn_gate.weight", jl + ("mlp", "gate_proj", "kernel"), transpose),
            TensorRule(g + "ffn_up.weight", jl + ("mlp", "up_proj", "kernel"), transpose),
            TensorRule(g + "ffn_down.weight", jl + ("mlp", "down_proj", "kernel"), transpose),
        ]
    return rules


class GGUFSource:
    """The tensors of a ``jirl.models.gguf.GGUFFile``, dequantised to float32 as they are read."""

    def __init__(self, gguf_file):
        self.file = gguf_file

    def names(self) -> list[str]:
        """The names of the file's tensors, in file order."""
        return list(self.file.tensor_names)

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantised to a float32 NumPy array."""
        return self.file.tensor(name)


def load_gguf(path: str | Path, mesh=None, strategy: str = "replicate", max_len: int | None = None, dtype: str = "float32"):
    """``(config, graphdef, params, gguf_file)`` of a Llama-architecture GGUF file (the file's
    metadata also holds its tokenizer: ``jirl.models.tokenizers.tokenizer_from_gguf``)."""
    import dataclasses

    from jirl.models.gguf import read_gguf

    gguf_file = read_gguf(path)
    config = config_from_gguf(gguf_file.metadata, max_len, dtype)
    config = dataclasses.replace(config, tie_embeddings="output.weight" not in gguf_file.tensor_names)
    graphdef, params = load_params(
        lambda: Transformer(config, rngs=nnx.Rngs(0)), gguf_rules(config), GGUFSource(gguf_file), mesh, strategy,
        ignore=lambda name: name == "rope_freqs.weight",
    )
    return config, graphdef, params, gguf_file
