"""Example records: the one format every jirl dataset writes and every loader reads.

An example is a dict of fixed-shape numpy arrays:

- ``tokens`` ``[max_len]`` int32: the prompt in slots ``0..p-1``, the response (ending with
  EOS when it ended with one) in slots ``p..p+n-1``, padded with 0 (EOS/pad);
- ``prompt_len`` int32 scalar ``p``; ``response_len`` int32 scalar ``n``.

Datasets may add fields (demonstrations add their dense gold ``rewards [horizon]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

from jirl.data.errors import DataError
from jirl.data.jsonl import JsonlRow

Example = dict[str, np.ndarray]


class Tokenizer(Protocol):
    """What tokenization needs: ``encode`` text to ids, and the EOS id (also the pad id)."""

    eos_id: int

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``."""


def tokenize_pair(tokenizer: Tokenizer, prompt: str, response: str, max_len: int, where: str = "example") -> Example:
    """The example for one (prompt, response) text pair; EOS is appended to the response.

    ``where`` (e.g. ``"train.jsonl:7"``) prefixes error messages. Raises ``DataError`` if the
    prompt is empty, a text does not tokenize, or the pair does not fit ``max_len``.
    """
    if max_len < 2:
        raise DataError(f"max_len must be at least 2 (one prompt token and EOS), got {max_len}")
    prompt_ids = _encode(tokenizer, prompt, where, "prompt")
    response_ids = _encode(tokenizer, response, where, "response") + [tokenizer.eos_id]
    if not prompt_ids:
        raise DataError(f"{where}: the prompt is empty; every example needs at least one prompt token")
    length = len(prompt_ids) + len(response_ids)
    if length > max_len:
        raise DataError(
            f"{where}: prompt ({len(prompt_ids)} tokens) + response ({len(response_ids) - 1} tokens + EOS) "
            f"= {length} tokens exceed max_len {max_len}; raise max_len or shorten/drop this row"
        )
    tokens = np.full(max_len, tokenizer.eos_id, np.int32)
    tokens[:length] = prompt_ids + response_ids
    return {
        "tokens": tokens,
        "prompt_len": np.int32(len(prompt_ids)),
        "response_len": np.int32(len(response_ids)),
    }


def tokenize_rows(
    rows: Iterable[JsonlRow],
    tokenizer: Tokenizer,
    max_len: int,
    prompt_field: str = "prompt",
    response_field: str = "response",
    source: str = "",
) -> list[Example]:
    """Examples for JSONL rows; errors name ``source:LINE`` of the offending row."""
    return [
        tokenize_pair(tokenizer, row[prompt_field], row[response_field], max_len, where=f"{source}:{row.line}")
        for row in rows
    ]


def examples_from_demonstrations(demos) -> list[Example]:
    """One example per row of a ``jirl.mdp.demonstrations.Demonstrations``, with its
    ``rewards [horizon]`` float32 as an extra field."""
    tokens = np.asarray(demos.tokens, np.int32)
    prompt_lens = np.asarray(demos.prompt_lens, np.int32)
    response_lens = np.asarray(demos.response_lens, np.int32)
    rewards = np.asarray(demos.rewards, np.float32)
    return [
        {"tokens": tokens[i], "prompt_len": prompt_lens[i], "response_len": response_lens[i], "rewards": rewards[i]}
        for i in range(len(tokens))
    ]


def stack_examples(examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A batch: each field of ``examples`` stacked along a new leading axis."""
    if not examples:
        raise DataError("cannot stack an empty list of examples")
    return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}


def _encode(tokenizer: Tokenizer, text: str, where: str, what: str) -> list[int]:
    try:
        return list(tokenizer.encode(text))
    except ValueError as error:
        raise DataError(f"{where}: the {what} does not tokenize: {error}") from None
