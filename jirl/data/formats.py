"""Reading user data files, in the layouts researchers have, into validated canonical rows.

``read_rows(source, kind)`` returns the rows of ``kind`` ("preference", "sft", "unpaired",
"prompt"; the dataclasses of ``jirl.data.conversations``) and a ``RowReport``.

Sources: a path to ``.jsonl`` / ``.jsonl.gz`` (one object a line), ``.json`` / ``.json.gz``
(one top-level array of row objects), ``.parquet``, a folder written by
``datasets.Dataset.save_to_disk`` (needs the optional ``datasets`` package), or a
``datasets.Dataset`` object (anything with ``__len__``, ``column_names`` and ``__getitem__``
giving dicts). Each row's ``where`` is ``path:line`` (JSONL and JSON: the line the row's object
starts on), ``path:row N`` (Parquet, 1-based), ``path[N]`` (saved folder) or ``dataset[N]``
(object; both 0-based, as ``dataset[N]`` indexes it).

The layout is detected per row from its fields (TRL's dataset formats and ShareGPT); see
``LAYOUTS``. ``columns={"prompt": "question"}`` renames source fields to the layouts' names.
Fields that are null count as absent (columnar files pad missing fields with nulls), though
``PromptRow.extra`` keeps them.

Validation: a *structural* problem (invalid JSON, a row that is not an object, no layout
matching, a field of the wrong type, an unknown role, a label that is not a boolean, a message
without content) raises ``DataError`` naming ``where``. A *content* problem (``DROP_REASONS``)
drops the row; the report counts drops per reason with the first ``where`` of each.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Callable

from jirl.data.conversations import ROLES, ROW_KINDS, Message, PreferenceRow, PromptRow, SftRow, UnpairedRow
from jirl.data.errors import DataError
from jirl.data.jsonl import _UNDECODED_BYTE, _check_utf8, _numbered_lines, _open_text, _parse_object

Row = PreferenceRow | SftRow | UnpairedRow | PromptRow

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")

EMPTY_PROMPT = "empty prompt"
EMPTY_RESPONSE = "empty response"
CHOSEN_EQUALS_REJECTED = "chosen equals rejected"
PROMPTS_DIFFER = "prompts differ"
DROP_REASONS = (EMPTY_PROMPT, EMPTY_RESPONSE, CHOSEN_EQUALS_REJECTED, PROMPTS_DIFFER)

LAYOUTS = {
    "preference": (
        "{prompt, chosen, rejected} as strings (TRL standard, optional margin)",
        "{prompt, chosen, rejected} as lists of messages (TRL conversational)",
        "{chosen, rejected} as lists of messages holding whole conversations (TRL implicit prompt)",
        "{conversations, chosen, rejected} (ShareGPT, optional system)",
    ),
    "sft": (
        "{prompt, completion} as strings or as lists of messages (TRL)",
        "{messages} (a list of messages)",
        "{conversations} (ShareGPT, optional system)",
    ),
    "unpaired": (
        "{prompt, completion, label} as strings or as lists of messages, label a boolean (TRL)",
        "{messages, label} with the assistant's reply last (LLaMA-Factory KTO)",
        "{conversations, kto_tag} with the reply last (ShareGPT); 'label' and 'kto_tag' name the same field",
    ),
    "prompt": ("{prompt} as a string or a list of messages ending with a user turn; other fields go to extra",),
}

# ShareGPT speakers ("from") and the roles they become.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

# JSON's insignificant whitespace (json.JSONDecoder.raw_decode does not skip it).
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


@dataclasses.dataclass(frozen=True)
class RowReport:
    """What ``read_rows`` read: rows read, rows kept, rows dropped per reason and the ``where``
    of the first row dropped for each reason."""

    rows_read: int
    kept: int
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    first: dict[str, str] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """One line, e.g. ``read 3 rows, kept 2, dropped 1 (empty prompt: 1 row, first at d.jsonl:2)``."""
        if not self.dropped:
            return f"read {self.rows_read} rows, kept all {self.kept}"
        drops = "; ".join(
            f"{reason}: {count} row{'s' if count > 1 else ''}, first at {self.first[reason]}"
            for reason, count in self.dropped.items()
        )
        return f"read {self.rows_read} rows, kept {self.kept}, dropped {self.rows_read - self.kept} ({drops})"


class _Dropped(Exception):
    """A content problem found while building a row (the row is dropped, not an error)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def read_rows(source: Any, kind: str, *, columns: Mapping[str, str] | None = None) -> tuple[list[Row], RowReport]:
    """The valid rows of ``kind`` in ``source`` (see the module docstring) and a ``RowReport``.

    ``columns`` maps a layout's field name to the source's (``{"prompt": "question"}``).
    Raises ``DataError`` on a structural problem, naming the row, and when no row is left.
    """
    if kind not in ROW_KINDS:
        raise DataError(f"kind must be one of {', '.join(map(repr, ROW_KINDS))}, got {kind!r}")
    renames = _checked_columns(columns)
    name, records = _read_records(source)
    records = [(where, _as_object(value, where)) for where, value in records]
    records = _renamed(records, renames, name)
    convert = _CONVERTERS[kind]
    rows, dropped, first = [], {}, {}
    for where, record in records:
        try:
            row = convert(record, where)
            reason = _drop_reason(row)
        except _Dropped as drop:
            reason = drop.reason
        if reason is None:
            rows.append(row)
        else:
            dropped[reason] = dropped.get(reason, 0) + 1
            first.setdefault(reason, where)
    report = RowReport(rows_read=len(records), kept=len(rows), dropped=dropped, first=first)
    if not records:
        raise DataError(f"{name}: no rows (the source is empty); give at least one row object")
    if not rows:
        raise DataError(f"{name}: no usable {kind} rows: {report.summary()}; fix or remove these rows")
    return rows, report


