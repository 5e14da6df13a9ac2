"""Preference pairs: reading, validating, tokenizing, and TFDS builders writing ``array_record``.

A preference pair is one example of fixed-shape numpy arrays:

- ``chosen`` and ``rejected`` ``[max_len]`` int32: left-aligned buffers holding the prompt in
  slots ``0..p-1``, then the response, then EOS, padded with 0 (EOS/pad); both hold the same
  prompt tokens;
- ``prompt_len`` int32 ``p`` (shared by both);
- ``chosen_len`` and ``rejected_len`` int32: response lengths including the final EOS. A
  response cut at ``max_len`` has no EOS; its length is then the number of tokens kept;
- ``margin`` float32: how strongly ``chosen`` is preferred (0 unless the source gives one).

Readers validate every row and count what they drop, by reason, instead of failing on messy
but well-formed data; malformed JSON and missing fields are errors naming ``file:line``:

- ``read_hh_pairs``: Anthropic HH-RLHF dialogues (``chosen``, ``rejected`` whole dialogues);
- ``read_jsonl_pairs``: generic ``{prompt, chosen, rejected[, margin]}`` rows (the
  UltraFeedback-binarized layout).

Builders (use them through ``jirl.data.builders.prepare`` and ``data_source``)::

    builder = prepare(HHPreferences, data_dir, manual_dir="../shared/data/hh-rlhf-harmless", max_len=512)
    batches = batch_iterator(data_source(builder, "train"), batch_size=16, seed=0)
    preference_report(builder)  # rows kept / dropped by reason / truncated, per file and split

The report also counts, with the ``file:line`` of the first one, the pairs that repeat an
earlier pair (same prompt, chosen and rejected text, in any of the builder's files; they are
kept, so that a deliberate repeat still weighs twice) and the prompts that alone fill
``max_len`` (``max_len`` tokens or more: only their end is kept, and their responses are cut
to one token).

- ``HHPreferences``: ``pairs.jsonl[.gz]`` split into ``train``/``test`` by a seeded hash of
  each pair's prompt (pairs sharing a prompt land in the same split, so no prompt leaks from
  train into test; the same file and seed always give the same split);
- ``JsonlPreferences``: ``train.jsonl[.gz]`` (and optional ``test.jsonl[.gz]``).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jirl.data.builders import _config_name, _files_digest, _reject_unknown
from jirl.data.chat_tokenize import fit_prompt_and_responses
from jirl.data.errors import DataError
from jirl.data.examples import Example, Tokenizer, _encode
from jirl.data.jsonl import read_jsonl

HH_ASSISTANT_MARKER = "\n\nAssistant:"
HH_HUMAN_MARKER = "\n\nHuman:"
MAX_REPORTED_LINES = 10  # how many line numbers a report lists for each drop reason

# Why a row is dropped (the keys of a report's "dropped" counts).
IDENTICAL = "identical"  # chosen and rejected are the same text
NO_ASSISTANT_MARKER = "no_assistant_marker"  # an HH dialogue without "\n\nAssistant:"
PROMPT_MISMATCH = "prompt_mismatch"  # an HH pair whose two dialogues have different prompts
EMPTY_RESPONSE = "empty_response"  # a chosen or rejected response that is empty or blank
EMPTY_PROMPT = "empty_prompt"  # a generic row whose prompt is empty or blank

HH_DROP_REASONS = (IDENTICAL, NO_ASSISTANT_MARKER, PROMPT_MISMATCH, EMPTY_RESPONSE)
JSONL_DROP_REASONS = (IDENTICAL, EMPTY_PROMPT, EMPTY_RESPONSE)


class PreferencePair(NamedTuple):
    """One kept pair of texts: the shared prompt, the two responses, the 1-based source line."""

    prompt: str
    chosen: str
    rejected: str
    line: int
    margin: float = 0.0


# --------------------------------------------------------------------------- reading


def split_hh_dialogue(text: str) -> tuple[str, str]:
    """``(prompt, response)`` of an HH-RLHF dialogue ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``.

    The prompt is everything up to and including the last ``"\\n\\nAssistant:"``; the response
    is the rest, without its single leading space. ``DataError`` if there is no such marker.
    """
    cut = text.rfind(HH_ASSISTANT_MARKER)
    if cut < 0:
        raise DataError(
            f"no {HH_ASSISTANT_MARKER!r} marker in the dialogue {_preview(text)}; HH-RLHF dialogues end with "
            "'\\n\\nAssistant: <response>'"
        )
    end_of_prompt = cut + len(HH_ASSISTANT_MARKER)
    response = text[end_of_prompt:]
    return text[:end_of_prompt], response.removeprefix(" ")


def hh_last_human_turn(prompt: str) -> str:
    """The text of the last ``"\n\nHuman:"`` turn of an HH-RLHF prompt (``split_hh_dialogue``'s
    first part), without the speaker label, the closing ``"\n\nAssistant:"`` or outer spaces.
    A prompt without a human turn gives its whole text before the marker, stripped."""
    body = prompt.removesuffix(HH_ASSISTANT_MARKER)
    start = body.rfind(HH_HUMAN_MARKER)
    return (body[start + len(HH_HUMAN_MARKER) :] if start >= 0 else body).strip()


def read_hh_pairs(path: str | os.PathLike) -> tuple[list[PreferencePair], dict[str, Any]]:
    """The valid pairs of an HH-RLHF file (``chosen``, ``rejected`` dialogues per line) and a
    report of what was kept and dropped.

    A row is dropped (and counted by reason) when its dialogues are identical, either lacks
    the ``"\\n\\nAssistant:"`` marker, their prompts differ, or a response is blank. Malformed
    JSON and missing or non-string fields raise ``DataError`` naming ``file:line``.
    """
    rows, _ = read_jsonl(path, fields=("chosen", "rejected"))
    counter = DropCounter(os.fspath(path), HH_DROP_REASONS)
    pairs = []
    for row in rows:
        pair, reason = _hh_pair(row["chosen"], row["rejected"], row.line)
        if reason:
            counter.drop(reason, row.line)
        else:
            counter.keep()
            pairs.append(pair)
    return pairs, counter.report()


def _hh_pair(chosen: str, rejected: str, line: int) -> tuple[PreferencePair | None, str | None]:
    """The pair of two HH dialogues, or ``None`` and the reason to drop them."""
    if chosen == rejected:
        return None, IDENTICAL
    if HH_ASSISTANT_MARKER not in chosen or HH_ASSISTANT_MARKER not in rejected:
        return None, NO_ASSISTANT_MARKER
    prompt, chosen_response = split_hh_dialogue(chosen)
    rejected_prompt, rejected_response = split_hh_dialogue(rejected)
    if prompt != rejected_prompt:
        return None, PROMPT_MISMATCH
    if not chosen_response.strip() or not rejected_response.strip():
        return None, EMPTY_RESPONSE
    return PreferencePair(prompt, chosen_response, rejected_response, line), None


def read_jsonl_pairs(path: str | os.PathLike) -> tuple[list[PreferencePair], dict[str, Any]]:
    """The valid pairs of a JSONL file of ``{prompt, chosen, rejected[, margin]}`` rows
    (``chosen``/``rejected`` are responses) and a report of what was kept and dropped.

    A row is dropped (and counted by reason) when ``chosen == rejected`` or the prompt or a
    response is blank. Malformed JSON, missing or non-string text fields and a ``margin`` that
    is not a finite number raise ``DataError`` naming ``file:line``.
    """
    path = os.fspath(path)
    rows, _ = read_jsonl(path, fields=("prompt", "chosen", "rejected"))
    counter = DropCounter(path, JSONL_DROP_REASONS)
    pairs = []
    for row in rows:
        margin = _margin(row.values, where=f"{path}:{row.line}")
        reason = _jsonl_drop_reason(row["prompt"], row["chosen"], row["rejected"])
        if reason:
            counter.drop(reason, row.line)
        else:
            counter.keep()
            pairs.append(PreferencePair(row["prompt"], row["chosen"], row["rejected"], row.line, margin))
    return pairs, counter.report()


def _jsonl_drop_reason(prompt: str, chosen: str, rejected: str) -> str | None:
    if chosen == rejected:
        return IDENTICAL
    if not prompt.strip():
        return EMPTY_PROMPT
    if not chosen.strip() or not rejected.strip():
        return EMPTY_RESPONSE
    return None


def _margin(values: dict[str, Any], where: str) -> float:
    """The row's optional ``margin`` (0.0 when absent), checked to be a finite number."""
    margin = values.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise DataError(
            f"{where}: field 'margin' must be a finite number (how strongly chosen is preferred), "
            f"got {margin!r}; fix the value or remove the field"
        )
    return float(margin)


