"""User text data (any layout ``jirl.data.formats.read_rows`` reads) as tokenized TFDS datasets.

``prepare_text_dataset(kind, data, tokenizer=..., tokenization=..., data_dir=...)`` reads the rows,
splits them into ``train`` and ``eval``, tokenizes them with the model's tokenizer and chat
template (``jirl.data.chat_tokenize``) and writes them as ``array_record`` files, once::

    dataset = prepare_text_dataset("preference", "pairs.jsonl", tokenizer=tokenizer,
                                   tokenization=ChatTokenization(max_len=512), data_dir="data")
    batches = batch_iterator(dataset.train, batch_size=16, seed=0)

Identity: the dataset directory ``data_dir/jirl_text/<kind>-<digest>/<version>`` is named by a
digest of what decides its records and report: the canonical rows' content (roles and texts, in
order; not the file layout or the rows' ``where``), the read reports (rows read, drops and the
first place of each drop), the tokenizer (``tokenizer_digest``), the tokenization settings and
the split settings. So the same conversations given as JSONL, Parquet or a ``datasets.Dataset``
share one build, a second call reuses it, and any change to the data, tokenizer or settings
builds a new directory beside the old one (nothing is overwritten).

Split: with ``eval_data`` its rows are the ``eval`` split; else a fraction ``eval_fraction`` of the
*prompts* (a seeded hash of each prompt's turns, ``jirl.data.preferences.assign_split``) goes to
``eval``, so every row sharing a prompt lands in the same split.

Records (fixed shapes, ``max_len`` wide, left-aligned and padded with EOS):

- ``preference``: ``chosen``, ``rejected``, ``prompt_len``, ``chosen_len``, ``rejected_len``, ``margin``;
- ``sft``: ``tokens``, ``prompt_len``, ``response_len``, ``loss_mask``;
- ``unpaired``: ``tokens``, ``prompt_len``, ``response_len``, ``label`` (1 desirable);
- ``prompt``: ``tokens``, ``prompt_len``, ``response_len`` (0).

Every row is tokenized on the host before anything is written, so a row the tokenizer refuses
stops the build with a ``DataError`` naming its ``file:line`` and leaves ``data_dir`` as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jirl.config import JirlError
from jirl.data.builders import (
    FILE_FORMAT,
    _config_name,
    _quiet_tfds,
    data_source,
    example_features,
    remove_unfinished_builds,
)
from jirl.data.chat_tokenize import (
    ChatTokenization,
    Tokenized,
    check_eos,
    tokenize_preference_row,
    tokenize_prompt_row,
    tokenize_sft_row,
    tokenize_unpaired_row,
)
from jirl.data.conversations import ROW_KINDS, SftRow
from jirl.data.errors import DataError
from jirl.data.examples import Example
from jirl.data.formats import Row, RowReport, read_rows
from jirl.data.preferences import assign_split, preference_features

# Bump when the records written for the same rows and settings change (tokenization code),
# so that old builds are not reused for new code.
RECORD_FORMAT = 2  # 2: with max_prompt_len the prompt keeps its budget (TRL order)

SPLITS = ("train", "eval")

TOKENIZE = {
    "preference": tokenize_preference_row,
    "sft": tokenize_sft_row,
    "unpaired": tokenize_unpaired_row,
    "prompt": tokenize_prompt_row,
}


@dataclasses.dataclass
class TextDataset:
    """A prepared text dataset: random-access ``train`` and ``eval`` examples (``ExampleSource``
    over the ``array_record`` files; ``eval`` is empty only when ``eval_fraction`` is 0 and no
    ``eval_data`` was given), the JSON-able ``report`` and the row ``kind``."""

    train: Sequence[Example]
    eval: Sequence[Example]
    report: dict
    kind: str


# --------------------------------------------------------------------------- checks


def tokenizer_digest(tokenizer: Any) -> str:
    """A short stable hash (16 hex digits) of everything about ``tokenizer`` that decides token
    ids: its whole serialized model (vocabulary, merges, normalizer, pre-tokenizer, added and
    special tokens) for a Hugging Face backed ``Tokenizer``, else its class and attributes; plus
    the BOS/EOS/pad tokens and ids and the chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend", None)
    if backend is not None and hasattr(backend, "to_str"):
        digest.update(backend.to_str().encode("utf-8"))
    else:
        cls = type(tokenizer)
        state = {key: value for key, value in vars(tokenizer).items()} if hasattr(tokenizer, "__dict__") else {}
        digest.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        digest.update(json.dumps(state, sort_keys=True, default=repr).encode("utf-8"))
    specials = {
        name: getattr(tokenizer, name, None)
        for name in ("bos_token", "eos_token", "pad_token", "bos_id", "eos_id", "pad_id", "vocab_size", "chat_template")
    }
    digest.update(json.dumps(specials, sort_keys=True, default=repr).encode("utf-8"))
    return digest.hexdigest()[:16]