# ---- sources -> (where, value) records


def _read_records(source: Any) -> tuple[str, list[tuple[str, Any]]]:
    """The source's name (for messages) and its ``(where, value)`` records, in order."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return path, _path_records(path)
    if _looks_like_dataset(source):
        if isinstance(source.column_names, dict):  # a DatasetDict: column names per split
            raise DataError(
                f"source is a DatasetDict with splits {sorted(source.column_names)}; pass one split, "
                "e.g. dataset['train']"
            )
        return "dataset", _dataset_records(source, "dataset")
    raise DataError(f"source must be a path (str or Path) or a datasets.Dataset, got {type(source).__name__}")


def _path_records(path: str) -> list[tuple[str, Any]]:
    if not os.path.exists(path):
        raise DataError(f"data file not found: {path} (working directory {os.getcwd()}); check the path")
    if os.path.isdir(path):
        return _saved_dataset_records(path)
    lowered = path.lower()
    if lowered.endswith((".jsonl", ".jsonl.gz")):
        return _jsonl_records(path)
    if lowered.endswith((".json", ".json.gz")):
        return _json_array_records(path)
    if lowered.endswith(".parquet"):
        return _parquet_records(path)
    raise DataError(
        f"{path}: unknown file type; jirl reads {', '.join(SUFFIXES)} files and folders written by "
        "datasets.Dataset.save_to_disk; convert the file or rename it if it is one of these"
    )


def _jsonl_records(path: str) -> list[tuple[str, Any]]:
    records = []
    for line_number, text in _numbered_lines(path):
        _check_utf8(text, path, line_number)
        if text.strip():
            where = f"{path}:{line_number}"
            records.append((where, _parse_object(text, where)))
    return records


def _json_array_records(path: str) -> list[tuple[str, Any]]:
    """The elements of the top-level JSON array in ``path``, each with the line it starts on."""
    text = _read_text(path)
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if not text.startswith("[", position):
        raise _not_an_array(text, path)
    position = _skip_space(text, position + 1)
    records: list[tuple[str, Any]] = []
    line, counted_to = 1, 0
    while not (text.startswith("]", position) and not records):  # "]" right after "[": an empty array
        # Count newlines incrementally: recounting from the start would be quadratic.
        line += text.count("\n", counted_to, position)
        counted_to = position
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:  # also a trailing comma: "Expecting value" at the "]"
            raise _invalid_json(error, path) from None
        records.append((f"{path}:{line}", value))
        position = _skip_space(text, end)
        if text.startswith("]", position):
            break
        if not text.startswith(",", position):
            raise _invalid_json(
                json.JSONDecodeError("Expecting ',' or ']' after an array element", text, position), path
            )
        position = _skip_space(text, position + 1)
    end = _skip_space(text, position + 1)
    if end < len(text):
        raise _invalid_json(json.JSONDecodeError("Extra data after the array", text, end), path)
    return records


def _read_text(path: str) -> str:
    """The whole (optionally gzipped) UTF-8 text of ``path``; a bad byte is reported by line."""
    try:
        with _open_text(path) as file:
            text = file.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError; a cut-off gzip is an EOFError
        raise DataError(f"{path}: cannot read the file ({error}); name it .json if it is not gzip-compressed") from None
    bad = _UNDECODED_BYTE.search(text)
    if bad is not None:
        start = text.rfind("\n", 0, bad.start()) + 1
        end = text.find("\n", bad.start())
        _check_utf8(text[start : end if end >= 0 else None], path, text.count("\n", 0, start) + 1)
    return text


def _skip_space(text: str, position: int) -> int:
    return _JSON_SPACE.match(text, position).end()


def _invalid_json(error: json.JSONDecodeError, path: str) -> DataError:
    return DataError(
        f"{path}:{error.lineno}: invalid JSON ({error.msg} at column {error.colno}); "
        "a .json file must hold one JSON array of row objects"
    )


def _not_an_array(text: str, path: str) -> DataError:
    """The error for a .json file whose top-level value is not an array, saying what it is."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":
            return DataError(
                f"{path}:{error.lineno}: a second JSON value follows the first; a .json file holds one array "
                "of row objects; if the file has one object per line (JSON Lines), name it .jsonl"
            )
        return _invalid_json(error, path)
    if isinstance(value, dict):
        lists = [key for key, item in value.items() if isinstance(item, list)]
        hint = f" (its key {lists[0]!r} holds a list: write that list as the top level, or as JSONL)" if lists else ""
        return DataError(
            f"{path}: the top-level JSON value is an object with keys {sorted(value)}, not an array; "
            f"jirl reads a .json file holding one top-level array of row objects [{{...}}, ...]{hint}"
        )
    return DataError(f"{path}: the top-level JSON value is a {type(value).__name__}, not an array of row objects")


