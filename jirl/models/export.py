"""Export jirl decoders as Hugging Face folders that ``transformers`` (and ``peft``) load.

``export_hf(out_dir, config, graphdef, params, ...)`` writes

- ``config.json`` (``torch_dtype`` = the dtype asked for) and ``generation_config.json``
  (bos/eos/pad ids, when a tokenizer names them);
- the weights as ``model.safetensors``, or, above ``max_shard_size``, as
  ``model-00001-of-0000N.safetensors`` shards with ``model.safetensors.index.json``
  (``metadata.total_size``, ``weight_map``), split the way transformers splits them;
- with a ``tokenizer``: ``tokenizer.json``, ``tokenizer_config.json`` (special tokens, chat
  template) and ``special_tokens_map.json``.

A LoRA model (``jirl.models.lora``) is exported either merged (``lora="merge"``: the adapters
folded into the base kernels, a plain folder) or as PEFT adapters (``lora="peft"``:
``adapter_config.json`` + ``adapter_model.safetensors``, PEFT's tensor names and layout, over
a base model written to ``out_dir/base`` unless ``base_model_name_or_path`` names one). jirl
and PEFT scale an adapter the same way, ``W + (lora_alpha / r) B A``.

``export_reward_model`` writes a reward model's backbone as above and its scalar head in
``out_dir/reward_head/`` (``reward_head.safetensors`` + ``reward_head.json``);
``load_reward_head`` reads it back. ``export_command`` is the ``jirl export`` command.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from jirl.config import JirlError
from jirl.models import gpt2, llama
from jirl.models.loading import TensorRule, export_tensors
from jirl.models.lora import LoRALinear, unmerge_lora, without_lora
from jirl.models.tokenizers import Tokenizer
from jirl.models.transformer import TransformerConfig

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}
LORA_MODES = ("merge", "peft")
SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
REWARD_HEAD_DIR = "reward_head"
HEAD_KINDS = {"SequenceRewardHead": "sequence", "TokenRewardHead": "token", "ValueHead": "value"}


class ExportError(JirlError):
    """A model, option or output folder that cannot be exported as asked."""


# ---------------------------------------------------------------------------------------------
# Options


def parse_size(size: int | str) -> int:
    """Bytes of ``size``: an int, or a string such as ``"2GB"``, ``"500MB"`` (powers of 1000,
    as transformers reads them) or ``"1GiB"`` (powers of 1024)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    elif isinstance(size, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]i?B)?\s*", size, flags=re.IGNORECASE)
        if match is None:
            raise ExportError(f"max_shard_size={size!r} is not a size: write bytes (1000000) or e.g. '500MB', '2GB', '1GiB'")
        value = int(float(match[1]) * SIZE_UNITS[match[2].upper()]) if match[2] else int(float(match[1]))
    else:
        raise ExportError(f"max_shard_size must be bytes (int) or a string like '2GB', got {type(size).__name__}")
    if value < 1:
        raise ExportError(f"max_shard_size must be at least 1 byte, got {size!r}")
    return value


def check_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype of ``dtype`` (``float32``, ``bfloat16`` or ``float16``)."""
    if dtype not in DTYPES:
        raise ExportError(f"unknown export dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def check_lora_mode(lora: str) -> str:
    """``lora`` when it is an export mode for LoRA adapters (``merge`` or ``peft``)."""
    if lora not in LORA_MODES:
        raise ExportError(f"unknown lora mode {lora!r}; choose 'merge' (adapters folded into the weights) or 'peft' (PEFT adapter files)")
    return lora


def prepare_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """``out_dir``, created if needed. A non-empty folder is refused unless ``overwrite``; then
    only stale weight shards of an earlier export (``model-0000i-of-0000n.safetensors``, the
    index) are removed, as transformers does, so they cannot mix with the new ones. Nothing
    else is deleted."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder; choose a folder to export into")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ExportError(f"{out_dir} is not empty; choose an empty or new folder, or pass overwrite=True (--overwrite) to write over the export files in it")
        for file in out_dir.iterdir():
            if file.is_file() and (SHARD_NAME.fullmatch(file.name) or file.name in (INDEX_NAME, WEIGHTS_NAME)):
                file.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


# ---------------------------------------------------------------------------------------------
# Families


