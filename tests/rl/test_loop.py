"""``jirl run rl_oracle``: each algorithm against the exact oracle on two tasks, with the KL
in the reward at the oracle's beta (so the target is exactly pi*)."""

import json

import pytest

from jirl.cli import main


def run_oracle(tmp_path, *settings):
    out = tmp_path / "run"
    assert main(["run", "rl_oracle", "--out", str(out), "--set", *settings]) == 0
    return json.loads((out / "results.json").read_text()), out


def assert_converged(results, names):
    for name in names:
        result = results["algorithms"][name]
        assert result["gap_fraction"] <= 0.05 and result["kl_to_optimal"] < 0.05, (name, result)
        assert result["gap_fraction"] < result["curve"][0]["gap_fraction"]  # improves over training


@pytest.mark.slow
def test_all_four_algorithms_reach_the_optimum_on_bigram(tmp_path):
    results, out = run_oracle(tmp_path, "iterations=200", "eval_every=100")
    assert_converged(results, ["reinforce_baseline", "rloo", "grpo", "ppo"])
    assert (out / "rl_oracle.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.heavy  # the same algorithms reach the optimum on bigram in test_all_four_algorithms_reach_the_optimum_on_bigram
def test_reinforce_rloo_and_ppo_reach_the_optimum_on_sparse_sort(tmp_path):
    results, _ = run_oracle(
        tmp_path, "task.name=sort", "task.args=num_digits=2,num_symbols=3", "iterations=300", "eval_every=150",
        "algorithms=reinforce_baseline,rloo,ppo",
    )
    assert_converged(results, ["reinforce_baseline", "rloo", "ppo"])


@pytest.mark.slow
@pytest.mark.heavy  # GRPO's convergence is checked on bigram by test_all_four_algorithms_reach_the_optimum_on_bigram
def test_grpo_reaches_the_optimum_on_gold_rm(tmp_path):
    results, _ = run_oracle(
        tmp_path, "task.name=gold_rm", "task.args=num_chars=3,horizon=4", "iterations=600", "eval_every=300", "algorithms=grpo",
    )
    assert_converged(results, ["grpo"])


def test_unknown_algorithm_is_a_clear_error(tmp_path, capsys):
    code = main(["run", "rl_oracle", "--out", str(tmp_path / "r"), "--set", "algorithms=ppo_magic", "iterations=1"])
    assert code == 2
    assert "unknown algorithm(s) ['ppo_magic']" in capsys.readouterr().err
