"""Batches from a random-access source through grain, with an exactly resumable iterator.

``batch_iterator(source, batch_size, seed=...)`` shuffles deterministically by ``seed`` (a new
order each epoch), repeats forever or for ``num_epochs``, and yields fixed-size batches (the
last partial batch is dropped) as dicts of stacked numpy arrays. Its ``get_state()`` is plain
JSON data; ``set_state(state)`` on a fresh iterator over the same source and settings resumes
so that the following batches are exactly those of an uninterrupted run.

``pad_to_bucket`` trims or pads a batch's token axis to one of a few fixed widths, so jitted
steps compile for a handful of shapes only.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jirl.data.errors import DataError

STATE_FORMAT = "jirl.data.loader/1"
DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclasses.dataclass(frozen=True)
class LoaderSettings:
    """What determines the batch stream; stored in the iterator state and checked on restore."""

    num_examples: int
    batch_size: int
    seed: int
    shuffle: bool
    num_epochs: int | None


def batch_iterator(
    source: Sequence[Mapping[str, np.ndarray]],
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    worker_count: int = 0,
    read_threads: int = 0,
) -> "BatchIterator":
    """A checkpointable iterator of ``batch_size`` batches over ``source``'s examples.

    ``num_epochs=None`` repeats forever. Every epoch visits each example once, in a new order
    per epoch; batches run across epoch boundaries and only a final partial batch is dropped.
    ``worker_count=0`` (default) reads in this process, ``read_threads=0`` without threads;
    positive values use grain worker processes / reader threads (same batches, faster).
    """
    settings = LoaderSettings(len(source), batch_size, seed, shuffle, num_epochs)
    _check_settings(settings)
    return BatchIterator(source, settings, worker_count=worker_count, read_threads=read_threads)


def batch_order(num_examples: int, batch_size: int, steps: int, *, seed: int = 0, shuffle: bool = True) -> np.ndarray:
    """The example indices ``[steps, batch_size]`` of the first ``steps`` batches that
    ``batch_iterator`` yields over any source of ``num_examples`` examples with these settings
    (the order depends only on the source's length). It replays a loader's stream on arrays
    already in memory, e.g. for seeds trained side by side under ``jax.vmap``."""
    with batch_iterator(_IndexSource(num_examples), batch_size, seed=seed, shuffle=shuffle) as batches:
        return np.stack([next(batches)["index"] for _ in range(steps)])


class _IndexSource(Sequence):
    """``num_examples`` examples, example ``i`` being ``{"index": i}``."""

    def __init__(self, num_examples: int):
        self.num_examples = num_examples

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, i):
        if not 0 <= i < self.num_examples:
            raise IndexError(i)
        return {"index": np.int64(i)}


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Iterator of batches whose position can be saved (``get_state``) and restored."""

    def __init__(self, source, settings: LoaderSettings, *, worker_count: int = 0, read_threads: int = 0):
        self.settings = settings
        self._grain_iterator = iter(_grain_pipeline(source, settings, worker_count, read_threads))

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._grain_iterator)

    def close(self) -> None:
        """Stop grain's reader threads and worker processes (if any)."""
        self._grain_iterator.close()

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def get_state(self) -> dict[str, Any]:
        """The position in the stream as JSON-serialisable data (with the settings it is for)."""
        return {
            "format": STATE_FORMAT,
            "settings": dataclasses.asdict(self.settings),
            "grain": _json_safe(self._grain_iterator.get_state()),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resume at the position ``state`` (from ``get_state``) was taken at; ``DataError``
        if it is not a loader state or was taken with other settings or another source size."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise DataError(
                f"not a data-loader state (expected format {STATE_FORMAT!r}); pass what get_state() returned"
            )
        saved = state["settings"]
        current = dataclasses.asdict(self.settings)
        differing = {key: (saved.get(key), value) for key, value in current.items() if saved.get(key) != value}
        if differing:
            details = ", ".join(f"{key}: saved {old!r}, now {new!r}" for key, (old, new) in differing.items())
            raise DataError(
                f"the data-loader state was saved with other settings ({details}); "
                "restore it into an iterator built with the saved settings over the same data"
            )
        self._grain_iterator.set_state(_from_json_safe(state["grain"]))