def family_export(config) -> tuple[list[TensorRule], dict]:
    """``(tensor rules, config.json dict)`` of a jirl decoder config in the Hugging Face layout.

    A Llama-family model with query/key/value biases is written as ``Qwen2ForCausalLM``:
    transformers' Llama with ``attention_bias`` also has an output-projection bias, which jirl's
    Qwen2-style attention lacks."""
    if not isinstance(config, TransformerConfig):
        raise ExportError(
            f"export_hf writes decoder language models (a jirl TransformerConfig, llama or gpt2 family); "
            f"a {type(config).__name__} model is not exportable"
        )
    if config.family == "gpt2":
        return gpt2.hf_rules(config), gpt2.config_to_hf(config)
    if config.family == "llama":
        hf = llama.config_to_hf(config)
        if config.qkv_bias:
            hf.pop("attention_bias")
            hf.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False)
        return llama.hf_rules(config), hf
    raise ExportError(f"model family {config.family!r} is not exportable; export_hf writes 'llama' and 'gpt2'")


def special_token_ids(tokenizer: Tokenizer | None) -> dict[str, int]:
    """``{"bos_token_id": ..., "eos_token_id": ..., "pad_token_id": ...}`` of the ids the
    tokenizer knows (empty without a tokenizer)."""
    if tokenizer is None:
        return {}
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    return {key: value for key, value in ids.items() if value is not None}


def hf_config_json(config: TransformerConfig, dtype: str, tokenizer: Tokenizer | None) -> dict:
    """``config.json`` of ``config`` with the stored dtype (``torch_dtype``, and ``dtype`` as
    transformers >= 5 names it) and the tokenizer's special token ids."""
    _, hf = family_export(config)
    hf.update(torch_dtype=dtype, dtype=dtype, **special_token_ids(tokenizer))
    return hf


def write_json(path: Path, value: dict) -> None:
    """``value`` as transformers writes its JSON files (indent 2, sorted keys, final newline)."""
    path.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Weights


