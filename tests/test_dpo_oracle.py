"""``jirl run dpo_oracle``: results, the finite-data curve and exact resume after SIGKILL."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jirl.cli import main

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "losses=dpo,kto", "pair_counts=128", "online_iterations=10", "train.steps=40",
    "train.checkpoint_every=10", "train.eval_every=10", "num_pairs=512",
]


def test_unknown_loss_and_too_many_pairs_are_clear_errors(tmp_path, capsys):
    assert main(["run", "dpo_oracle", "--out", str(tmp_path / "a"), "--set", "losses=dpo,dpoo"]) == 2
    assert "(unknown 'dpoo'). Did you mean 'dpo'?" in capsys.readouterr().err
    assert main(["run", "dpo_oracle", "--out", str(tmp_path / "b"), "--set", "pair_counts=8192"]) == 2
    assert "must not exceed num_pairs" in capsys.readouterr().err


@pytest.mark.slow
def test_dpo_oracle_writes_every_study_and_more_pairs_bring_dpo_closer_to_the_optimum(tmp_path):
    """Guards the results page's dpo_oracle findings at a smaller size: DPO's KL to pi* shrinks
    with the number of pairs, and IPO moves less from the reference than pi* does."""
    out = tmp_path / "run"
    settings = ["losses=dpo,ipo,simpo", "pair_counts=64,2048", "num_pairs=2048", "online_iterations=40", "train.steps=300"]
    assert main(["run", "dpo_oracle", "--out", str(out), "--set", *settings]) == 0
    results = json.loads((out / "results.json").read_text())
    reference_kl = results["reference"]["kl_to_optimal"]
    for name in ("dpo", "ipo", "simpo"):
        for key in ("kl_to_optimal", "gold_reward", "kl_to_reference"):
            assert isinstance(results["losses"][name][key], float)
    assert results["losses"]["dpo"]["kl_to_optimal"] < 0.25 * reference_kl
    small, large = results["data_curve"]
    assert large["kl_to_optimal"] < small["kl_to_optimal"], results["data_curve"]
    assert results["losses"]["ipo"]["kl_to_reference"] < results["optimum"]["kl_to_reference"]
    online = results["online"]["curve"]
    assert online[-1]["gold_reward"] > online[0]["gold_reward"] + 0.3
    assert (out / "dpo_oracle.png").stat().st_size > 10_000


def offline_lines(out: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in out.glob("offline/*/metrics.jsonl"))


@pytest.mark.slow
@pytest.mark.heavy  # resuming a killed run is checked by tests/train/test_resume.py (the same fit and checkpoints)
def test_a_killed_dpo_oracle_run_resumes_to_the_same_results(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = lambda out, *extra: [sys.executable, "-m", "jirl.cli", "run", "dpo_oracle", "--out", str(out), "--set", *SMALL, *extra]  # noqa: E731
    straight = tmp_path / "straight"
    subprocess.run(command(straight), env=env, cwd=tmp_path, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    kill_after = random.Random().randint(15, 110)  # metrics lines over the offline runs (3 x 40 steps)
    process = subprocess.Popen(command(killed), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while offline_lines(killed) < kill_after and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(command(killed, "--resume"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = [json.loads((d / "results.json").read_text()) for d in (straight, killed)]
    assert results[0] == results[1], f"killed after {kill_after} lines"
