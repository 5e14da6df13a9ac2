"""Reading local JSONL files (optionally gzip-compressed) of text rows, with validation.

Every non-blank line must be a JSON object holding the required fields as strings. Errors
name the file and the 1-based line: ``data.jsonl:7: missing field 'response' (...)``.
Files are UTF-8; a byte-order mark at the start of the file is accepted (and dropped), and
bytes that are not UTF-8 are reported by line, column and byte offset within that line.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from jirl.data.errors import DataError

PROMPT_RESPONSE_FIELDS = ("prompt", "response")

# Bytes that are not UTF-8 come through the "surrogateescape" error handler as the lone
# surrogates U+DC80..U+DCFF (one per bad byte); decoding valid UTF-8 never gives these.
_UNDECODED_BYTE = re.compile("[\udc80-\udcff]")


@dataclasses.dataclass(frozen=True)
class JsonlRow:
    """One parsed row and where it came from (``line`` is 1-based)."""

    line: int
    values: dict[str, Any]

    def __getitem__(self, field: str) -> Any:
        return self.values[field]


@dataclasses.dataclass(frozen=True)
class JsonlReport:
    """What was read from one file."""

    path: str
    num_rows: int
    num_blank_lines: int

    def __str__(self) -> str:
        return f"{self.path}: {self.num_rows} rows ({self.num_blank_lines} blank lines skipped)"


def read_jsonl(
    path: str | os.PathLike, fields: Sequence[str] = PROMPT_RESPONSE_FIELDS
) -> tuple[list[JsonlRow], JsonlReport]:
    """All rows of the JSONL file ``path`` (``.jsonl`` or ``.jsonl.gz``) and a count report.

    Each row must be a JSON object whose ``fields`` are strings; blank lines are skipped.
    Raises ``DataError`` for a missing or empty file, invalid JSON, or a missing or
    non-string field, naming ``path:LINE``.
    """
    path = os.fspath(path)
    rows, num_blank = [], 0
    for line_number, text in _numbered_lines(path):
        _check_utf8(text, path, line_number)
        if not text.strip():
            num_blank += 1
            continue
        where = f"{path}:{line_number}"
        values = _parse_object(text, where)
        _check_fields(values, fields, where)
        rows.append(JsonlRow(line=line_number, values=values))
    if not rows:
        raise DataError(
            f"{path}: no rows (the file is empty or holds only blank lines); "
            f"write one JSON object per line with string fields {_quoted(fields)}"
        )
    return rows, JsonlReport(path=path, num_rows=len(rows), num_blank_lines=num_blank)


def _numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` for each line of ``path``, with read errors as ``DataError``.

    Undecodable bytes stay in ``text`` as lone surrogates (``_check_utf8`` reports them), so
    that the error can name the line rather than a byte offset in the whole file. A truncated
    ``.gz`` file names the line where the data stops.
    """
    line_number = 0  # the last line read whole
    try:
        with _open_text(path) as file:
            for line_number, text in enumerate(file, start=1):
                yield line_number, text
    except EOFError as error:  # a gzip stream cut off before its end marker
        raise DataError(
            f"{path}:{line_number + 1}: the gzip file ends part-way ({error}): it was cut off while being written "
            f"or copied, after {line_number} whole lines; copy or compress it again"
        ) from None
    except FileNotFoundError:
        raise DataError(f"JSONL file not found: {path} (working directory {os.getcwd()}); check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory; give the path of a .jsonl or .jsonl.gz file") from None
    except gzip.BadGzipFile as error:
        raise DataError(f"{path}: not a valid gzip file ({error}); name it .jsonl if it is not compressed") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error}); re-encode the file as UTF-8") from None


def _open_text(path: str) -> TextIO:
    # utf-8-sig: a byte-order mark at the very start of the file is skipped (one elsewhere is not).
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape")
    return open(path, encoding="utf-8-sig", errors="surrogateescape")


def _check_utf8(text: str, path: str, line_number: int) -> None:
    """``DataError`` naming ``path:LINE``, the column and the byte offset within the line of the
    first byte of ``text`` that was not UTF-8 (escaped by ``_open_text``)."""
    bad = _UNDECODED_BYTE.search(text)
    if bad is None:
        return
    column = bad.start() + 1
    byte_offset = len(text[: bad.start()].encode("utf-8", "surrogateescape")) + 1
    value = ord(bad.group()) - 0xDC00
    raise DataError(
        f"{path}:{line_number}: not UTF-8 text: byte 0x{value:02x} at column {column} (byte {byte_offset} of the "
        "line) is not valid UTF-8; re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def _parse_object(text: str, where: str) -> dict[str, Any]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: invalid JSON ({error}); each line must be one complete JSON object") from None
    if not isinstance(values, dict):
        raise DataError(f"{where}: expected a JSON object {{...}}, got a JSON {type(values).__name__}")
    return values


def _check_fields(values: dict[str, Any], fields: Sequence[str], where: str) -> None:
    for field in fields:
        if field not in values:
            raise DataError(
                f"{where}: missing field {field!r} (row has keys {sorted(values)}); "
                f"every row needs string fields {_quoted(fields)}"
            )
        if not isinstance(values[field], str):
            raise DataError(f"{where}: field {field!r} must be a string, got {type(values[field]).__name__}")


def _quoted(fields: Sequence[str]) -> str:
    return ", ".join(repr(f) for f in fields)
