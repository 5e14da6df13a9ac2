"""``jirl run quickstart`` end to end: demonstrations -> SFT -> AfD reward -> RL -> exact evaluation."""

import json

import pytest

from jirl.cli import main

KL_THRESHOLD = 0.05  # nats; stated in the README


@pytest.mark.slow
def test_quickstart_sft_gets_close_to_the_expert_and_irl_beats_sft_on_gold_reward(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "quickstart", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["kl_expert_policy"] < KL_THRESHOLD
    assert results["kl_expert_reference"] > 1.0  # the untrained policy is far from the expert
    rewards = results["gold_reward"]
    assert rewards["reference"] < rewards["sft_policy"] <= rewards["expert"] + 1e-3
    assert rewards["sft_policy"] > 0.9 * rewards["expert"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in lines if "loss" in row]
    assert len(losses) == results["steps"] and losses[-1] < losses[0]
    timing = [json.loads(line) for line in (out / "timing.jsonl").read_text().splitlines()]
    assert any("compile_seconds" in row for row in timing) and any("tokens_per_second" in row for row in timing)
    assert any((out / "tensorboard").iterdir())
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())[-1] == results["steps"]
    assert (out / "training.png").stat().st_size > 10_000
    # The IRL stage: RL against the AfD reward improves on SFT's gold reward (measured 6.228 vs 6.183).
    irl = results["irl"]
    assert irl["method"] == "afd" and irl["policy"]["gold_reward"] > rewards["sft_policy"], irl
    assert irl["reward_optimum"]["gold_reward"] > rewards["sft_policy"]
    assert len((out / "irl_metrics.jsonl").read_text().splitlines()) == irl["rl_iterations"]
    assert list((out / "data").rglob("*.array_record*"))


def test_an_unknown_irl_method_is_refused_before_training(tmp_path, capsys):
    assert main(["run", "quickstart", "--out", str(tmp_path / "run"), "--set", "irl=magic"]) == 2
    assert "unknown irl method 'magic'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
