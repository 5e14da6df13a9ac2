"""The data pipeline: JSONL files -> example records -> TFDS ``array_record`` datasets ->
grain batches with an exactly resumable iterator.

- ``jirl.data.jsonl``: ``read_jsonl`` with file:line errors.
- ``jirl.data.examples``: the example record format and tokenization.
- ``jirl.data.builders``: TFDS builders ``TaskDemonstrations`` and ``JsonlSft``, ``prepare``
  and ``data_source`` (imports tensorflow-datasets, no TensorFlow).
- ``jirl.data.loader``: ``batch_iterator`` and ``pad_to_bucket`` (imports grain).

The TFDS and grain parts load on first use, so ``import jirl.data`` stays light.
"""

from __future__ import annotations

import importlib

from jirl.data.errors import DataError
from jirl.data.examples import Example, examples_from_demonstrations, stack_examples, tokenize_pair, tokenize_rows
from jirl.data.jsonl import JsonlReport, JsonlRow, read_jsonl

_LAZY_NAMES = {
    "TaskDemonstrations": "jirl.data.builders",
    "JsonlSft": "jirl.data.builders",
    "ExampleSource": "jirl.data.builders",
    "prepare": "jirl.data.builders",
    "data_source": "jirl.data.builders",
    "BatchIterator": "jirl.data.loader",
    "batch_iterator": "jirl.data.loader",
    "pad_to_bucket": "jirl.data.loader",
    "bucket_width": "jirl.data.loader",
}

__all__ = [
    "DataError",
    "Example",
    "JsonlReport",
    "JsonlRow",
    "examples_from_demonstrations",
    "read_jsonl",
    "stack_examples",
    "tokenize_pair",
    "tokenize_rows",
    *_LAZY_NAMES,
]


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'jirl.data' has no attribute {name!r}")