def _parquet_records(path: str) -> list[tuple[str, Any]]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs the pyarrow package; pip install pyarrow") from None
    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error}); check the file or write it as JSONL") from None
    return [(f"{path}:row {number}", row) for number, row in enumerate(table.to_pylist(), start=1)]


def _looks_like_dataset(source: Any) -> bool:
    return all(hasattr(source, name) for name in ("__len__", "__getitem__", "column_names"))


def _dataset_records(dataset: Any, label: str) -> list[tuple[str, Any]]:
    return [(f"{label}[{index}]", dataset[index]) for index in range(len(dataset))]


def _saved_dataset_records(path: str) -> list[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{path} is a folder: reading a dataset saved by datasets.Dataset.save_to_disk needs the optional "
            f"'datasets' package; pip install datasets (or give a {', '.join(SUFFIXES)} file)"
        ) from None
    try:
        loaded = datasets.load_from_disk(path)
    except FileNotFoundError as error:
        raise DataError(
            f"{path}: not a folder written by datasets.Dataset.save_to_disk ({error}); give that folder "
            f"or a {', '.join(SUFFIXES)} file"
        ) from None
    if isinstance(loaded.column_names, dict):
        split = next(iter(loaded.column_names), "train")
        raise DataError(
            f"{path} holds a DatasetDict with splits {sorted(loaded.column_names)}; give one split's folder, "
            f"e.g. {os.path.join(path, split)}"
        )
    return _dataset_records(loaded, path)