def check_tokenizer_fits(tokenizer: Any, vocab_size: int) -> None:
    """``DataError`` unless every id of ``tokenizer`` has a row in a model embedding of
    ``vocab_size`` rows (a model vocabulary padded beyond the tokenizer's is fine)."""
    from jirl.models.tokenizers import check_vocab_matches

    try:
        check_vocab_matches(tokenizer, vocab_size, allow_padding=True)
    except JirlError as error:
        raise DataError(
            f"{error} Token ids up to {tokenizer.vocab_size - 1} would index past the model's embedding; "
            "use the tokenizer that belongs to the model (the same checkpoint or GGUF file)"
        ) from None


def check_context(tokenization: ChatTokenization, context: int | None) -> None:
    """``DataError`` when records of ``tokenization.max_len`` tokens would not fit the model's context."""
    if context is not None and tokenization.max_len > context:
        raise DataError(
            f"max_len {tokenization.max_len} is larger than the model's context of {context} tokens; "
            f"set max_len to at most {context} (ChatTokenization(max_len={context}, ...))"
        )


def _check_arguments(kind: str, tokenization: Any, eval_fraction: float, seed: int) -> None:
    if kind not in ROW_KINDS:
        raise DataError(f"kind must be one of {', '.join(map(repr, ROW_KINDS))}, got {kind!r}")
    if not isinstance(tokenization, ChatTokenization):
        raise DataError(
            f"tokenization must be a jirl.data.chat_tokenize.ChatTokenization, got {type(tokenization).__name__}"
        )
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float)) or not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction must be a number in [0, 1) (0: no eval split), got {eval_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise DataError(f"seed must be an integer in [0, 2**32), got {seed!r}")


# --------------------------------------------------------------------------- splitting


def prompt_key(row: Row) -> str:
    """The turns a row replies to, as canonical JSON: rows with equal keys share a split. For
    SFT rows, the turns before the first assistant reply."""
    if isinstance(row, SftRow):
        first_reply = next(i for i, message in enumerate(row.messages) if message["role"] == "assistant")
        prompt = row.messages[:first_reply]
    else:
        prompt = row.prompt
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def split_by_prompt(rows: Sequence[Row], eval_fraction: float, seed: int) -> dict[str, list[Row]]:
    """``{"train": rows, "eval": rows}``: a fraction ``eval_fraction`` of the distinct prompts
    (chosen by a seeded hash of each prompt) goes to ``eval``, in the rows' order."""
    splits: dict[str, list[Row]] = {"train": [], "eval": []}
    for row in rows:
        split = assign_split(prompt_key(row), eval_fraction, seed)
        splits["eval" if split == "test" else "train"].append(row)
    return splits


def _check_splits(splits: dict[str, list[Row]], eval_fraction: float, split_by_fraction: bool) -> None:
    """``DataError`` for an empty ``train`` split, or an empty ``eval`` split that was asked for."""
    prompts = len({prompt_key(row) for rows in splits.values() for row in rows})
    if not splits["train"]:
        raise DataError(
            f"the train split is empty: all {prompts} distinct prompts fell into the eval fraction "
            f"{eval_fraction}; lower eval_fraction or pass eval_data"
        )
    if split_by_fraction and eval_fraction > 0 and not splits["eval"]:
        raise DataError(
            f"the eval split is empty: none of the {prompts} distinct prompts fell into the eval fraction "
            f"{eval_fraction} (rows sharing a prompt share a split); raise eval_fraction, pass eval_data, "
            "or set eval_fraction=0 for no eval split"
        )


# --------------------------------------------------------------------------- identity


def rows_digest(rows: Iterable[Row]) -> str:
    """A digest of the rows' content (kind, turns, replies, margins, labels, in order), leaving out
    what does not decide the records: ``where``, ``conversational`` and a prompt row's ``extra``."""
    digest = hashlib.sha256()
    for row in rows:
        content = {
            field.name: getattr(row, field.name)
            for field in dataclasses.fields(row)
            if field.name not in ("where", "conversational", "extra")
        }
        content["type"] = type(row).__name__
        digest.update(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def _settings(kind: str, tokenization: ChatTokenization, eval_fraction: float, seed: int,
              has_eval_data: bool) -> dict[str, Any]:
    """The settings that decide the records (the split ones only where they apply)."""
    settings = {"kind": kind, "record_format": RECORD_FORMAT, **dataclasses.asdict(tokenization)}
    if has_eval_data:
        settings["eval"] = "eval_data"
    else:
        settings.update(eval="fraction", eval_fraction=float(eval_fraction), seed=seed)
    return settings


def _read_report(report: RowReport) -> dict[str, Any]:
    return {"rows_read": report.rows_read, "kept": report.kept, "dropped": dict(report.dropped),
            "first": dict(report.first)}


# --------------------------------------------------------------------------- tokenizing


def tokenize_rows(kind: str, rows: Sequence[Row], tokenizer: Any,
                  tokenization: ChatTokenization) -> tuple[list[Example], dict[str, Any]]:
    """The examples of ``rows`` and their counts: ``examples``, ``prompts`` (distinct),
    ``prompt_truncated``, ``response_truncated``, and mean/max of ``prompt_tokens`` (the whole
    prompt, before any cut) and ``response_tokens`` (each response's tokens kept, EOS included;
    both responses of a preference pair)."""
    tokenize = TOKENIZE[kind]
    examples, prompt_tokens, response_tokens = [], [], []
    prompt_truncated = response_truncated = 0
    for row in rows:
        tokenized: Tokenized = tokenize(row, tokenizer, tokenization)
        examples.append(tokenized.example)
        prompt_truncated += tokenized.prompt_truncated
        response_truncated += tokenized.response_truncated
        prompt_tokens.append(tokenized.prompt_tokens)
        response_tokens += _response_lengths(kind, tokenized.example)
    counts = {
        "examples": len(examples),
        "prompts": len({prompt_key(row) for row in rows}),
        "prompt_truncated": prompt_truncated,
        "response_truncated": response_truncated,
        "prompt_tokens": _mean_max(prompt_tokens),
        "response_tokens": _mean_max(response_tokens),
    }
    return examples, counts


def _response_lengths(kind: str, example: Example) -> list[int]:
    if kind == "preference":
        return [int(example["chosen_len"]), int(example["rejected_len"])]
    return [int(example["response_len"])]


def _mean_max(values: Sequence[int]) -> dict[str, float | int]:
    if not values:
        return {"mean": 0.0, "max": 0}
    return {"mean": round(float(np.mean(values)), 2), "max": int(max(values))}


# --------------------------------------------------------------------------- the TFDS builder


@dataclasses.dataclass(eq=False)
class JirlTextConfig(tfds.core.BuilderConfig):
    """Which records a ``JirlText`` build holds: the row kind and the buffer width (the rest of
    its identity is the digest in its name)."""

    kind: str = "sft"
    max_len: int = 512


def text_features(kind: str, max_len: int) -> tfds.features.FeaturesDict:
    """The TFDS features of the records of ``kind`` (see the module docstring)."""
    if kind == "preference":
        return preference_features(max_len)
    features = dict(example_features(max_len).items())
    if kind == "sft":
        features["loss_mask"] = tfds.features.Tensor(shape=(max_len,), dtype=np.int32)
    elif kind == "unpaired":
        features["label"] = tfds.features.Scalar(dtype=np.int32)
    return tfds.features.FeaturesDict(features)


class JirlText(tfds.core.GeneratorBasedBuilder):
    """Tokenized text rows (preference pairs, SFT conversations, judged replies or RL prompts) in
    ``train`` and ``eval`` splits, in row order; built by ``prepare_text_dataset``, which hands
    the examples in (``examples``) before ``download_and_prepare``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Chat-templated token records of user text data."}

    # Set by prepare_text_dataset on the instance it builds with.
    examples: dict[str, list[Example]] | None = None
    report: dict[str, Any] | None = None

    def _info(self) -> tfds.core.DatasetInfo:
        config = self._config()
        return tfds.core.DatasetInfo(
            builder=self,
            description=type(self).__doc__,
            features=text_features(config.kind, config.max_len),
            metadata=tfds.core.MetadataDict(),  # holds the "report", saved as metadata.json
            disable_shuffling=True,  # row i of a split is its i-th row in source order
        )

    def _split_generators(self, dl_manager):
        if self.examples is None:
            raise DataError(
                "JirlText is built by jirl.data.text_datasets.prepare_text_dataset, which gives it the rows"
            )
        self.info.metadata["report"] = self.report
        return {split: self._generate_examples(examples) for split, examples in self.examples.items() if examples}

    def _generate_examples(self, examples: list[Example]):
        return enumerate(examples)  # keys are row indices within the split

    def _config(self) -> JirlTextConfig:
        if not isinstance(self.builder_config, JirlTextConfig):
            raise DataError("JirlText needs a config; build it with jirl.data.text_datasets.prepare_text_dataset")
        return self.builder_config


def _is_built(builder: JirlText) -> bool:
    return (Path(builder.data_dir) / "dataset_info.json").is_file()


# --------------------------------------------------------------------------- prepare


def prepare_text_dataset(
    kind: str,
    data: Any,
    *,
    tokenizer: Any,
    tokenization: ChatTokenization,
    data_dir: str | os.PathLike,
    eval_data: Any = None,
    eval_fraction: float = 0.1,
    seed: int = 0,
    columns: Mapping[str, str] | None = None,
    console: Any = None,
    context: int | None = None,
    vocab_size: int | None = None,
) -> TextDataset:
    """Read, split, tokenize and write ``data`` (and ``eval_data``) as a ``TextDataset`` of
    ``kind`` under ``data_dir``, reusing an earlier build of the same content and settings.

    ``data``/``eval_data``: anything ``read_rows`` reads (a path to ``.jsonl[.gz]``,
    ``.json[.gz]`` or ``.parquet``, a ``save_to_disk`` folder, a ``datasets.Dataset``);
    ``columns`` renames their fields. Without ``eval_data``, ``eval_fraction`` of the prompts
    (seeded by ``seed``) form the eval split. ``context`` (the model's context length) and
    ``vocab_size`` (its embedding rows), when given, are checked against ``max_len`` and the
    tokenizer. ``console`` (e.g. a ``rich.console.Console``) gets a short summary.

    The ``report`` (also saved beside the records, in ``metadata.json``): ``kind``, ``config``
    (the build's name), ``tokenizer`` (``tokenizer_digest``), ``settings``; ``read``: per source
    (``data``, and ``eval_data`` when given) ``rows_read``, ``kept``, ``dropped`` {reason: count}
    and ``first`` {reason: "file:line"}; ``splits``: per split (``train``, ``eval``) ``examples``,
    ``prompts`` (distinct), ``prompt_truncated``, ``response_truncated`` (counts) and
    ``prompt_tokens`` / ``response_tokens`` {``mean``, ``max``} (the prompt before any cut; each
    response as kept, EOS included); ``eval_prompts_in_train``; and, for this call, ``path``
    (the build's folder) and ``reused``.

    Raises ``DataError`` (naming the problem, the fix and, for rows, the first ``file:line``)
    when no row is left after filtering, a split is empty, the tokenizer has no EOS or does not
    fit the model, ``max_len`` exceeds ``context``, or a row cannot be tokenized; nothing is
    written then.
    """
    _check_arguments(kind, tokenization, eval_fraction, seed)
    check_eos(tokenizer)
    check_context(tokenization, context)
    if vocab_size is not None:
        check_tokenizer_fits(tokenizer, vocab_size)

    rows, data_report = read_rows(data, kind, columns=columns)
    read_reports = {"data": _read_report(data_report)}
    if eval_data is not None:
        eval_rows, eval_report = read_rows(eval_data, kind, columns=columns)
        read_reports["eval_data"] = _read_report(eval_report)
        splits = {"train": rows, "eval": eval_rows}
    else:
        splits = split_by_prompt(rows, eval_fraction, seed)
    _check_splits(splits, eval_fraction, split_by_fraction=eval_data is None)

    settings = _settings(kind, tokenization, eval_fraction, seed, eval_data is not None)
    identity = {
        "settings": settings,
        "tokenizer": tokenizer_digest(tokenizer),
        "rows": {split: rows_digest(split_rows) for split, split_rows in splits.items()},
        "read": read_reports,
    }
    config = JirlTextConfig(name=_config_name(kind, identity), description=json.dumps(identity, sort_keys=True),
                            kind=kind, max_len=tokenization.max_len)
    with _quiet_tfds():  # no "custom data configuration" warning
        builder = JirlText(config=config, data_dir=os.fspath(data_dir), file_format=FILE_FORMAT)
    reused = _is_built(builder)
    if not reused:
        builder = _build(builder, splits, tokenizer, tokenization, identity, read_reports)
    report = {**builder.info.metadata["report"], "path": os.fspath(builder.data_dir), "reused": reused}
    dataset = TextDataset(
        train=data_source(builder, "train"),
        eval=data_source(builder, "eval") if "eval" in builder.info.splits else [],
        report=report,
        kind=kind,
    )
    if console is not None:
        from rich.text import Text

        console.print(Text(summary(report)))  # Text: a path such as "runs[bold]/d.jsonl" is not markup
    return dataset


def _build(builder: JirlText, splits: dict[str, list[Row]], tokenizer: Any, tokenization: ChatTokenization,
           identity: dict[str, Any], read_reports: dict[str, Any]) -> JirlText:
    """Tokenize every split (errors stop here, before anything is written), then write them."""
    kind = builder.builder_config.kind
    examples, counts = {}, {}
    for split, split_rows in splits.items():
        examples[split], counts[split] = tokenize_rows(kind, split_rows, tokenizer, tokenization)
    report = {
        "kind": kind,
        "config": builder.builder_config.name,
        "tokenizer": identity["tokenizer"],
        "settings": identity["settings"],
        "read": read_reports,
        "splits": counts,
        "eval_prompts_in_train": _shared_prompts(splits),
    }
    builder.examples, builder.report = examples, report
    remove_unfinished_builds(builder)
    with _quiet_tfds():
        builder.download_and_prepare()
    return builder


def _shared_prompts(splits: dict[str, list[Row]]) -> int:
    """How many distinct eval prompts also occur in train (0 for a split by prompt; with
    ``eval_data``, the eval rows that the training data already answers)."""
    train_prompts = {prompt_key(row) for row in splits["train"]}
    return len({prompt_key(row) for row in splits["eval"]} & train_prompts)


def summary(report: Mapping[str, Any]) -> str:
    """A few lines for a console: the rows read, kept and dropped (with the first place of each
    drop), the examples per split with truncations and token lengths, and where the build is."""
    lines = []
    for source, read in report["read"].items():
        drops = "; ".join(f"{reason} {count} (first at {read['first'][reason]})"
                          for reason, count in read["dropped"].items())
        lines.append(f"{source}: read {read['rows_read']} rows, kept {read['kept']}"
                     + (f", dropped {drops}" if drops else ""))
    for split, counts in report["splits"].items():
        lines.append(
            f"{split}: {counts['examples']} {report['kind']} examples, {counts['prompts']} prompts; truncated: "
            f"{counts['prompt_truncated']} prompts, {counts['response_truncated']} responses; tokens: prompt mean "
            f"{counts['prompt_tokens']['mean']} max {counts['prompt_tokens']['max']}, response mean "
            f"{counts['response_tokens']['mean']} max {counts['response_tokens']['max']}"
        )
    if report.get("eval_prompts_in_train"):
        lines.append(f"warning: {report['eval_prompts_in_train']} eval prompts also occur in the training data")
    lines.append(f"{'reused' if report.get('reused') else 'built'} {report.get('path', report['config'])}")
    return "\n".join(lines)


__all__ = [
    "JirlText",
    "TextDataset",
    "check_context",
    "check_tokenizer_fits",
    "prepare_text_dataset",
    "prompt_key",
    "rows_digest",
    "split_by_prompt",
    "summary",
    "text_features",
    "tokenize_rows",
    "tokenizer_digest",
]