def cast_tensors(tensors: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """``tensors`` cast to ``dtype``; a value that overflows it (float16) is refused by name."""
    target = check_dtype(dtype)
    cast = {}
    for name, array in tensors.items():
        value = np.ascontiguousarray(np.asarray(array, np.float32).astype(target))
        if not np.all(np.isfinite(value.astype(np.float32))):
            raise ExportError(f"tensor {name!r} does not fit {dtype} (values overflow to inf or are NaN); export as float32 or bfloat16")
        cast[name] = value
    return cast


def plan_shards(tensors: dict[str, np.ndarray], max_bytes: int) -> list[list[str]]:
    """Tensor names per shard, in order, as transformers (``huggingface_hub``) splits them: a
    shard is closed when the next tensor would take it past ``max_bytes``; a tensor larger than
    ``max_bytes`` gets a shard of its own."""
    shards, current, size = [], [], 0
    for name, array in tensors.items():
        if array.nbytes > max_bytes:
            shards.append([name])
            continue
        if current and size + array.nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += array.nbytes
    if current:
        shards.append(current)
    return shards


def write_weights(out_dir: Path, tensors: dict[str, np.ndarray], max_shard_size: int | str) -> list[str]:
    """Write ``tensors`` as ``model.safetensors`` or, when they pass ``max_shard_size``, as
    shards with ``model.safetensors.index.json``; returns the file names written."""
    from safetensors.numpy import save_file

    shards = plan_shards(tensors, parse_size(max_shard_size))
    if len(shards) <= 1:
        save_file(tensors, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
        return [WEIGHTS_NAME]
    weight_map, names = {}, []
    for index, shard in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file({key: tensors[key] for key in shard}, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        names.append(name)
    metadata = {"total_parameters": sum(int(a.size) for a in tensors.values()), "total_size": sum(int(a.nbytes) for a in tensors.values())}
    write_json(out_dir / INDEX_NAME, {"metadata": metadata, "weight_map": weight_map})
    return names + [INDEX_NAME]


# ---------------------------------------------------------------------------------------------
# Tokenizer


def added_tokens_decoder(tokenizer: Tokenizer) -> dict[str, dict]:
    """``added_tokens_decoder`` of ``tokenizer_config.json``: every added token by id."""
    return {
        str(token_id): {"content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
                        "rstrip": token.rstrip, "single_word": token.single_word, "special": token.special}
        for token_id, token in sorted(tokenizer.backend.get_added_tokens_decoder().items())
    }


def write_tokenizer(out_dir: Path, tokenizer: Tokenizer, max_len: int) -> list[str]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``
    (what ``AutoTokenizer`` and ``jirl.models.tokenizers.load_tokenizer`` read)."""
    (out_dir / "tokenizer.json").write_text(tokenizer.backend.to_str(pretty=True), encoding="utf-8")
    special = {key: value for key, value in (("bos_token", tokenizer.bos_token), ("eos_token", tokenizer.eos_token),
                                              ("pad_token", tokenizer.pad_token)) if value is not None}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added_tokens_decoder(tokenizer),
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    if tokenizer.chat_template is not None:
        config["chat_template"] = tokenizer.chat_template
    write_json(out_dir / "tokenizer_config.json", config)
    write_json(out_dir / "special_tokens_map.json", special)
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


# ---------------------------------------------------------------------------------------------
# LoRA


def lora_modules(model) -> dict[str, LoRALinear]:
    """``{Hugging Face module name: LoRALinear}`` of a Llama-family jirl model, e.g.
    ``model.layers.0.self_attn.q_proj``, in module order."""
    found = {}
    for n, layer in enumerate(model.layers):
        for part, hf_part in (("attn", "self_attn"), ("mlp", "mlp")):
            parent = getattr(layer, part)
            for name in vars(parent):
                module = getattr(parent, name)
                if isinstance(module, LoRALinear):
                    found[f"model.layers.{n}.{hf_part}.{name}"] = module
    return found


def has_lora(model) -> bool:
    """Whether any projection of ``model`` carries a LoRA adapter."""
    return any(isinstance(m, LoRALinear) for _, m in nnx.iter_graph(model))


def strip_lora(model):
    """The base model of a LoRA model: adapters dropped, not merged (a copy)."""
    plain = nnx.clone(model)
    unmerge_lora(plain)
    for layer in plain.layers:
        for parent in (layer.attn, layer.mlp):
            for name in list(vars(parent)):
                module = getattr(parent, name)
                if isinstance(module, LoRALinear):
                    setattr(parent, name, module.base)
    return plain


def _pattern(values: dict[str, float], default: float) -> dict[str, float]:
    """The module names whose value differs from ``default`` (PEFT's ``rank_pattern`` /
    ``alpha_pattern``)."""
    return {name: value for name, value in values.items() if value != default}


def peft_target_modules(modules: dict[str, LoRALinear], num_layers: int) -> list[str]:
    """PEFT ``target_modules``: the short projection names (``q_proj``) when every layer has
    each of them adapted, else the full module names."""
    short = sorted({name.rsplit(".", 1)[1] for name in modules})
    per_layer = {name: sum(1 for m in modules if m.endswith("." + name)) for name in short}
    return short if all(count == num_layers for count in per_layer.values()) else sorted(modules)


def peft_adapter(model, config: TransformerConfig, dtype: str, base_model_name_or_path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(adapter_config.json dict, {PEFT tensor name: array})`` of a jirl LoRA model.

    jirl's adapter ``x A B`` (``A [in, r]``, ``B [r, out]``, scale ``alpha / r``) is PEFT's
    ``lora_A.weight = A^T [r, in]``, ``lora_B.weight = B^T [out, r]`` with the same scale."""
    if config.family != "llama":
        raise ExportError(
            f"lora='peft' writes adapters of Llama-family models; {config.family!r} fuses its projections "
            "(GPT-2's c_attn), so export it with lora='merge'"
        )
    modules = lora_modules(model)
    if not modules:
        raise ExportError("lora='peft' needs a model with LoRA adapters (jirl.models.lora.add_lora); export this one with lora='merge'")
    ranks = {name: int(m.lora_a[...].shape[1]) for name, m in modules.items()}
    alphas = {name: float(m.scale * ranks[name]) for name, m in modules.items()}
    rank, alpha = next(iter(ranks.values())), next(iter(alphas.values()))
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": rank, "lora_alpha": alpha, "rank_pattern": _pattern(ranks, rank), "alpha_pattern": _pattern(alphas, alpha),
        "target_modules": peft_target_modules(modules, config.num_layers), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        "revision": None,
    }
    tensors = {}
    for name, module in modules.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = np.asarray(jax.device_get(module.lora_a[...]), np.float32).T
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = np.asarray(jax.device_get(module.lora_b[...]), np.float32).T
    return adapter_config, cast_tensors(tensors, dtype)


# ---------------------------------------------------------------------------------------------
# Export


def write_model(out_dir: Path, config: TransformerConfig, params, *, tokenizer, dtype: str, max_shard_size) -> list[str]:
    """Write a plain (adapter-free) model's Hugging Face folder into the prepared ``out_dir``."""
    rules, _ = family_export(config)
    try:
        tensors = export_tensors(params, rules)
    except KeyError as missing:
        raise ExportError(f"the parameters lack {missing} that the config needs: pass the config the model was built with") from None
    files = write_weights(out_dir, cast_tensors(tensors, dtype), max_shard_size)
    write_json(out_dir / "config.json", hf_config_json(config, dtype, tokenizer))
    files.append("config.json")
    generation = special_token_ids(tokenizer)
    if generation:
        write_json(out_dir / "generation_config.json", generation)
        files.append("generation_config.json")
    if tokenizer is not None:
        files += write_tokenizer(out_dir, tokenizer, config.max_len)
    return files


def export_hf(
    out_dir: str | Path,
    config: TransformerConfig,
    graphdef,
    params,
    *,
    tokenizer: Tokenizer | None = None,
    dtype: str = "float32",
    max_shard_size: int | str = "2GB",
    lora: str = "merge",
    base_model_name_or_path: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the jirl decoder ``(graphdef, params)`` of ``config`` as a Hugging Face folder.

    ``dtype``: the stored tensors' dtype (``float32``, ``bfloat16``, ``float16``; also
    ``torch_dtype`` in ``config.json``). ``max_shard_size``: bytes, or ``"500MB"``-style.
    ``lora``: ``"merge"`` folds LoRA adapters into the weights (a model without adapters is
    written as it is); ``"peft"`` writes ``adapter_config.json`` + ``adapter_model.safetensors``
    into ``out_dir`` and the base model (adapters dropped) into ``out_dir/base``, unless
    ``base_model_name_or_path`` names the base the adapters belong to (then no base is written).
    A non-empty ``out_dir`` is refused unless ``overwrite``. Returns ``out_dir``.
    """
    family_export(config)
    check_dtype(dtype)
    check_lora_mode(lora)
    parse_size(max_shard_size)
    model = nnx.merge(graphdef, params)
    if lora == "merge":
        plain = without_lora(model) if has_lora(model) else model
        out = prepare_out_dir(out_dir, overwrite)
        write_model(out, config, nnx.state(plain), tokenizer=tokenizer, dtype=dtype, max_shard_size=max_shard_size)
        return out
    base = base_model_name_or_path or str((Path(out_dir).expanduser() / "base").resolve())
    adapter_config, tensors = peft_adapter(model, config, dtype, base)  # refuses before anything is written
    out = prepare_out_dir(out_dir, overwrite)
    if base_model_name_or_path is None:
        base_dir = prepare_out_dir(out / "base", overwrite)
        write_model(base_dir, config, nnx.state(strip_lora(model)), tokenizer=tokenizer, dtype=dtype, max_shard_size=max_shard_size)
    from safetensors.numpy import save_file

    save_file(tensors, str(out / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    write_json(out / ADAPTER_CONFIG_NAME, adapter_config)
    if tokenizer is not None:
        write_tokenizer(out, tokenizer, config.max_len)
    return out


def export_pretrained(out_dir: str | Path, pretrained, **options) -> Path:
    """``export_hf`` of a ``jirl.models.pretrained.Pretrained`` (config, weights, tokenizer)."""
    return export_hf(out_dir, pretrained.config, pretrained.graphdef, pretrained.params, tokenizer=pretrained.tokenizer, **options)


# ---------------------------------------------------------------------------------------------
# Reward heads


def export_reward_head(out_dir: str | Path, head, *, kind: str = "sequence", overwrite: bool = False) -> Path:
    """Write a scalar head (``jirl.models.heads``: its ``proj`` Linear, ``[d_model] -> 1``) as
    ``out_dir/reward_head.safetensors`` (``score.weight [1, d_model]`` as transformers'
    ``*ForSequenceClassification`` names it, plus ``score.bias [1]``) and ``reward_head.json``
    (``kind``: ``sequence`` = read at the last real token, ``token`` / ``value`` = every
    position; applied to the backbone's final-normed hidden states). Returns ``out_dir``."""
    from safetensors.numpy import save_file

    if kind not in HEAD_KINDS.values():
        raise ExportError(f"unknown reward head kind {kind!r}; choose one of {sorted(HEAD_KINDS.values())}")
    kernel = np.asarray(jax.device_get(head.proj.kernel[...]), np.float32)
    bias = np.asarray(jax.device_get(head.proj.bias[...]), np.float32) if head.proj.bias is not None else np.zeros(1, np.float32)
    out = prepare_out_dir(out_dir, overwrite)
    save_file({"score.weight": np.ascontiguousarray(kernel.T), "score.bias": bias}, str(out / "reward_head.safetensors"), metadata={"format": "pt"})
    write_json(out / "reward_head.json", {
        "kind": kind, "d_model": int(kernel.shape[0]), "tensors": {"score.weight": [1, int(kernel.shape[0])], "score.bias": [1]},
        "formula": "reward = hidden @ score.weight.T + score.bias, hidden = the backbone's final-normed hidden states"
                   + (" at the last real token" if kind == "sequence" else " at every position"),
    })
    return out


def load_reward_head(folder: str | Path) -> dict:
    """``{"kind", "d_model", "weight" [1, d_model], "bias" [1]}`` of an ``export_reward_head`` folder."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    if not (folder / "reward_head.json").is_file():
        raise ExportError(f"{folder} holds no reward_head.json; export the head with export_reward_head")
    info = json.loads((folder / "reward_head.json").read_text())
    tensors = load_file(str(folder / "reward_head.safetensors"))
    return {"kind": info["kind"], "d_model": info["d_model"], "weight": tensors["score.weight"], "bias": tensors["score.bias"]}


def export_reward_model(out_dir: str | Path, config: TransformerConfig, graphdef, params, **options) -> Path:
    """Export a ``SequenceRewardModel``, ``TokenRewardModel`` or ``ValueModel``: its backbone
    with ``export_hf`` (same ``options``) and its head in ``out_dir/reward_head/``. (A folder of
    its own, so that readers globbing ``*.safetensors`` in ``out_dir`` see only the backbone.)"""
    model = nnx.merge(graphdef, params)
    kind = HEAD_KINDS.get(type(getattr(model, "head", None)).__name__)
    if kind is None or not hasattr(model, "backbone"):
        raise ExportError(f"export_reward_model needs a jirl reward or value model (backbone + head), got {type(model).__name__}")
    backbone_graphdef, backbone_params = nnx.split(model.backbone)
    out = export_hf(out_dir, config, backbone_graphdef, backbone_params, **options)
    export_reward_head(out / REWARD_HEAD_DIR, model.head, kind=kind, overwrite=options.get("overwrite", False))
    return out


# ---------------------------------------------------------------------------------------------
# Command line


def add_export_arguments(parser) -> None:
    """The arguments of ``jirl export SOURCE OUT_DIR``."""
    parser.add_argument("source", help="a model load_pretrained reads (a preset name, a .gguf file or a Hugging Face folder), "
                        "or the folder of a jirl run sft|dpo|kto run (its trained policy, LoRA merged)")
    parser.add_argument("out_dir", help="the folder to write (must be empty or new, unless --overwrite)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="stored dtype of the weights (default float32)")
    parser.add_argument("--max-shard-size", default="2GB", help="split the weights into shards of at most this size, e.g. 500MB (default 2GB)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder (only export files are replaced)")


def export_command(args) -> int:
    """``jirl export SOURCE OUT_DIR``: load ``SOURCE`` with ``load_pretrained`` and write it as
    a Hugging Face folder (weights, config, tokenizer). Returns the exit code."""
    from jirl.models.pretrained import load_pretrained

    options = dict(dtype=args.dtype, max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    check_dtype(options["dtype"])
    parse_size(options["max_shard_size"])
    pretrained = load_pretrained(args.source)
    out = export_pretrained(args.out_dir, pretrained, **options)
    print(f"exported {args.source} to {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0