def _as_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{where}: a row must be an object {{field: value, ...}}, got a {type(value).__name__}")
    return value


# ---- renaming columns


def _checked_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    """``columns`` inverted (source field -> layout field), after checking it."""
    if columns is None:
        return {}
    if not isinstance(columns, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in columns.items()
    ):
        raise DataError(f"columns must map layout field names to source field names (strings), got {columns!r}")
    renames = {source: target for target, source in columns.items()}
    if len(renames) < len(columns):
        raise DataError(f"columns maps one source field to several layout fields: {dict(columns)!r}")
    return renames


def _renamed(
    records: list[tuple[str, dict[str, Any]]], renames: dict[str, str], name: str
) -> list[tuple[str, dict[str, Any]]]:
    """The records with source fields renamed; every renamed field must occur in some row."""
    if not renames:
        return records
    seen: set[str] = set()
    renamed = []
    for where, record in records:
        seen.update(record)
        for source, target in renames.items():
            # A target that is itself renamed away (a swap) is no clash.
            if source in record and target in record and target not in renames:
                raise DataError(
                    f"{where}: the row has both {source!r} and {target!r}, and columns maps {source!r} to "
                    f"{target!r}; drop one of the fields or map another one"
                )
        renamed.append((where, {renames.get(field, field): value for field, value in record.items()}))
    for source, target in renames.items():
        if records and source not in seen:
            raise DataError(
                f"{name}: columns maps {source!r} to {target!r}, but no row has a field {source!r} "
                f"(the rows have {sorted(seen)}); fix the name in columns"
            )
    return renamed


# ---- records -> rows (structural checks)


def _preference_row(record: dict[str, Any], where: str) -> PreferenceRow:
    fields = _present(record)
    if {"conversations", "chosen", "rejected"} <= fields.keys():
        prompt = _sharegpt_conversation(fields, where)
        _check_prompt_end(prompt, "conversations", where)
        chosen = [_sharegpt_reply(fields["chosen"], "chosen", where)]
        rejected = [_sharegpt_reply(fields["rejected"], "rejected", where)]
        return PreferenceRow(prompt, chosen, rejected, where, True, _margin(fields, where))
    if {"prompt", "chosen", "rejected"} <= fields.keys():
        conversational = _is_conversational(fields, ("prompt", "chosen", "rejected"), where)
        prompt = _prompt(fields["prompt"], "prompt", where)
        chosen = _reply(fields["chosen"], "chosen", where)
        rejected = _reply(fields["rejected"], "rejected", where)
        return PreferenceRow(prompt, chosen, rejected, where, conversational, _margin(fields, where))
    if {"chosen", "rejected"} <= fields.keys():
        if not _is_conversational(fields, ("chosen", "rejected"), where):
            raise DataError(
                f"{where}: 'chosen' and 'rejected' are strings without a 'prompt' (TRL's standard implicit-prompt "
                "form), which jirl does not read: it cannot tell where the prompt ends; add a 'prompt' field "
                "(or map one with columns=...) or give chosen and rejected as lists of messages"
            )
        return _implicit_prompt_preference(fields, where)
    raise _no_layout("preference", record, where)


def _implicit_prompt_preference(fields: dict[str, Any], where: str) -> PreferenceRow:
    """A preference pair from two whole conversations: the prompt is their common leading turns
    (up to the last shared user turn), the replies are what follows."""
    chosen = _messages(fields["chosen"], "chosen", where)
    rejected = _messages(fields["rejected"], "rejected", where)
    if not _has_role(chosen, "user") or not _has_role(rejected, "user"):
        raise _Dropped(EMPTY_PROMPT)
    length = _shared_prompt_length(chosen, rejected)
    replies = chosen[length:], rejected[length:]
    # A user turn left in a reply: the conversations part before their final replies.
    if any(message["role"] != "assistant" for reply in replies for message in reply):
        raise _Dropped(PROMPTS_DIFFER)
    return PreferenceRow(chosen[:length], replies[0], replies[1], where, True, _margin(fields, where))


