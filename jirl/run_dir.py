"""The folder a run writes into (``RunDir``) and the JSON conventions of its files: values made
JSON-able by ``to_jsonable``, files written atomically by ``write_json_file``, and
``nonfinite_paths`` to find a NaN before it is published. A base module: the training loop
and the experiment runner both use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from rich.console import Console

from jirl.config import config_to_dict

METRICS_FILE = "metrics.jsonl"


def to_jsonable(value: Any) -> Any:
    """Convert numpy/jax scalars and arrays, tuples, paths and dataclasses to JSON types."""
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(config_to_dict(value))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
        array = np.asarray(value)
        return array.item() if array.ndim == 0 else array.tolist()
    return value


def write_json_file(path: Path, obj: Any) -> Path:
    """Write ``obj`` (made JSON-able by ``to_jsonable``) to ``path`` as indented JSON with a
    final newline, atomically (a temporary file renamed over ``path``: a reader or a killed
    run never sees half a file); returns ``path``."""
    text = json.dumps(to_jsonable(obj), indent=2) + "\n"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def nonfinite_paths(value: Any, path: str = "") -> list[str]:
    """Dotted paths (``a.b[3]``) of every NaN or inf float in a JSON-like ``value``."""
    if isinstance(value, float):
        return [path or "(the value)"] if not np.isfinite(value) else []
    if isinstance(value, Mapping):
        return [p for key, item in value.items() for p in nonfinite_paths(item, f"{path}.{key}" if path else str(key))]
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in nonfinite_paths(item, f"{path}[{i}]")]
    return []


class RunDir:
    """The folder one run writes its metrics, results and figures into."""

    def __init__(self, path: Path | str, console: Console | None = None, resume: bool = False):
        self.path = Path(path)
        self.console = console or Console()
        self.resume = resume  # continue from the folder's latest checkpoint

    def log(self, step: int, **metrics: Any) -> None:
        """Append one line ``{"step": step, **metrics}`` to metrics.jsonl."""
        record = {"step": int(step), **to_jsonable(metrics)}
        with open(self.path / METRICS_FILE, "a") as metrics_file:
            metrics_file.write(json.dumps(record) + "\n")

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` (numpy/jax values converted) as JSON file ``name``."""
        return write_json_file(self.path_for(name), obj)

    def path_for(self, name: str) -> Path:
        """Path of file ``name`` inside the run folder, creating its parent folders."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
