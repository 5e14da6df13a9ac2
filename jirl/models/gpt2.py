"""The GPT-2 family: config and weight names of Hugging Face safetensors checkpoints, mapped
onto ``jirl.models.transformer.Transformer`` (``family="gpt2"``).

Hugging Face names (``transformer.`` prefix in ``GPT2LMHeadModel`` checkpoints, none in
``GPT2Model``). GPT-2 uses ``Conv1D`` layers whose weights are already ``[in, out]`` like NNX
kernels, and fuses the query, key and value projections into one ``c_attn`` tensor:

    wte.weight                  -> embed.embedding (tied with the output layer)
    wpe.weight                  -> position_embed.embedding
    h.N.ln_1.{weight,bias}      -> layers.N.attn_norm.{scale,bias}
    h.N.attn.c_attn.{weight,bias} -> layers.N.attn.{q,k,v}_proj.{kernel,bias} (thirds of the last axis)
    h.N.attn.c_proj.{weight,bias} -> layers.N.attn.o_proj.{kernel,bias}
    h.N.ln_2.{weight,bias}      -> layers.N.mlp_norm.{scale,bias}
    h.N.mlp.c_fc.{weight,bias}  -> layers.N.mlp.fc_in.{kernel,bias}
    h.N.mlp.c_proj.{weight,bias} -> layers.N.mlp.fc_out.{kernel,bias}
    ln_f.{weight,bias}          -> final_norm.{scale,bias}

GGUF names (llama.cpp's ``gpt2`` architecture; its converter stores the Conv1D weights
transposed, ``[out, in]``): ``token_embd``, ``position_embd``, ``blk.N.attn_norm``,
``blk.N.attn_qkv``, ``blk.N.attn_output``, ``blk.N.ffn_norm``, ``blk.N.ffn_{up,down}``,
``output_norm``.
"""

from __future__ import annotations

import re
from pathlib import Path

from flax import nnx

from jirl.models.loading import SafetensorsSource, TensorRule, WeightsError, hf_sizes_checked, load_params, read_hf_config, transpose
from jirl.models.transformer import Transformer, TransformerConfig

HF_ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")


def config_from_hf(hf: dict, dtype: str = "float32") -> TransformerConfig:
    """A ``TransformerConfig`` from a GPT-2 ``config.json`` dict."""
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise WeightsError(f"GPT-2 activation {hf['activation_function']!r} is not supported; jirl uses the tanh GELU (gelu_new)")
    with hf_sizes_checked(hf, "n_embd", "n_layer", "n_head", "n_positions", "vocab_size"):
        return TransformerConfig(
            vocab_size=hf["vocab_size"],
            family="gpt2",
            d_model=hf["n_embd"],
            num_layers=hf["n_layer"],
            num_heads=hf["n_head"],
            d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
            max_len=hf["n_positions"],
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            tie_embeddings=True,
            dtype=dtype,
        )


def config_to_hf(config: TransformerConfig) -> dict:
    """The Hugging Face ``config.json`` of a jirl GPT-2-family config (for export)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_embd": config.d_model,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_inner": config.ff_dim,
        "n_positions": config.max_len,
        "layer_norm_epsilon": config.norm_eps,
        "activation_function": "gelu_new",
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def hf_rules(config: TransformerConfig, prefix: str = "transformer.") -> list[TensorRule]:
    """Every parameter's Hugging Face tensor name (with ``prefix``) and layout change."""
    if not config.tie_embeddings:
        raise WeightsError("GPT-2 checkpoints tie the output layer to the token embedding; build the config with tie_embeddings=True")
    p = prefix
    rules = [
        TensorRule(p + "wte.weight", ("embed", "embedding")),
        TensorRule(p + "wpe.weight", ("position_embed", "embedding")),
        TensorRule(p + "ln_f.weight", ("final_norm", "scale")),
        TensorRule(p + "ln_f.bias", ("final_norm", "bias")),
    ]
    for n in range(config.num_layers):
        hf, jl = f"{p}h.{n}.", ("layers", n)
        for norm, target in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            rules += [TensorRule(hf + f"{norm}.weight", jl + (target, "scale")), TensorRule(hf + f"{norm}.bias", jl + (target, "bias"))]
        for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            rules += [
                TensorRule(hf + "attn.c_attn.weight", jl + ("attn", proj, "kernel"), part=(i, 3)),
                TensorRule(hf + "attn.c_attn.bias", jl + ("attn", proj, "bias"), part=(i, 3)),
            ]
        for source, target in (("attn.c_proj", ("attn", "o_proj")), ("mlp.c_fc", ("mlp", "fc_in")), ("mlp.c_proj", ("mlp", "fc_out"))):
            rules += [TensorRule(hf + f"{source}.weight", jl + target + ("kernel",)), TensorRule(hf + f"{source}.bias", jl + target + ("bias",))]
    return rules


