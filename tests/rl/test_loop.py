"""The RL loop against the exact oracle."""

import json

import pytest

from jirl.cli import main


@pytest.mark.slow
def test_rloo_and_ppo_with_kl_in_the_reward_converge_to_the_exact_optimum(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "rl_oracle", "--out", str(out), "--set", "algorithms=rloo,ppo", "iterations=150", "eval_every=50"]) == 0
    results = json.loads((out / "results.json").read_text())
    for name in ("rloo", "ppo"):
        result = results["algorithms"][name]
        assert result["gap_fraction"] < 0.05 and result["kl_to_optimal"] < 0.05, (name, result)
        assert result["gap_fraction"] < result["curve"][0]["gap_fraction"]  # improves over training
    assert (out / "rl_oracle.png").stat().st_size > 10_000


def test_unknown_algorithm_is_a_clear_error(tmp_path, capsys):
    code = main(["run", "rl_oracle", "--out", str(tmp_path / "r"), "--set", "algorithms=ppo_magic", "iterations=1"])
    assert code == 2
    assert "unknown algorithm(s) ['ppo_magic']" in capsys.readouterr().err
