"""Reading the committed result records (``results/<folder>/``) in tests that rerun an experiment."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"


def read_record(folder: str) -> dict:
    """``results/<folder>/results.json``."""
    return json.loads((RESULTS / folder / "results.json").read_text())


def record_overrides(folder: str) -> list[str]:
    """The ``--set`` values of the command that wrote ``results/<folder>``."""
    words = shlex.split(json.loads((RESULTS / folder / "run.json").read_text())["command"])
    return words[words.index("--set") + 1 :] if "--set" in words else []


def assert_numbers_match(fresh, committed, path="", rtol=1e-3, atol=1e-4):
    """Every number in ``committed`` equals the one at the same place in ``fresh`` to
    ``|fresh - committed| <= atol + rtol |committed|``; keys, lengths and other values exactly."""
    if isinstance(committed, dict):
        assert isinstance(fresh, dict) and set(fresh) == set(committed), (path, sorted(fresh), sorted(committed))
        for key in committed:
            assert_numbers_match(fresh[key], committed[key], f"{path}.{key}", rtol, atol)
    elif isinstance(committed, list):
        assert isinstance(fresh, list) and len(fresh) == len(committed), path
        for i, (a, b) in enumerate(zip(fresh, committed)):
            assert_numbers_match(a, b, f"{path}[{i}]", rtol, atol)
    elif isinstance(committed, float):
        assert np.isclose(fresh, committed, rtol=rtol, atol=atol), f"{path}: rerun {fresh} vs record {committed}"
    else:
        assert fresh == committed, f"{path}: rerun {fresh!r} vs record {committed!r}"


