"""Verifiable rewards: exact-match answers (GSM8K style), format rewards and length penalties.

A GSM8K solution ends with ``#### <answer>``. A model's response is scored 1 when the number it
gives as its final answer equals the reference: the number after its own ``####`` if present,
otherwise the last number in the text (Cobbe et al. 2021). Numbers are compared after removing
thousands separators, currency signs and trailing zeros (``1,000.50`` == ``1000.5``).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import numpy as np

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
FINAL_MARKER = "####"


def normalize_number(text: str) -> str | None:
    """Canonical form of a number written as text, or None if it is not one."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    value = value.normalize()
    return format(value, "f") if value != 0 else "0"


def extract_final_answer(text: str) -> str | None:
    """The final numeric answer of a solution: after ``####`` if present, else the last number."""
    if FINAL_MARKER in text:
        tail = text.rsplit(FINAL_MARKER, 1)[1]
        match = _NUMBER.search(tail)
        return normalize_number(match.group()) if match else None
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def exact_match_rewards(responses: list[str], references: list[str]) -> np.ndarray:
    """``[N]`` float32: 1 where the response's final answer equals the reference's, else 0."""
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} references")
    out = np.zeros(len(responses), np.float32)
    for i, (response, reference) in enumerate(zip(responses, references)):
        expected = extract_final_answer(reference)
        if expected is None:
            raise ValueError(f"reference {i} has no numeric final answer: {reference[-80:]!r}")
        out[i] = float(extract_final_answer(response) == expected)
    return out


def format_rewards(responses: list[str], pattern: str = r"#### *-?\$?\d") -> np.ndarray:
    """``[N]`` float32: 1 where the response contains ``pattern`` (default: a ``#### <number>`` line)."""
    compiled = re.compile(pattern)
    return np.array([float(bool(compiled.search(r))) for r in responses], np.float32)


def length_penalties(lengths, max_length: int, coefficient: float = 1.0) -> np.ndarray:
    """``-coefficient * max(0, length - max_length) / max_length`` per response (0 within budget)."""
    lengths = np.asarray(lengths, np.float32)
    return -coefficient * np.maximum(0.0, lengths - max_length) / max_length