# The causal-mask buffers older checkpoints carry, and the tied output layer.
_IGNORED = re.compile(r"(\.attn\.(masked_)?bias|^lm_head\.weight)$")


def load_hf(path: str | Path, mesh=None, strategy: str = "replicate", dtype: str = "float32"):
    """``(config, graphdef, params)`` of a GPT-2 Hugging Face folder (``config.json`` and
    ``*.safetensors``), each tensor placed on ``mesh`` as it is read when one is given."""
    config = config_from_hf(read_hf_config(path), dtype)
    source = SafetensorsSource(path)
    prefix = "transformer." if any(name.startswith("transformer.") for name in source.names()) else ""
    graphdef, params = load_params(
        lambda: Transformer(config, rngs=nnx.Rngs(0)), hf_rules(config, prefix), source, mesh, strategy,
        ignore=lambda name: bool(_IGNORED.search(name)),
    )
    return config, graphdef, params


# ---------------------------------------------------------------------------------------------
# GGUF


def config_from_gguf(metadata: dict, dtype: str = "float32") -> TransformerConfig:
    """A ``TransformerConfig`` from GGUF metadata (``general.architecture == "gpt2"``)."""
    if metadata.get("general.architecture") != "gpt2":
        raise WeightsError(f"GGUF architecture {metadata.get('general.architecture')!r} is not 'gpt2'")

    def field(key):
        if f"gpt2.{key}" not in metadata:
            raise WeightsError(f"GGUF metadata lacks the field 'gpt2.{key}'")
        return metadata[f"gpt2.{key}"]

    vocab = metadata.get("gpt2.vocab_size") or len(metadata.get("tokenizer.ggml.tokens", []))
    if not vocab:
        raise WeightsError("GGUF metadata gives no vocabulary size (gpt2.vocab_size or tokenizer.ggml.tokens)")
    return TransformerConfig(
        vocab_size=int(vocab), family="gpt2", d_model=int(field("embedding_length")), num_layers=int(field("block_count")),
        num_heads=int(field("attention.head_count")), d_ff=int(field("feed_forward_length")),
        max_len=int(field("context_length")), norm_eps=float(field("attention.layer_norm_epsilon")),
        tie_embeddings=True, dtype=dtype,
    )


def gguf_rules(config: TransformerConfig) -> list[TensorRule]:
    """Every parameter's GGUF tensor name and layout change."""
    rules = [
        TensorRule("token_embd.weight", ("embed", "embedding")),
        TensorRule("position_embd.weight", ("position_embed", "embedding")),
        TensorRule("output_norm.weight", ("final_norm", "scale")),
        TensorRule("output_norm.bias", ("final_norm", "bias")),
    ]
    for n in range(config.num_layers):
        g, jl = f"blk.{n}.", ("layers", n)
        for norm, target in (("attn_norm", "attn_norm"), ("ffn_norm", "mlp_norm")):
            rules += [TensorRule(g + f"{norm}.weight", jl + (target, "scale")), TensorRule(g + f"{norm}.bias", jl + (target, "bias"))]
        for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            rules += [
                TensorRule(g + "attn_qkv.weight", jl + ("attn", proj, "kernel"), transpose, transpose, part=(i, 3)),
                TensorRule(g + "attn_qkv.bias", jl + ("attn", proj, "bias"), part=(i, 3)),
            ]
        for source, target in (("attn_output", ("attn", "o_proj")), ("ffn_up", ("mlp", "fc_in")), ("ffn_down", ("mlp", "fc_out"))):
            rules += [
                TensorRule(g + f"{source}.weight", jl + target + ("kernel",), transpose, transpose),
                TensorRule(g + f"{source}.bias", jl + target + ("bias",)),
            ]
    return rules


def load_gguf(path: str | Path, mesh=None, strategy: str = "replicate", max_len: int | None = None, dtype: str = "float32"):
    """``(config, graphdef, params, gguf_file)`` of a GPT-2-architecture GGUF file. ``max_len``
    is ignored: GPT-2's learned positions fix the context."""
    from jirl.models.gguf import read_gguf
    from jirl.models.llama import GGUFSource

    gguf_file = read_gguf(path)
    config = config_from_gguf(gguf_file.metadata, dtype)
    graphdef, params = load_params(
        lambda: Transformer(config, rngs=nnx.Rngs(0)), gguf_rules(config), GGUFSource(gguf_file), mesh, strategy,
        ignore=lambda name: name == "output.weight",  # a stored copy of the tied embedding
    )
    return config, graphdef, params, gguf_file