class DropCounter:
    """Counts the rows of one file kept and dropped by reason, with the first few dropped lines."""

    def __init__(self, path: str, reasons: Sequence[str]):
        self.path = path
        self.kept = 0
        self.dropped = {reason: 0 for reason in reasons}
        self.dropped_lines: dict[str, list[int]] = {reason: [] for reason in reasons}

    def keep(self) -> None:
        """Count one kept row."""
        self.kept += 1

    def drop(self, reason: str, line: int) -> None:
        """Count one row dropped for ``reason`` (one of the reasons given at construction) at
        file line ``line``; the first ``MAX_REPORTED_LINES`` line numbers per reason are
        remembered."""
        self.dropped[reason] += 1
        if len(self.dropped_lines[reason]) < MAX_REPORTED_LINES:
            self.dropped_lines[reason].append(line)

    def report(self) -> dict[str, Any]:
        """``{"file", "rows", "kept", "dropped": {reason: count}, "dropped_lines": {reason:
        [first line numbers]}}``; every reason is listed, with 0 when nothing was dropped for it."""
        return {
            "file": self.path,
            "rows": self.kept + sum(self.dropped.values()),
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "dropped_lines": {reason: list(lines) for reason, lines in self.dropped_lines.items()},
        }


def _preview(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")


# --------------------------------------------------------------------------- tokenizing


@dataclasses.dataclass(frozen=True)
class FittedPreference:
    """A tokenized pair and what had to be cut to fit ``max_len``."""

    example: Example
    prompt_truncated: bool  # the prompt lost tokens at its start
    response_truncated: bool  # the chosen or rejected response lost its end (and its EOS)
    prompt_tokens: int = 0  # the whole prompt's token count, before any cut


def tokenize_preference(
    tokenizer: Tokenizer,
    prompt: str,
    chosen: str,
    rejected: str,
    max_len: int,
    margin: float = 0.0,
    where: str = "pair",
) -> Example:
    """The preference example of one pair of texts (see the module docstring for its fields).

    When prompt + response + EOS exceed ``max_len``, the start of the prompt is cut (keeping
    at least one prompt token, and the same prompt tokens for both responses), then a response
    still too long is cut at its end (it then has no EOS). ``where`` prefixes error messages.
    With ``ByteTokenizer`` a cut may split a multi-byte UTF-8 character (decoding shows U+FFFD).
    """
    return fit_preference(tokenizer, prompt, chosen, rejected, max_len, margin, where).example


def fit_preference(
    tokenizer: Tokenizer,
    prompt: str,
    chosen: str,
    rejected: str,
    max_len: int,
    margin: float = 0.0,
    where: str = "pair",
) -> FittedPreference:
    """``tokenize_preference``, also saying whether the prompt or a response was truncated."""
    if max_len < 2:
        raise DataError(f"max_len must be at least 2 (one prompt token and EOS), got {max_len}")
    prompt_ids = _encode(tokenizer, prompt, where, "prompt")
    if not prompt_ids:
        raise DataError(f"{where}: the prompt is empty; every pair needs at least one prompt token")
    chosen_ids = _encode(tokenizer, chosen, where, "chosen response") + [tokenizer.eos_id]
    rejected_ids = _encode(tokenizer, rejected, where, "rejected response") + [tokenizer.eos_id]
    fitted = fit_prompt_and_responses(prompt_ids, [chosen_ids, rejected_ids], max_len, where=where)
    chosen_ids, rejected_ids = fitted.responses
    example = {
        "chosen": _left_aligned(fitted.prompt + chosen_ids, max_len, tokenizer.eos_id),
        "rejected": _left_aligned(fitted.prompt + rejected_ids, max_len, tokenizer.eos_id),
        "prompt_len": np.int32(len(fitted.prompt)),
        "chosen_len": np.int32(len(chosen_ids)),
        "rejected_len": np.int32(len(rejected_ids)),
        "margin": np.float32(margin),
    }
    return FittedPreference(
        example,
        prompt_truncated=fitted.prompt_truncated,
        response_truncated=fitted.response_truncated,
        prompt_tokens=len(prompt_ids),
    )


def _left_aligned(ids: list[int], width: int, pad_id: int) -> np.ndarray:
    buffer = np.full(width, pad_id, np.int32)
    buffer[: len(ids)] = ids
    return buffer


def preference_features(max_len: int) -> tfds.features.FeaturesDict:
    """The TFDS features of a preference example."""
    sequence = tfds.features.Tensor(shape=(max_len,), dtype=np.int32)
    return tfds.features.FeaturesDict(
        {
            "chosen": sequence,
            "rejected": sequence,
            "prompt_len": tfds.features.Scalar(dtype=np.int32),
            "chosen_len": tfds.features.Scalar(dtype=np.int32),
            "rejected_len": tfds.features.Scalar(dtype=np.int32),
            "margin": tfds.features.Scalar(dtype=np.float32),
        }
    )


# --------------------------------------------------------------------------- tokenizers


def _byte_tokenizer(alphabet: str):
    from jirl.mdp.tokenizer import ByteTokenizer

    if alphabet:
        raise DataError("tokenizer='byte' takes no alphabet; drop alphabet=... or use tokenizer='char'")
    return ByteTokenizer()


def _char_tokenizer(alphabet: str):
    from jirl.mdp.tokenizer import CharTokenizer

    try:
        return CharTokenizer(alphabet)
    except ValueError as error:
        raise DataError(f"tokenizer='char' needs alphabet=... (the characters the texts use): {error}") from None


TOKENIZERS = {"byte": _byte_tokenizer, "char": _char_tokenizer}  # name -> factory(alphabet)


def make_tokenizer(name: str, alphabet: str = "", allowed: Sequence[str] = tuple(TOKENIZERS)) -> Tokenizer:
    """The tokenizer registered as ``name`` (``"byte"``, or ``"char"`` with an ``alphabet``)."""
    if name not in allowed:
        raise DataError(f"unknown tokenizer {name!r}; choose one of {list(allowed)}")
    return TOKENIZERS[name](alphabet)


# --------------------------------------------------------------------------- splitting


def assign_split(prompt: str, test_fraction: float, seed: int) -> str:
    """``"test"`` for a fraction ``test_fraction`` of prompts, else ``"train"``: a pure function
    of the prompt text and ``seed`` (a SHA-256 hash), so pairs sharing a prompt share a split."""
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode("utf-8")).digest()
    uniform = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if uniform < test_fraction else "train"


