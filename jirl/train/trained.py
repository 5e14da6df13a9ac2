"""The trained weights of a text-trainer run (``jirl run sft | dpo | kto | rl | irl``), saved and read back.

A run folder holds ``config.json`` (the run's config) and one Orbax checkpoint of the weights
that trained, with metadata ``{"model", "lora", "dtype", "format", "init"}``:

- ``adapters/``: LoRA runs, the adapters alone (``adapter_params``); ``lora`` holds the
  ``rank``, ``alpha`` and ``targets`` that rebuild them on the pretrained ``model``;
- ``params/``: full fine-tuning, every parameter (``lora`` is ``None``).

``init``, when set, is the folder of the run whose trained policy the adapters were added to
(``jirl run rl --set init=SFT_RUN``, ``jirl run irl``), loaded first (recursively) in place of
the pretrained ``model``.

``load_trained`` rebuilds the trained policy as a plain model (adapters merged), the form that
``jirl.models.export.export_hf`` writes and that RL starts from (``jirl run rl --set init=RUN``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import jax
from flax import nnx

from jirl.config import ConfigError
from jirl.models.lora import adapter_params, add_lora, with_adapters, without_lora
from jirl.models.pretrained import Pretrained, load_pretrained
from jirl.train.checkpoint import CheckpointManager

ADAPTERS_DIR = "adapters"  # LoRA runs: the adapters alone
PARAMS_DIR = "params"  # full fine-tuning: every parameter
RUN_CONFIG_FILE = "config.json"


def save_trained(run_path: Path | str, step: int, params, *, model: str, lora: Mapping[str, Any] | None, dtype: str,
                 init: str | None = None) -> Path:
    """Save a run's trained weights under ``run_path`` (see the module docstring): the adapters of
    ``params`` when ``lora`` (``{"rank", "alpha", "targets"}``) is given, else all of ``params``;
    ``init``: the run folder whose trained policy they start from (stored absolute). Returns the
    checkpoint folder."""
    folder = Path(run_path) / (ADAPTERS_DIR if lora else PARAMS_DIR)
    metadata = {"model": model, "lora": dict(lora) if lora else None, "dtype": dtype, "format": folder.name,
                "init": str(Path(init).expanduser().resolve()) if init else None}
    with CheckpointManager(folder, keep_last=1) as manager:
        manager.save(step, adapter_params(params) if lora else params, metadata)
    return folder


def is_trained_run(path: Path | str) -> bool:
    """Whether ``path`` is a run folder with saved weights (``config.json`` and ``adapters/`` or
    ``params/``)."""
    folder = Path(path).expanduser()
    return (folder / RUN_CONFIG_FILE).is_file() and any((folder / sub).is_dir() for sub in (ADAPTERS_DIR, PARAMS_DIR))


def shapes_of(tree):
    """The abstract (shape, dtype) tree a checkpoint is restored into."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def load_trained(path: Path | str) -> tuple[Pretrained, Any, dict]:
    """``(base, params, run_config)`` of a run folder: its pretrained base model (``load_pretrained``
    of the saved ``model``), the trained policy's parameters as the plain model's (LoRA adapters
    merged in; ``base.graphdef`` computes with them) and the run's config. ``ConfigError`` when
    ``path`` is not such a folder."""
    folder = Path(path).expanduser()
    if not is_trained_run(folder):
        raise ConfigError(
            f"{folder} is not the folder of a `jirl run sft|dpo|kto|rl|irl` run: it needs {RUN_CONFIG_FILE} and "
            f"{ADAPTERS_DIR}/ or {PARAMS_DIR}/ (written when the run finishes)"
        )
    run_config = json.loads((folder / RUN_CONFIG_FILE).read_text())["config"]
    saved = folder / (ADAPTERS_DIR if (folder / ADAPTERS_DIR).is_dir() else PARAMS_DIR)
    with CheckpointManager(saved) as manager:
        metadata = manager.metadata()
        if not isinstance(metadata, dict) or metadata.get("format") != saved.name:
            raise ConfigError(
                f"{saved} was not written by save_trained (a `jirl run sft|dpo|kto` run; its metadata has no "
                f"format {saved.name!r}), so its base model is not known; export or load it from the run that made it"
            )
        if metadata.get("init"):
            base, start, _ = load_trained(metadata["init"])
        else:
            base = load_pretrained(metadata["model"])
            start = base.params
        if metadata["lora"] is None:
            params, _ = manager.restore(shapes_of(start))
            return base, params, run_config
        lora = metadata["lora"]
        model = add_lora(nnx.merge(base.graphdef, start), lora["rank"], lora["alpha"], tuple(lora["targets"]))
        graphdef, lora_params = nnx.split(model)
        adapters, _ = manager.restore(shapes_of(adapter_params(lora_params)))
    return base, nnx.state(without_lora(nnx.merge(graphdef, with_adapters(lora_params, adapters)))), run_config
