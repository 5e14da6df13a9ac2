"""Loading pretrained weights into jirl models, one tensor at a time, straight onto devices.

A model family (``jirl/models/llama.py``, ``jirl/models/gpt2.py``) describes its checkpoint as a
list of ``TensorRule``: which checkpoint tensor fills which jirl parameter, and how its layout
changes on the way (``to_jirl``) and back (``to_source``, used by export). ``load_params``

1. builds the model abstractly (``nnx.eval_shape``: shapes only, no memory),
2. computes each parameter's sharding on the mesh (replicated, or FSDP-split),
3. reads the tensors one by one (safetensors and GGUF are memory-mapped), checks each shape
   against the config, and places it on its devices with ``jax.device_put``,

so a model larger than one device's memory loads sharded, and a mismatch between the config
and the weights is refused with the tensor's name and both shapes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Callable, Iterable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jirl.config import JirlError
from jirl.sharding import param_shardings

Path_ = tuple  # a parameter's path in the model state, e.g. ("layers", 0, "attn", "q_proj", "kernel")


def identity(x: np.ndarray) -> np.ndarray:
    """The tensor unchanged: the default layout conversion of a ``TensorRule``."""
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    """PyTorch ``Linear.weight [out, in]`` <-> NNX ``Linear.kernel [in, out]``."""
    return np.ascontiguousarray(x.T)


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """Checkpoint tensor ``source`` fills the jirl parameter at ``target``.

    ``to_jirl`` converts the layout on import, ``to_source`` back on export. ``part = (i, n)``:
    the target is the ``i``-th of ``n`` equal pieces of the (converted) source along its last
    axis, for checkpoints that fuse several projections into one tensor (GPT-2's ``c_attn``).
    """

    source: str
    target: Path_
    to_jirl: Callable[[np.ndarray], np.ndarray] = identity
    to_source: Callable[[np.ndarray], np.ndarray] = identity
    part: tuple[int, int] | None = None

    def convert(self, array: np.ndarray) -> np.ndarray:
        """The source tensor (as read) in this parameter's jirl layout."""
        array = self.to_jirl(np.asarray(array))
        if self.part is not None:
            index, count = self.part
            array = np.split(array, count, axis=-1)[index]
        return array


class WeightsError(JirlError):
    """Weights that do not fit the model: missing tensors, wrong shapes, unknown formats."""


@contextlib.contextmanager
def hf_sizes_checked(hf: dict, *keys: str):
    """Turn the ``ValueError`` of a ``TransformerConfig`` built from a ``config.json`` dict into
    a ``WeightsError`` that shows the file's own size fields (``keys``)."""
    try:
        yield
    except ValueError as error:
        sizes = ", ".join(f"{key}={hf.get(key)}" for key in keys)
        raise WeightsError(f"config.json does not describe a model ({sizes}): {error}") from None


# ---------------------------------------------------------------------------------------------
# Tensor sources


class DictSource:
    """Tensors held in memory, ``{name: array}`` (tests, conversions)."""

    def __init__(self, tensors: dict):
        self.tensors = tensors

    def names(self) -> list[str]:
        """The tensor names, sorted."""
        return sorted(self.tensors)

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a NumPy array."""
        return np.asarray(self.tensors[name])


def open_safetensors(file: Path):
    """A lazy ``safe_open`` handle on ``file``; a damaged file (truncated download, not a
    safetensors file) is a ``WeightsError`` naming it."""
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="numpy")
    except Exception as error:  # noqa: BLE001  (the Rust reader's errors have no common Python base)
        raise WeightsError(f"{file} is not a readable safetensors file ({error}); it may be truncated: download it again") from None


class SafetensorsSource:
    """The tensors of a Hugging Face checkpoint folder (one or several ``*.safetensors`` files)
    or of a single file, read lazily by name."""

    def __init__(self, path: str | Path):
        path = Path(path)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files or not all(f.exists() for f in files):
            raise WeightsError(f"no safetensors weights at {path}: expected a model.safetensors file or a folder holding one")
        self._files = {f: open_safetensors(f) for f in files}
        self._where = {name: f for f, handle in self._files.items() for name in handle.keys()}

    def names(self) -> list[str]:
        """The names of the tensors in all files, sorted."""
        return sorted(self._where)

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a NumPy array, read from the file that holds it."""
        file = self._where[name]
        try:
            return self._files[file].get_tensor(name)
        except Exception as error:  # noqa: BLE001
            raise WeightsError(f"cannot read tensor {name!r} from {file} ({error}); it may be truncated: download it again") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name``, read from the file header without loading the data."""
        return tuple(self._files[self._where[name]].get_slice(name).get_shape())


def read_hf_config(path: str | Path) -> dict:
    """The ``config.json`` of a Hugging Face model folder."""
    path = Path(path)
    config = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not config.exists():
        raise WeightsError(f"{config} not found: a Hugging Face model folder holds config.json next to its weights")
    return json.loads(config.read_text())


# ---------------------------------------------------------------------------------------------
# Loading


def _flatten(tree) -> dict[Path_, object]:
    """``{path: leaf}`` of a nested dict (an ``nnx.to_pure_dict`` state)."""
    return {tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _set_path(tree, path: Path_, value) -> None:
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def abstract_model(build: Callable[[], nnx.Module]):
    """``(graphdef, abstract_state)`` of a model built by ``build`` without allocating it."""
    return nnx.split(nnx.eval_shape(build))


def load_params(
    build: Callable[[], nnx.Module],
    rules: Iterable[TensorRule],
    source,
    mesh: jax.sharding.Mesh | None = None,
    strategy: Literal["replicate", "fsdp"] = "replicate",
    ignore: Callable[[str], bool] = lambda name: False,
):
    """``(graphdef, params)`` of the model ``build()`` with every parameter read from ``source``
    (``.names()``, ``.read(name)``, ``.shape(name)``) through ``rules``.

    Parameters are float32 (jirl keeps parameters in float32; the config's ``dtype`` sets the
    compute dtype). With a ``mesh`` each parameter is placed with its sharding as it is read
    (``jirl.sharding.param_shardings``). Raises ``WeightsError`` naming every missing
    tensor, or the first tensor whose shape differs from the config's. Checkpoint tensors no
    rule uses are refused too, unless ``ignore(name)`` (e.g. rotary caches).
    """
    graphdef, state = abstract_model(build)
    pure = nnx.to_pure_dict(state)  # nested dict of ShapeDtypeStructs, filled in below
    targets = _flatten(pure)
    rules = list(rules)
    by_target = {rule.target: rule for rule in rules}
    available = set(source.names())
    unmapped = sorted(set(targets) - set(by_target), key=str)
    if unmapped:
        raise WeightsError(f"no checkpoint rule for model parameter(s) {['.'.join(map(str, p)) for p in unmapped[:5]]}")
    missing = sorted(rule.source for rule in rules if rule.source not in available)
    if missing:
        raise WeightsError(
            f"the checkpoint lacks {len(missing)} tensor(s) the config needs: {missing[:8]}{' ...' if len(missing) > 8 else ''}. "
            "Check that the config (number of layers, tied embeddings, biases) matches the weights"
        )
    unused = sorted(name for name in available - {rule.source for rule in rules} if not ignore(name))
    if unused:
        raise WeightsError(
            f"the checkpoint has {len(unused)} tensor(s) the config does not use: {unused[:8]}{' ...' if len(unused) > 8 else ''}. "
            "The config probably describes a different architecture (more layers, untied embeddings, biases)"
        )
    sharding_of = _flatten(param_shardings(pure, mesh, strategy)) if mesh is not None else {}
    # A fused tensor (several parameters' parts) is read and dequantised once, kept until its
    # last part is placed; every other tensor is read, placed and dropped one at a time.
    parts_left = {}
    for rule in rules:
        parts_left[rule.source] = parts_left.get(rule.source, 0) + 1
    fused = {}
    for target, leaf in targets.items():
        rule = by_target[target]
        if parts_left[rule.source] > 1 or rule.source in fused:
            fused.setdefault(rule.source, source.read(rule.source))
            array = rule.convert(fused[rule.source])
            parts_left[rule.source] -= 1
            if not parts_left[rule.source]:
                del fused[rule.source]
        else:
            array = rule.convert(source.read(rule.source))
        if tuple(array.shape) != tuple(leaf.shape):
            raise WeightsError(
                f"tensor {rule.source!r} has shape {tuple(array.shape)} after conversion, but the config needs "
                f"{tuple(leaf.shape)} for {'.'.join(map(str, target))}; the config does not match these weights"
            )
        array = array.astype(np.float32)
        if not np.all(np.isfinite(array)):
            raise WeightsError(f"tensor {rule.source!r} holds NaN or infinite values: the checkpoint is corrupt")
        placed = jax.device_put(array, sharding_of[target]) if mesh is not None else jnp.asarray(array)
        _set_path(pure, target, placed)
    nnx.replace_by_pure_dict(state, pure)
    return graphdef, state


# ---------------------------------------------------------------------------------------------
# Export


def export_tensors(params, rules: Iterable[TensorRule]) -> dict[str, np.ndarray]:
    """``{checkpoint name: array}`` of jirl ``params`` in the checkpoint's own layout (the
    inverse of ``load_params``; fused tensors are concatenated back from their parts)."""
    values = _flatten(nnx.to_pure_dict(params))
    pieces: dict[str, list] = {}
    for rule in rules:
        value = np.asarray(jax.device_get(values[rule.target]), np.float32)
        pieces.setdefault(rule.source, []).append((rule.part[0] if rule.part else 0, value, rule))
    tensors = {}
    for name, parts in pieces.items():
        parts.sort(key=lambda p: p[0])
        joined = np.concatenate([v for _, v, _ in parts], axis=-1) if len(parts) > 1 else parts[0][1]
        tensors[name] = np.ascontiguousarray(parts[0][2].to_source(joined))
    return tensors


def save_safetensors(params, rules: Iterable[TensorRule], hf_config: dict, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (Hugging Face layout) to ``out_dir``."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(export_tensors(params, rules), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
    return out_dir