def _check_settings(settings: LoaderSettings) -> None:
    if settings.num_examples == 0:
        raise DataError("the data source is empty; prepare a dataset with at least one example")
    if settings.batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {settings.batch_size}")
    if not 0 <= settings.seed < 2**63:
        raise DataError(f"seed must be a non-negative integer, got {settings.seed}")
    if settings.num_epochs is not None:
        if settings.num_epochs < 1:
            raise DataError(f"num_epochs must be >= 1 or None (forever), got {settings.num_epochs}")
        if settings.num_epochs * settings.num_examples < settings.batch_size:
            raise DataError(
                f"{settings.num_epochs} epoch(s) of {settings.num_examples} examples make no full batch of "
                f"{settings.batch_size}; lower batch_size or raise num_epochs"
            )


def _grain_pipeline(source, settings: LoaderSettings, worker_count: int, read_threads: int) -> grain.IterDataset:
    dataset = grain.MapDataset.source(source)
    if settings.shuffle:
        # grain reshuffles epoch e with seed + e; mixing the user seed first keeps the streams of
        # neighbouring seeds (seed s, epoch 1 vs seed s+1, epoch 0) unrelated.
        dataset = dataset.shuffle(seed=_mixed_seed(settings.seed))
    dataset = dataset.repeat(settings.num_epochs).batch(settings.batch_size, drop_remainder=True)
    read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_threads and 2 * read_threads)
    iterable = dataset.to_iter_dataset(read_options)
    if worker_count > 0:
        _allow_unparsed_absl_flags()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iterable


def _allow_unparsed_absl_flags() -> None:
    """grain 0.2.x reads an absl flag in ``mp_prefetch`` and fails unless flags were parsed
    (google/grain#1355); outside an ``absl.app`` program, mark them parsed (at defaults)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _mixed_seed(seed: int) -> int:
    """A 32-bit seed derived from ``seed`` by numpy's ``SeedSequence`` hashing."""
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def _json_safe(value: Any) -> Any:
    """``value`` as JSON data: bytes become ``{"__bytes__": base64}``, mappings with non-string
    keys ``{"__items__": [[key, value], ...]}``, tuples lists, numpy scalars Python numbers."""
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        if all(isinstance(key, str) for key in value):
            return {key: _json_safe(item) for key, item in value.items()}
        return {"__items__": [[_json_safe(key), _json_safe(item)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"__bytes__"}:
            return base64.b64decode(value["__bytes__"])
        if set(value) == {"__items__"}:
            return {_from_json_safe(key): _from_json_safe(item) for key, item in value["__items__"]}
        return {key: _from_json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json_safe(item) for item in value]
    return value


# --------------------------------------------------------------------------- shape buckets


def pad_to_bucket(
    batch: Mapping[str, np.ndarray],
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    token_keys: Sequence[str] = ("tokens",),
) -> dict[str, np.ndarray]:
    """``batch`` with the last axis of each ``token_keys`` field trimmed or padded (with 0) to
    the smallest bucket >= the longest sequence (``prompt_len + response_len``) in the batch."""
    longest = int(np.max(np.asarray(batch["prompt_len"]) + np.asarray(batch["response_len"]), initial=0))
    width = bucket_width(longest, buckets)
    out = dict(batch)
    for key in token_keys:
        out[key] = _fit_width(np.asarray(batch[key]), width, key)
    return out


def bucket_width(length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket >= ``length``; ``DataError`` when none is large enough."""
    fitting = [b for b in sorted(buckets) if b >= length]
    if not fitting:
        raise DataError(f"a sequence of {length} tokens exceeds the largest bucket {max(buckets)}; add a larger bucket")
    return fitting[0]


def _fit_width(array: np.ndarray, width: int, key: str) -> np.ndarray:
    current = array.shape[-1]
    if current >= width:
        if np.any(array[..., width:]):
            raise DataError(
                f"batch[{key!r}] holds non-pad tokens beyond prompt_len + response_len; "
                "sequences must be left-aligned and padded with 0"
            )
        return array[..., :width]
    padding = [(0, 0)] * (array.ndim - 1) + [(0, width - current)]
    return np.pad(array, padding)