# --------------------------------------------------------------------------- builders


@dataclasses.dataclass(eq=False)
class JsonlPreferencesConfig(tfds.core.BuilderConfig):
    """How to tokenize the manual files (build it with ``JsonlPreferences.make_config``).

    ``fingerprint`` is a digest of the manual files' bytes, part of the config name, so that
    edited files get a new dataset directory instead of silently reusing stale data.
    """

    max_len: int = 512
    tokenizer: str = "byte"
    alphabet: str = ""
    fingerprint: str = ""


@dataclasses.dataclass(eq=False)
class HHPreferencesConfig(JsonlPreferencesConfig):
    """``JsonlPreferencesConfig`` plus the seeded train/test split of the one HH file."""

    test_fraction: float = 0.2
    seed: int = 0


class _PreferenceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What both preference builders share: config checks, features, tokenizing, the report.

    Subclasses set ``CONFIG_CLASS``, ``PARAMS`` and ``TOKENIZERS``, and implement
    ``split_files`` and ``_read_splits``. All pairs are tokenized in ``_split_generators``
    (before any is written) so that the report, with its truncation counts, is complete when
    TFDS saves the dataset info.
    """

    VERSION = tfds.core.Version("1.0.0")
    CONFIG_CLASS: type[JsonlPreferencesConfig] = JsonlPreferencesConfig
    PARAMS: tuple[str, ...] = ()
    TOKENIZERS: tuple[str, ...] = ()

    @classmethod
    def make_config(cls, manual_dir: str | os.PathLike, **params) -> JsonlPreferencesConfig:
        """A validated config for the files now in ``manual_dir`` (their digest is part of it)."""
        _reject_unknown(params, cls.PARAMS, cls.__name__)
        values = {f.name: f.default for f in dataclasses.fields(cls.CONFIG_CLASS) if f.name in cls.PARAMS}
        values.update(params)
        cls._check_values(values)
        make_tokenizer(values["tokenizer"], values.get("alphabet", ""), cls.TOKENIZERS)  # fail early
        values["fingerprint"] = _files_digest(cls.split_files(manual_dir).values())
        return cls.CONFIG_CLASS(
            name=_config_name(f"len{values['max_len']}", values),
            description=f"{cls.__name__} {json.dumps(values, sort_keys=True)}",
            **values,
        )

    @classmethod
    def _check_values(cls, values: dict[str, Any]) -> None:
        if not isinstance(values["max_len"], int) or values["max_len"] < 2:
            raise DataError(f"max_len must be an integer >= 2 (one prompt token and EOS), got {values['max_len']!r}")

    @classmethod
    def split_files(cls, manual_dir: str | os.PathLike) -> dict[str, Path]:
        """``{split: path}`` of the manual files this builder reads (each subclass says which)."""
        raise TypeError(f"{cls.__name__} must define split_files")

    def _read_splits(self, files: dict[str, Path]) -> tuple[dict[str, tuple[Path, list[PreferencePair]]], dict]:
        """``{split: (source file, kept pairs)}`` and the files' read reports keyed by file name."""
        raise TypeError(f"{type(self).__name__} must define _read_splits")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=type(self).__doc__,
            features=preference_features(self._config().max_len),
            metadata=tfds.core.MetadataDict(),  # holds the "report", saved as metadata.json
            disable_shuffling=True,  # keep file order within each split
        )

    def _split_generators(self, dl_manager):
        config = self._config()
        manual_dir = self._manual_dir(dl_manager)
        files = self.split_files(manual_dir)
        if config.fingerprint != _files_digest(files.values()):
            raise DataError(
                f"the files in {manual_dir} changed after this {type(self).__name__} config was made; "
                "make a new config (prepare(...) does so) so that the new data gets its own directory"
            )
        pairs_by_split, file_reports = self._read_splits(files)
        if not any(pairs for _, pairs in pairs_by_split.values()):
            raise DataError(
                f"{type(self).__name__}: every row of {sorted(file_reports)} in {manual_dir} was dropped "
                f"({_dropped_summary(file_reports)}); fix the files"
            )
        tokenizer = make_tokenizer(config.tokenizer, config.alphabet, self.TOKENIZERS)
        examples, split_reports, long_prompts = {}, {}, []
        for split, (path, pairs) in pairs_by_split.items():
            examples[split], split_reports[split], long = _fit_pairs(pairs, tokenizer, config.max_len, source=path)
            long_prompts += long
        file_order = {path: rank for rank, path in enumerate(files.values())}
        findings = {
            "duplicates": _duplicates_report(pairs_by_split, file_order),
            "long_prompts": _first_of(long_prompts, file_order),
        }
        self.info.metadata["report"] = _builder_report(file_reports, split_reports, config, findings)
        return {split: self._generate_examples(rows) for split, rows in examples.items() if rows}

    def _generate_examples(self, examples: list[Example]):
        return enumerate(examples)  # keys are row indices within the split, in file order

    def _config(self) -> JsonlPreferencesConfig:
        if not isinstance(self.builder_config, self.CONFIG_CLASS):
            name = type(self).__name__
            raise DataError(
                f"{name} needs a config; build it with prepare({name}, data_dir, manual_dir=..., max_len=...)"
            )
        return self.builder_config

    def _manual_dir(self, dl_manager) -> Path:
        try:
            return Path(dl_manager.manual_dir)
        except AssertionError as error:  # TFDS's way of saying the directory is missing or empty
            raise DataError(
                f"{type(self).__name__} cannot read its manual directory: {error}; pass manual_dir=... to prepare()"
            ) from None


