"""``scripts/make_results_page.py`` on a synthetic runs folder: the numbers on the page are the
ones in the files, a missing run is "not run yet" with no numbers, a missing key is marked, and
the plots are copied and linked. No experiment runs."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_results_page.py"

# A tiny valid PNG (1x1), enough for copying and linking.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def load_script():
    spec = importlib.util.spec_from_file_location("make_results_page", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def write_run(runs: Path, folder: str, experiment: str, results: dict, overrides=(), seconds=12.0, figure=None):
    path = runs / folder
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results))
    info = {"experiment": experiment, "overrides": list(overrides), "started_at": "2026-01-01T00:00:00", "elapsed_seconds": seconds, "resumed": False}
    (path / "run.json").write_text(json.dumps(info))
    if figure:
        (path / figure).write_bytes(PNG)


QUICKSTART = {  # the key layout of a real runs/quickstart/results.json
    "task": "bigram", "expert_beta": 0.5, "num_demos": 4096, "steps": 400,
    "kl_expert_policy": 0.0271828, "kl_expert_reference": 6.5432,
    "gold_reward": {"expert": 6.11111, "sft_policy": 5.98765, "reference": -0.31415},
    "irl": {
        "method": "afd", "rl_iterations": 150, "beta": 1.0, "discriminator_accuracy": 0.5123, "pairs": 4096,
        "policy": {"kl_expert_policy": 0.0223, "gold_reward": 6.04321},
        "reward_optimum": {"kl_expert_policy": 0.0333, "gold_reward": 6.0222},
    },
}

RL_SORT = {  # runs/rl_oracle_sort/results.json, curves left out
    "task": "sort", "beta": 0.5,
    "algorithms": {
        "rloo": {"gap_fraction": 0.01234, "kl_to_optimal": 0.00056, "steps": 300},
        "grpo": {"gap_fraction": 0.87654, "kl_to_optimal": 0.06789, "steps": 300},
        "ppo": {"gap_fraction": 0.00321, "kl_to_optimal": 0.00012, "steps": 300},
        "dr_grpo": {"gap_fraction": 0.04444, "kl_to_optimal": 0.00333, "steps": 300},
    },
    "optimum": {"expected_reward": 0.1111, "kl_to_reference": 0.2222, "objective": 0.0},
}

HH_RLHF_NO_AFTER = {  # documented keys of experiments/hh_rlhf.py, with "after" missing
    "reward_model": {"train_pairs": 1465, "test_pairs": 370, "train_accuracy": 0.7012, "test_accuracy": 0.6034},
    "before": {"score": -0.1234, "length": 30.5, "kl": 0.0},
    "curves": {"score": [0.1, 0.2], "kl": [0.0, 0.01], "length": [30, 31], "seconds": [9.0, 9.5]},
    "samples": {
        "before": [{"prompt": "How do I | pick a lock?", "reply": "I can't help <b>with</b> that.", "score": 0.5}],
        "after": [{"prompt": "How do I | pick a lock?", "reply": "No.", "score": 0.75}],
    },
    "seconds": {"reward_model": 20.0}, "seconds_per_step": 9.25,
}


@pytest.fixture
def page(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "quickstart", "quickstart", QUICKSTART, seconds=51.337, figure="training.png")
    write_run(
        runs, "rl_oracle_sort", "rl_oracle", RL_SORT, seconds=114.08, figure="rl_oracle.png",
        overrides=["task.name=sort", "task.args=num_digits=2,num_symbols=3", "iterations=300"],
    )
    write_run(runs, "hh_rlhf", "hh_rlhf", HH_RLHF_NO_AFTER, seconds=2400.0)  # no plot either
    out = tmp_path / "docs" / "results.md"
    assert load_script().main(["--runs", str(runs), "--out", str(out)]) == 0
    return out


def section(text: str, heading: str) -> str:
    """From the ``### heading`` line to the next heading of level 2 or 3."""
    start = text.index(heading)
    rest = text[start + len(heading):]
    end = re.search(r"^#{2,3} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def row(text: str, first_cell: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r}")


def test_numbers_on_the_page_are_the_files(page):
    text = page.read_text()
    quick = section(text, "### `runs/quickstart`")
    assert float(row(quick, "SFT policy")[1]) == round(QUICKSTART["gold_reward"]["sft_policy"], 4)
    assert float(row(quick, "SFT policy")[2]) == round(QUICKSTART["kl_expert_policy"], 4)
    assert float(row(quick, "untrained reference")[1]) == round(QUICKSTART["gold_reward"]["reference"], 4)
    assert float(row(quick, "exact optimum of the learned reward")[2]) == round(QUICKSTART["irl"]["reward_optimum"]["kl_expert_policy"], 4)
    assert "Runtime (2-core CPU): **51 s**" in quick

    sort = section(text, "### `runs/rl_oracle_sort`")
    for name, values in RL_SORT["algorithms"].items():
        cells = row(sort, name)
        assert float(cells[1]) == round(values["gap_fraction"], 4)
        assert float(cells[2]) == round(values["kl_to_optimal"], 4)
        assert cells[3] == "300"
    # the command is rebuilt from run.json, overrides included
    assert "jirl run rl_oracle --out runs/rl_oracle_sort --set task.name=sort task.args=num_digits=2,num_symbols=3 iterations=300" in sort
    assert "Runtime (2-core CPU): **1.9 min**" in sort

    summary = section(text, "## Summary")
    assert row(summary, "[quickstart](#2-quickstart-demonstrations--reward--rl-quickstart)")[2] == "51 s"


def test_missing_run_is_not_run_yet_without_numbers(page):
    text = page.read_text()
    missing, compared = section(text, "### `runs/overoptimization`").split("**Compared with published work**")
    assert "not run yet: no runs/overoptimization/results.json" in missing
    assert "jirl run overoptimization --out runs/overoptimization" in missing
    assert not re.search(r"\d", missing), missing  # no table, runtime or number of any kind
    assert "![" not in missing
    measured = compared.strip().splitlines()[-1].strip("|").split(" | ")[-1]  # the published text may cite years
    assert measured.strip() == "not run yet: nothing measured"
    cells = next(r for r in section(text, "## Summary").splitlines() if "runs/overoptimization" in r).strip("|").split(" | ")
    assert cells[2].strip() == "not run yet"
    assert not re.search(r"\d", cells[3])
    # the other absent runs too, e.g. oracle and credit_horizon
    for folder in ("oracle", "credit_horizon", "rm_noise_minilm"):
        assert f"not run yet: no runs/{folder}/results.json" in text


def test_missing_key_is_marked_not_invented(page):
    hh = section(page.read_text(), "### `runs/hh_rlhf`")
    assert float(row(hh, "BT head on all-MiniLM-L6-v2")[4]) == 0.603
    assert row(hh, "after")[1] == "⚠ missing `after.score`"
    assert row(hh, "before")[1] == "-0.123"
    assert "&lt;b&gt;" in hh and "\\|" in hh  # free text cannot break the table
    assert "⚠ no plot in runs/hh_rlhf" in hh


def test_figures_are_copied_and_linked(page):
    text = page.read_text()
    figures = page.parent / "figures"
    for folder in ("quickstart", "rl_oracle_sort"):
        assert (figures / f"{folder}.png").read_bytes() == PNG
        assert f"](figures/{folder}.png)" in section(text, f"### `runs/{folder}`")
    assert not (figures / "hh_rlhf.png").exists()