def _shared_prompt_length(first: list[Message], second: list[Message]) -> int:
    """How many leading messages ``first`` and ``second`` share, up to and including the last
    shared user turn (0 if they share none)."""
    length = 0
    for index, (one, other) in enumerate(zip(first, second)):
        if one != other:
            break
        if one["role"] == "user":
            length = index + 1
    return length


def _sft_row(record: dict[str, Any], where: str) -> SftRow:
    fields = _present(record)
    if "messages" in fields:
        messages, conversational = _messages(fields["messages"], "messages", where), True
    elif "conversations" in fields:
        messages, conversational = _sharegpt_conversation(fields, where), True
    elif {"prompt", "completion"} <= fields.keys():
        conversational = _is_conversational(fields, ("prompt", "completion"), where)
        messages = _prompt(fields["prompt"], "prompt", where) + _reply(fields["completion"], "completion", where)
    elif "text" in fields:
        raise DataError(
            f"{where}: a 'text' field (plain language-modeling text) is not an SFT layout jirl reads: jirl trains "
            "on assistant turns, so it must know which text is the reply; give {prompt, completion} or {messages}"
        )
    else:
        raise _no_layout("sft", record, where)
    if not _has_role(messages, "assistant"):
        raise DataError(
            f"{where}: the conversation has no assistant turn; jirl trains on assistant turns, so every SFT row "
            "needs at least one"
        )
    return SftRow(messages, where, conversational)


def _unpaired_row(record: dict[str, Any], where: str) -> UnpairedRow:
    fields = _present(record)
    label_field = "label" if "label" in fields else "kto_tag" if "kto_tag" in fields else None
    if label_field is not None and {"prompt", "completion"} <= fields.keys():
        conversational = _is_conversational(fields, ("prompt", "completion"), where)
        prompt = _prompt(fields["prompt"], "prompt", where)
        completion = _reply(fields["completion"], "completion", where)
    elif label_field is not None and "messages" in fields:
        conversational = True
        prompt, completion = _split_reply(_messages(fields["messages"], "messages", where), "messages", where)
    elif label_field is not None and "conversations" in fields:
        conversational = True
        prompt, completion = _split_reply(_sharegpt_conversation(fields, where), "conversations", where)
    else:
        raise _no_layout("unpaired", record, where)
    label = fields[label_field]
    if not isinstance(label, bool):
        raise DataError(
            f"{where}: field {label_field!r} must be true or false (a JSON boolean), got {type(label).__name__} "
            f"{label!r}; write the labels as booleans"
        )
    return UnpairedRow(prompt, completion, label, where, conversational)


def _split_reply(messages: list[Message], field: str, where: str) -> tuple[list[Message], list[Message]]:
    """``(prompt, [reply])`` of a conversation whose last message is the assistant's reply."""
    if not messages or messages[-1]["role"] != "assistant":
        ending = f"its last message is from {messages[-1]['role']!r}" if messages else "it is empty"
        raise DataError(f"{where}: field {field!r} must end with the assistant's reply, but {ending}")
    _check_prompt_end(messages[:-1], field, where)
    return messages[:-1], messages[-1:]


def _prompt_row(record: dict[str, Any], where: str) -> PromptRow:
    fields = _present(record)
    if "prompt" not in fields:
        raise _no_layout("prompt", record, where)
    conversational = _is_conversational(fields, ("prompt",), where)
    prompt = _prompt(fields["prompt"], "prompt", where)
    extra = {field: value for field, value in record.items() if field != "prompt"}
    return PromptRow(prompt, where, conversational, extra)


_CONVERTERS: dict[str, Callable[[dict[str, Any], str], Row]] = {
    "preference": _preference_row,
    "sft": _sft_row,
    "unpaired": _unpaired_row,
    "prompt": _prompt_row,
}


def _present(record: dict[str, Any]) -> dict[str, Any]:
    """The record's non-null fields (layouts are detected from these)."""
    return {field: value for field, value in record.items() if value is not None}


