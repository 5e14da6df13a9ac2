"""The committed result records under ``results/`` and what is published from them.

- The results page, its figures and the README's results block are exactly what
  ``scripts/make_results_page.py`` generates from ``results/`` (editing or deleting one number
  in a record fails here).
- Every finding stated on the page holds in the records, and names a test that exists.
- Every record says where it came from (command, commit, versions, device, date).
- The cheap experiments are rerun at their published settings and every number they publish is
  compared with the record (``oracle`` here; ``quickstart`` in ``tests/test_quickstart.py``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from jirl.cli import main
from tests.result_records import RESULTS, assert_numbers_match, record_overrides

REPO = Path(__file__).resolve().parents[1]


def load_script():
    path = REPO / "scripts" / "make_results_page.py"
    spec = importlib.util.spec_from_file_location("make_results_page_committed", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


PAGE = load_script()
FINDINGS = PAGE.all_findings(PAGE.load_all(RESULTS))
FOLDERS = [spec.folder for section in PAGE.SECTIONS for spec in section.runs]


def test_page_figures_and_readme_are_generated_from_the_records():
    stale = PAGE.stale_files(RESULTS, REPO / "docs" / "results.md", REPO / "README.md")
    assert not stale, (
        f"out of date with results/: {stale}. Regenerate with `python scripts/make_results_page.py` "
        "(after `--collect FOLDER` for a new run) and commit the result."
    )


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_record_is_committed_with_its_provenance(folder):
    record = RESULTS / folder
    assert (record / "results.json").is_file(), f"no committed record results/{folder}/results.json"
    info = json.loads((record / "run.json").read_text())
    for key in ("command", "git_commit", "versions", "device", "date", "elapsed_seconds"):
        assert info.get(key) not in (None, ""), f"results/{folder}/run.json lacks {key!r}"
    assert info["command"].startswith(f"jirl run {info['experiment']} --out runs/{folder}")
    size = sum(f.stat().st_size for f in record.iterdir())
    assert size < 1_000_000, f"results/{folder} holds {size / 1e6:.1f} MB"


def test_no_record_holds_a_nan():
    for path in RESULTS.glob("*/results.json"):
        text = path.read_text()
        assert not re.search(r"\bNaN\b|\bInfinity\b", text), f"{path} holds a non-finite number"


@pytest.mark.parametrize("index", range(len(FINDINGS)), ids=[f"{s.experiment}-{i}" for i, (s, _) in enumerate(FINDINGS)])
def test_every_committed_finding_holds(index):
    section, finding = FINDINGS[index]
    assert finding.holds, (
        f"{section.experiment}: the page states '{finding.claim}' but the records show: {finding.evidence} "
        "Rerun the experiment, regenerate the page, and restate the finding."
    )


def test_every_finding_names_a_test_that_exists():
    assert FINDINGS, "no findings: results/ is empty"
    for _, finding in FINDINGS:
        names = re.findall(r"(tests/[\w/]+\.py)::(\w+)", finding.test)
        assert names, f"finding '{finding.claim}' names no test ({finding.test!r})"
        for path, name in names:
            source = (REPO / path).read_text()
            assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"{path} has no test {name}"


# ---------------------------------------------------------------------------------------------
# Reruns at the published settings


@pytest.mark.slow
def test_oracle_rerun_matches_its_record(tmp_path):
    """Guards the oracle findings: a rerun at the published settings reproduces every number."""
    out = tmp_path / "oracle"
    overrides = record_overrides("oracle")
    assert main(["run", "oracle", "--out", str(out), *(["--set", *overrides] if overrides else [])]) == 0
    fresh = json.loads((out / "results.json").read_text())
    assert_numbers_match(fresh, json.loads((RESULTS / "oracle" / "results.json").read_text()))
