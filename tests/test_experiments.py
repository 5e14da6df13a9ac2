"""The registered experiments, run end to end through the CLI on small settings."""

import itertools
import json

import numpy as np
import pytest

from jirl.cli import main
from jirl.mdp.tasks import make_task


def run_cli(tmp_path, *args):
    out = tmp_path / "run"
    code = main(["run", *args, "--out", str(out)])
    return code, out


def brute_force_max_bigram_reward(task):
    """Average over prompts of the best total table score over all responses (plain loops)."""
    table = task.score_table
    best = []
    for first in range(1, task.vocab_size):
        top = -np.inf
        for n in range(1, task.horizon + 1):
            for body in itertools.product(range(1, task.vocab_size), repeat=n):
                seq = (first,) + body
                total = sum(table[a, b] for a, b in zip(seq[:-1], seq[1:]))
                top = max(top, total)  # cut at the horizon without EOS
                if n < task.horizon:
                    top = max(top, total + table[seq[-1], task.eos_id])
            # an immediate EOS
            top = max(top, table[first, task.eos_id])
        best.append(top)
    return float(np.mean(best))


@pytest.mark.slow
def test_oracle_experiment_writes_a_consistent_frontier(tmp_path):
    code, out = run_cli(tmp_path, "oracle", "--set", "task.args=horizon=4", "betas=0.05,0.3,1,3,30", "num_demos=4000")
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["task"]["args"] == ["horizon=4"]
    rows = results["frontier"]
    reward = [r["expected_reward"] for r in rows]
    kl = [r["kl_to_reference"] for r in rows]
    # Larger beta: less reward, less KL; the largest beta is close to the reference.
    assert all(a >= b - 1e-5 for a, b in zip(reward, reward[1:]))
    assert all(a >= b - 1e-5 for a, b in zip(kl, kl[1:]))
    assert kl[-1] < 0.05 and abs(reward[-1] - results["reference_reward"]) < 0.2
    # The beta -> 0 limit is the best achievable reward, found here by brute force.
    task = make_task("bigram", horizon=4)
    assert results["max_reward"] == pytest.approx(brute_force_max_bigram_reward(task), abs=1e-3)
    # Demonstrations from pi*: Monte-Carlo mean within 4 standard errors of the exact value.
    assert abs(results["demo_mean_reward"] - results["demo_exact_reward"]) < 4 * 3.0 / np.sqrt(4000)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 5
    assert (out / "frontier.png").stat().st_size > 10_000


@pytest.mark.slow
def test_oracle_on_the_sort_task_reaches_reward_one(tmp_path):
    code, out = run_cli(tmp_path, "oracle", "--set", "task.name=sort", "task.args=num_digits=2,num_symbols=3",
                        "reference=uniform", "betas=0.01,100")
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["max_reward"] == pytest.approx(1.0, abs=1e-4)
    # Uniform reference: 3 symbols + EOS over 3 steps; only one of the responses is right.
    assert results["reference_reward"] == pytest.approx(1 / 4**3, rel=1e-4)


def test_quickstart_and_oracle_are_listed(capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "quickstart" in listed and "oracle" in listed


@pytest.mark.parametrize(
    "args, message",
    [
        (["oracle", "--set", "task.name=sorting"], "task.name must be one of bigram, gold_rm, sort, got sorting (unknown 'sorting'). Did you mean 'sort'?"),
        (["oracle", "--set", "task.args=horizn=3"], "Did you mean 'horizon'"),
        (["oracle", "--set", "betas=0.1,abc"], "betas"),
        (["oracle", "--set", "reference=gpt4"], "one of 'model', 'uniform'"),
        (["oracel"], "Did you mean 'oracle'"),
    ],
)
def test_bad_experiment_input_is_reported_without_a_traceback(tmp_path, capsys, args, message):
    code, _ = run_cli(tmp_path, *args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