def _no_layout(kind: str, record: dict[str, Any], where: str) -> DataError:
    nulls = sorted(field for field, value in record.items() if value is None)
    null_note = f" (null: {nulls})" if nulls else ""
    return DataError(
        f"{where}: no {kind} layout matches the row's fields {sorted(record)}{null_note}; accepted for kind="
        f"{kind!r}: " + "; ".join(LAYOUTS[kind]) + "; map other field names with columns={'prompt': 'question', ...}"
    )


def _is_conversational(fields: dict[str, Any], names: tuple[str, ...], where: str) -> bool:
    """Whether the fields ``names`` are lists of messages (True) or strings (False); all alike."""
    for name in names:
        if not isinstance(fields[name], (str, list)):
            raise DataError(
                f"{where}: field {name!r} must be a string or a list of messages, got {type(fields[name]).__name__}"
            )
    kinds = {name: isinstance(fields[name], list) for name in names}
    if len(set(kinds.values())) > 1:
        strings = [name for name, is_list in kinds.items() if not is_list]
        lists = [name for name, is_list in kinds.items() if is_list]
        raise DataError(
            f"{where}: fields {strings} are strings but {lists} are lists of messages; give all of them as strings "
            "(TRL standard) or all as lists of messages (TRL conversational)"
        )
    return kinds[names[0]]


def _prompt(value: str | list, field: str, where: str) -> list[Message]:
    """A prompt field (a string or messages ending with a user turn) as messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages = _messages(value, field, where)
    _check_prompt_end(messages, field, where)
    return messages


def _check_prompt_end(messages: list[Message], field: str, where: str) -> None:
    # An empty prompt is a content problem (dropped), not a structural one.
    if messages and messages[-1]["role"] != "user":
        raise DataError(
            f"{where}: field {field!r}: the prompt must end with a user message, but its last message is from "
            f"{messages[-1]['role']!r}"
        )


def _reply(value: str | list, field: str, where: str) -> list[Message]:
    """A reply field (a string or assistant messages) as messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    messages = _messages(value, field, where)
    for message in messages:
        if message["role"] != "assistant":
            raise DataError(
                f"{where}: field {field!r} holds a {message['role']!r} message, but a reply is assistant messages "
                "only (for whole conversations, leave out 'prompt' and give the full conversations)"
            )
    return messages


def _messages(value: Any, field: str, where: str) -> list[Message]:
    """Canonical copies of a list of ``{role, content}`` messages (other keys are left out)."""
    if not isinstance(value, list):
        raise DataError(f"{where}: field {field!r} must be a list of messages, got {type(value).__name__}")
    return [_message(item, f"{where}: field {field!r}, message {number}") for number, item in enumerate(value, 1)]


def _message(item: Any, place: str) -> Message:
    if not isinstance(item, dict):
        raise DataError(f"{place} must be an object {{'role': ..., 'content': ...}}, got {type(item).__name__}")
    role, content = item.get("role"), item.get("content")
    if role is None:
        raise DataError(f"{place} has no 'role' (keys {sorted(item)}); every message needs 'role' and 'content'")
    if not isinstance(role, str) or role not in ROLES:
        raise DataError(
            f"{place} has role {role!r}; jirl reads the roles {', '.join(map(repr, ROLES))} only; "
            "convert or remove the other turns"
        )
    if content is None:
        raise DataError(f"{place} has no 'content' (keys {sorted(item)}); every message needs a string 'content'")
    if not isinstance(content, str):
        raise DataError(f"{place}: 'content' must be a string, got {type(content).__name__}")
    return {"role": role, "content": content}


