"""``scripts/build_api_docs.py``: every public name of jirl has a docstring, the pdoc reference
builds without a warning, and the checker really fails on a module that lacks docstrings."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import sys
import types
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_api_docs.py"


@functools.cache
def load_script():
    spec = importlib.util.spec_from_file_location("build_api_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def synthetic_module() -> types.ModuleType:
    """A module named ``fake_pkg.mod`` without a module docstring, with documented and
    undocumented functions, classes, methods and properties, a private helper and an import."""
    module = types.ModuleType("fake_pkg.mod")
    source = '''
import json
from dataclasses import dataclass

def documented():
    """Has one."""

def undocumented():
    pass

def _private():
    pass

class Documented:
    """Has one."""

    def method(self):
        """Has one."""

    def bare_method(self):
        pass

    @property
    def bare_property(self):
        return 1

    @staticmethod
    def bare_static():
        pass

    def _private_method(self):
        pass

class Bare:
    pass

@dataclass
class BareData:
    x: int = 0

@dataclass
class Data:
    """Has one."""

    x: int = 0
'''
    exec(compile(source, "<fake_pkg.mod>", "exec", dont_inherit=True), module.__dict__)
    return module


def test_checker_finds_every_missing_docstring():
    script = load_script()
    missing = script.missing_docstrings([synthetic_module()])
    assert missing == [
        "fake_pkg.mod",
        "fake_pkg.mod.undocumented",
        "fake_pkg.mod.Documented.bare_method",
        "fake_pkg.mod.Documented.bare_property",
        "fake_pkg.mod.Documented.bare_static",
        "fake_pkg.mod.Bare",
        "fake_pkg.mod.BareData",  # the automatic ``BareData(x: int = 0)`` does not count
    ]


def test_checker_passes_a_documented_module():
    script = load_script()
    module = types.ModuleType("fake_pkg.ok", "A documented module.")

    @dataclasses.dataclass
    class Config:
        """Documented."""

        seed: int = 0

    Config.__module__ = module.__name__
    module.Config = Config
    assert script.missing_docstrings([module]) == []


def test_checker_fails_on_a_package_with_a_missing_docstring(tmp_path, monkeypatch, capsys):
    package = tmp_path / "undocumented_pkg"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package."""\n')
    (package / "mod.py").write_text('"""A module."""\n\ndef helper(x):\n    return x\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    script = load_script()
    assert script.main(["--check-only", "--package", "undocumented_pkg"]) == 1
    assert "undocumented_pkg.mod.helper" in capsys.readouterr().err
    sys.modules.pop("undocumented_pkg.mod", None)
    sys.modules.pop("undocumented_pkg", None)


def test_every_public_jirl_name_has_a_docstring():
    script = load_script()
    assert script.missing_docstrings(script.iter_modules("jirl")) == []


@pytest.mark.slow
def test_api_reference_builds_without_warnings(tmp_path):
    script = load_script()
    out = tmp_path / "api"
    assert script.build_html(out) == []
    assert (out / "jirl.html").is_file()
    assert (out / "jirl" / "mdp" / "oracle.html").is_file()
    page = (out / "jirl" / "train" / "losses.html").read_text()
    assert "LossOutput" in page and "the sum of per-unit losses" in page


def test_build_reports_pdoc_warnings(tmp_path, monkeypatch):
    package = tmp_path / "broken_all_pkg"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package whose __all__ names nothing."""\n\n__all__ = ["missing_name"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    script = load_script()
    problems = script.build_html(tmp_path / "api", "broken_all_pkg")
    assert len(problems) == 1 and "missing_name" in problems[0]
    sys.modules.pop("broken_all_pkg", None)