def _fit_pairs(
    pairs: list[PreferencePair], tokenizer, max_len: int, source: Path
) -> tuple[list[Example], dict, list[tuple[Path, int]]]:
    """The examples of ``pairs`` (read from ``source``), ``{"pairs", "truncated",
    "prompt_truncated", "long_prompts"}`` counts, and ``(source, line)`` of each pair whose
    prompt alone has ``max_len`` tokens or more."""
    examples, truncated, prompt_truncated, long_prompts = [], 0, 0, []
    for pair in pairs:
        where = f"{source}:{pair.line}"
        fitted = fit_preference(tokenizer, pair.prompt, pair.chosen, pair.rejected, max_len, pair.margin, where)
        examples.append(fitted.example)
        truncated += fitted.response_truncated
        prompt_truncated += fitted.prompt_truncated
        if fitted.prompt_tokens >= max_len:
            long_prompts.append((source, pair.line))
    counts = {"pairs": len(examples), "truncated": truncated, "prompt_truncated": prompt_truncated,
              "long_prompts": len(long_prompts)}
    return examples, counts, long_prompts


def _location(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _first_of(places: list[tuple[Path, int]], file_order: dict[Path, int]) -> dict[str, Any]:
    """``{"count", "first"}`` of ``(file, line)`` places: ``first`` is the ``file:line`` that
    comes first in file order (None when there are none)."""
    first = min(places, key=lambda place: (file_order.get(place[0], len(file_order)), place[1]), default=None)
    return {"count": len(places), "first": _location(*first) if first else None}


def _duplicates_report(
    pairs_by_split: dict[str, tuple[Path, list[PreferencePair]]], file_order: dict[Path, int]
) -> dict[str, Any]:
    """``{"count", "first", "first_repeats"}``: how many kept pairs repeat an earlier pair (same
    prompt, chosen and rejected text; across all files, in file then line order), the
    ``file:line`` of the first repeat and of the pair it repeats (None when nothing repeats)."""
    located = sorted(
        ((path, pair) for path, pairs in pairs_by_split.values() for pair in pairs),
        key=lambda item: (file_order.get(item[0], len(file_order)), item[1].line),
    )
    seen: dict[tuple[str, str, str], tuple[Path, int]] = {}
    count, first, first_repeats = 0, None, None
    for path, pair in located:
        key = (pair.prompt, pair.chosen, pair.rejected)
        if key not in seen:
            seen[key] = (path, pair.line)
            continue
        count += 1
        if first is None:
            first, first_repeats = _location(path, pair.line), _location(*seen[key])
    return {"count": count, "first": first, "first_repeats": first_repeats}


def _dropped_summary(file_reports: dict[str, dict]) -> str:
    counts: collections.Counter[str] = collections.Counter()
    for report in file_reports.values():
        counts.update(report["dropped"])
    return ", ".join(f"{reason}: {count}" for reason, count in counts.items() if count)


def _builder_report(
    file_reports: dict[str, dict], split_reports: dict[str, dict], config, findings: dict[str, dict]
) -> dict[str, Any]:
    """Totals over the files and splits, with the per-file and per-split reports, and
    ``findings`` (``duplicates`` and ``long_prompts``: counts with the first ``file:line``)."""
    dropped: collections.Counter[str] = collections.Counter()
    for report in file_reports.values():
        dropped.update(report["dropped"])
    return {
        "rows": sum(report["rows"] for report in file_reports.values()),
        "kept": sum(report["kept"] for report in file_reports.values()),
        "dropped": dict(dropped),
        "truncated": sum(report["truncated"] for report in split_reports.values()),
        "prompt_truncated": sum(report["prompt_truncated"] for report in split_reports.values()),
        **findings,
        "max_len": config.max_len,
        "tokenizer": config.tokenizer,
        "files": file_reports,
        "splits": split_reports,
    }


class HHPreferences(_PreferenceBuilder):
    """Anthropic HH-RLHF preference pairs from ``pairs.jsonl[.gz]`` in the manual directory,
    byte-tokenized, split into ``train``/``test`` by a seeded hash of each pair's prompt."""

    RELEASE_NOTES = {"1.0.0": "Byte-tokenized HH-RLHF pairs with a prompt-hash train/test split."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put pairs.jsonl.gz (or pairs.jsonl) in the manual directory: one JSON object per line with "
        "string fields 'chosen' and 'rejected', whole '\\n\\nHuman: ...\\n\\nAssistant: ...' dialogues."
    )
    CONFIG_CLASS = HHPreferencesConfig
    PARAMS = ("max_len", "tokenizer", "test_fraction", "seed")
    TOKENIZERS = ("byte",)
    FILE_NAMES = ("pairs.jsonl.gz", "pairs.jsonl")

    @classmethod
    def _check_values(cls, values: dict[str, Any]) -> None:
        super()._check_values(values)
        if not 0 <= values["test_fraction"] < 1:
            raise DataError(f"test_fraction must be in [0, 1) (0 means no test split), got {values['test_fraction']}")
        if not 0 <= values["seed"] < 2**32:
            raise DataError(f"seed must be in [0, 2**32), got {values['seed']}")

    @classmethod
    def split_files(cls, manual_dir: str | os.PathLike) -> dict[str, Path]:
        """``{"all": path}`` of the pairs file in ``manual_dir``; ``DataError`` if it is missing."""
        candidates = [Path(manual_dir) / name for name in cls.FILE_NAMES]
        for path in candidates:
            if path.is_file():
                return {"all": path}
        raise DataError(
            f"HHPreferences expects {candidates[0]} (or {candidates[1].name}) but it is not there; "
            "pass manual_dir=... (the folder holding pairs.jsonl.gz) to prepare()"
        )

    def _read_splits(self, files):
        config = self._config()
        path = files["all"]
        pairs, report = read_hh_pairs(path)
        by_split: dict[str, list[PreferencePair]] = {"train": [], "test": []}
        for pair in pairs:
            by_split[assign_split(pair.prompt, config.test_fraction, config.seed)].append(pair)
        return {split: (path, split_pairs) for split, split_pairs in by_split.items()}, {path.name: report}


class JsonlPreferences(_PreferenceBuilder):
    """Preference pairs ``{prompt, chosen, rejected[, margin]}`` from ``train.jsonl[.gz]`` (and
    optional ``test.jsonl[.gz]``) in the manual directory, byte- or character-tokenized."""

    RELEASE_NOTES = {"1.0.0": "Tokenized prompt/chosen/rejected pairs from local JSONL files."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put train.jsonl (and optionally test.jsonl; .jsonl.gz also works) in the manual directory: one JSON "
        "object per line with string fields 'prompt', 'chosen', 'rejected' and an optional number 'margin'."
    )
    CONFIG_CLASS = JsonlPreferencesConfig
    PARAMS = ("max_len", "tokenizer", "alphabet")
    TOKENIZERS = ("byte", "char")
    SPLIT_FILES = {"train": True, "test": False}  # split -> required

    @classmethod
    def split_files(cls, manual_dir: str | os.PathLike) -> dict[str, Path]:
        """The JSONL file of each split present in ``manual_dir``; ``DataError`` naming the
        expected path when the required ``train`` file is missing."""
        found = {}
        for split, required in cls.SPLIT_FILES.items():
            candidates = [Path(manual_dir) / f"{split}.jsonl", Path(manual_dir) / f"{split}.jsonl.gz"]
            present = [path for path in candidates if path.is_file()]
            if present:
                found[split] = present[0]
            elif required:
                raise DataError(
                    f"JsonlPreferences expects {candidates[0]} (or {candidates[1].name}) but it is not there; "
                    "put your training pairs in that file or pass manual_dir=... to prepare()"
                )
        return found

    def _read_splits(self, files):
        by_split, reports = {}, {}
        for split, path in files.items():
            pairs, reports[path.name] = read_jsonl_pairs(path)
            by_split[split] = (path, pairs)
        return by_split, reports


def preference_report(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
    """What a prepared preference dataset kept, dropped (by reason) and truncated.

    ``{"rows", "kept", "dropped": {reason: count}, "truncated", "prompt_truncated",
    "duplicates": {"count", "first", "first_repeats"}, "long_prompts": {"count", "first"},
    "max_len", "tokenizer", "files": {file name: read report}, "splits": {split: {"pairs",
    "truncated", "prompt_truncated", "long_prompts"}}}``.

    ``truncated`` counts pairs whose chosen or rejected response was cut; ``duplicates`` the kept
    pairs repeating an earlier pair's prompt, chosen and rejected text (in any of the files;
    ``first`` is the ``file:line`` of the first repeat, ``first_repeats`` that of the pair it
    repeats); ``long_prompts`` the pairs whose prompt alone has ``max_len`` tokens or more
    (``first``: the first one's ``file:line``). Each ``first`` is None when the count is 0.
    """
    if not isinstance(builder, _PreferenceBuilder):
        raise DataError(
            f"{type(builder).__name__} is not a preference builder; pass an HHPreferences or JsonlPreferences"
        )
    metadata = builder.info.metadata
    if metadata is None or "report" not in metadata.keys():
        raise DataError(
            f"dataset {builder.info.full_name} has no preference report in {builder.data_dir}; "
            "prepare it first (jirl.data.builders.prepare)"
        )
    return metadata["report"]


def decode_pair(tokenizer, example: Example) -> dict[str, str]:
    """The ``prompt``, ``chosen`` and ``rejected`` texts of a preference example (responses
    without their EOS), for inspection and tests."""
    prompt_len = int(example["prompt_len"])
    texts = {"prompt": tokenizer.decode(example["chosen"][:prompt_len], stop_at_eos=False)}
    for name in ("chosen", "rejected"):
        response = example[name][prompt_len : prompt_len + int(example[f"{name}_len"])]
        texts[name] = tokenizer.decode(response)
    return texts


__all__ = [
    "HHPreferences",
    "JsonlPreferences",
    "PreferencePair",
    "assign_split",
    "decode_pair",
    "fit_preference",
    "make_tokenizer",
    "preference_features",
    "preference_report",
    "read_hh_pairs",
    "read_jsonl_pairs",
    "split_hh_dialogue",
    "tokenize_preference",
]