def _sharegpt_conversation(fields: dict[str, Any], where: str) -> list[Message]:
    """The ShareGPT ``conversations`` as messages, after the optional top-level ``system`` prompt."""
    turns = fields["conversations"]
    if not isinstance(turns, list):
        raise DataError(
            f"{where}: field 'conversations' must be a list of ShareGPT turns {{'from': ..., 'value': ...}}, "
            f"got {type(turns).__name__}"
        )
    messages = [_sharegpt_turn(turn, f"{where}: field 'conversations', turn {n}") for n, turn in enumerate(turns, 1)]
    system = fields.get("system", "")
    if not isinstance(system, str):
        raise DataError(f"{where}: field 'system' must be a string, got {type(system).__name__}")
    return ([{"role": "system", "content": system}] if system else []) + messages


def _sharegpt_reply(value: Any, field: str, where: str) -> Message:
    """A ShareGPT ``chosen`` / ``rejected`` turn, which must be the assistant's."""
    if not isinstance(value, dict):
        raise DataError(
            f"{where}: field {field!r} must be a ShareGPT turn {{'from': 'gpt', 'value': ...}}, "
            f"got {type(value).__name__}"
        )
    message = _sharegpt_turn(value, f"{where}: field {field!r}")
    if message["role"] != "assistant":
        raise DataError(
            f"{where}: field {field!r} must be the assistant's reply (from 'gpt'), got from {value['from']!r}"
        )
    return message


def _sharegpt_turn(item: Any, place: str) -> Message:
    if not isinstance(item, dict):
        raise DataError(f"{place} must be an object {{'from': ..., 'value': ...}}, got {type(item).__name__}")
    speaker, text = item.get("from"), item.get("value")
    if speaker is None:
        raise DataError(
            f"{place} has no 'from' (keys {sorted(item)}); ShareGPT turns are {{'from': 'human'|'gpt'|'system', "
            "'value': text}; lists of {role, content} go in a 'messages' field"
        )
    if not isinstance(speaker, str) or speaker not in SHAREGPT_ROLES:
        raise DataError(
            f"{place} is from {speaker!r}; jirl reads ShareGPT turns from 'human'/'user', 'gpt'/'assistant' and "
            "'system' only (no tool turns such as function_call or observation); remove or convert these rows"
        )
    if text is None:
        raise DataError(f"{place} has no 'value' (keys {sorted(item)}); every ShareGPT turn needs a string 'value'")
    if not isinstance(text, str):
        raise DataError(f"{place}: 'value' must be a string, got {type(text).__name__}")
    return {"role": SHAREGPT_ROLES[speaker], "content": text}


def _margin(fields: dict[str, Any], where: str) -> float:
    margin = fields.get("margin", 0.0)
    # bool is an int subclass, but true/false is no margin.
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise DataError(f"{where}: field 'margin' must be a finite number, got {type(margin).__name__} {margin!r}")
    return float(margin)


def _has_role(messages: list[Message], role: str) -> bool:
    return any(message["role"] == role for message in messages)


# ---- content checks (drops)


def _drop_reason(row: Row) -> str | None:
    """Why ``row`` is dropped (one of ``DROP_REASONS``), or None to keep it."""
    if _prompt_is_empty(_prompt_part(row)):
        return EMPTY_PROMPT
    if any(not reply or any(not message["content"].strip() for message in reply) for reply in _replies(row)):
        return EMPTY_RESPONSE
    if isinstance(row, PreferenceRow) and row.chosen == row.rejected:
        return CHOSEN_EQUALS_REJECTED
    return None


def _prompt_part(row: Row) -> list[Message]:
    if isinstance(row, SftRow):  # the turns before the first reply
        first_reply = next(i for i, message in enumerate(row.messages) if message["role"] == "assistant")
        return row.messages[:first_reply]
    return row.prompt


def _replies(row: Row) -> list[list[Message]]:
    if isinstance(row, PreferenceRow):
        return [row.chosen, row.rejected]
    if isinstance(row, UnpairedRow):
        return [row.completion]
    if isinstance(row, SftRow):
        return [[message] for message in row.messages if message["role"] == "assistant"]
    return []


def _prompt_is_empty(prompt: list[Message]) -> bool:
    """No user turn, or the last user turn (the one replied to) is blank."""
    user_turns = [message for message in prompt if message["role"] == "user"]
    return not user_turns or not user_turns[-1]["content"].strip()
