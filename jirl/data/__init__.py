"""The data pipeline: JSONL files -> example records -> TFDS ``array_record`` datasets ->
grain batches with an exactly resumable iterator.

- ``jirl.data.jsonl``: ``read_jsonl`` with file:line errors.
- ``jirl.data.examples``: the example record format and tokenization.
- ``jirl.data.builders``: TFDS builders ``TaskDemonstrations`` and ``JsonlSft``, ``prepare``
  and ``data_source`` (imports tensorflow-datasets, no TensorFlow).
- ``jirl.data.loader``: ``batch_iterator`` and ``pad_to_bucket`` (imports grain).
- ``jirl.data.formats``: ``read_rows``, user data in the layouts people have (TRL, ShareGPT,
  JSONL/JSON/Parquet/``datasets``) as canonical rows.
- ``jirl.data.chat_tokenize``: ``ChatTokenization``, rows to token records with a model's
  tokenizer and chat template.
- ``jirl.data.text_datasets``: ``prepare_text_dataset``, rows -> tokenized ``array_record``
  train/eval splits, built once (``TextDataset``).

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
    "read_rows": "jirl.data.formats",
    "RowReport": "jirl.data.formats",
    "ChatTokenization": "jirl.data.chat_tokenize",
    "TextDataset": "jirl.data.text_datasets",
    "prepare_text_dataset": "jirl.data.text_datasets",
    "tokenizer_digest": "jirl.data.text_datasets",
    "check_tokenizer_fits": "jirl.data.text_datasets",
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
