"""``jirl run quickstart`` end to end: demonstrations -> SFT -> AfD reward -> RL -> exact evaluation."""

import json

import pytest

from jirl.cli import main
from tests.result_records import assert_numbers_match, read_record, record_overrides

KL_THRESHOLD = 0.15  # nats: the one-layer d = 8 policy cannot represent the expert (measured 0.094 at seed 0)


def margin_tolerance(record: dict) -> float:
    """How far a rerun's exact numbers may move from the record: a third of the seed-to-seed
    spread of the IRL − SFT margin (a rerun here is bit-identical; on another CPU float rounding
    takes training along another path, by much less than a reseed)."""
    return max(record["seeds"]["irl_minus_sft"]["std"] / 3, 1e-3)


@pytest.mark.slow
def test_quickstart_rerun_matches_its_record(tmp_path):
    """The main job at its published settings: every number in results/quickstart is reproduced
    (to ``margin_tolerance``), and the run writes its files; SFT alone gets close to the expert."""
    out = tmp_path / "run"
    overrides = record_overrides("quickstart")
    assert main(["run", "quickstart", "--out", str(out), *(["--set", *overrides] if overrides else [])]) == 0
    results = json.loads((out / "results.json").read_text())
    record = read_record("quickstart")
    assert_numbers_match(results, record, rtol=0.0, atol=margin_tolerance(record))

    assert results["kl_expert_policy"] < KL_THRESHOLD
    assert results["kl_expert_reference"] > 1.0  # the untrained policy is far from the expert
    rewards = results["gold_reward"]
    assert rewards["reference"] < rewards["sft_policy"] <= rewards["expert"] + 1e-3
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in lines if "loss" in row]
    assert len(losses) == results["steps"] and losses[-1] < losses[0]
    timing = [json.loads(line) for line in (out / "timing.jsonl").read_text().splitlines()]
    assert any("compile_seconds" in row for row in timing) and any("tokens_per_second" in row for row in timing)
    assert any((out / "tensorboard").iterdir())
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())[-1] == results["steps"]
    assert (out / "training.png").stat().st_size > 10_000
    irl = results["irl"]
    assert irl["method"] == "afd"
    assert len((out / "irl_metrics.jsonl").read_text().splitlines()) == irl["rl_iterations"]
    assert list((out / "data").rglob("*.array_record*"))
    # The vmapped seed study's first seed is the pipeline above run side by side with the others.
    check = results["seeds"]["first_seed_pipeline_vs_study"]
    assert abs(check["sft_gold"][0] - check["sft_gold"][1]) < 1e-4
    assert abs(check["irl_gold"][0] - check["irl_gold"][1]) < margin_tolerance(record)


@pytest.mark.slow
def test_the_vmapped_seed_study_reruns_each_seed_of_the_pipeline(tmp_path):
    """Seed 1 of a two-seed study (SFT and RL vmapped over the seeds) lands where the pipeline
    run on its own at seed 1 does: each seed gets its own data, initialisation, batch order and
    keys, not the first seed's."""
    tiny = ["train.steps=30", "rl_iterations=4", "num_demos=256", "settings.afd.steps=40"]
    assert main(["run", "quickstart", "--out", str(tmp_path / "study"), "--set", "seeds=2", *tiny]) == 0
    assert main(["run", "quickstart", "--out", str(tmp_path / "alone"), "--set", "seed=1", "seeds=1", *tiny]) == 0
    study = json.loads((tmp_path / "study" / "results.json").read_text())["seeds"]
    alone = json.loads((tmp_path / "alone" / "results.json").read_text())
    assert study["seeds"] == [0, 1]
    assert abs(study["sft_gold"][1] - alone["gold_reward"]["sft_policy"]) < 1e-4
    assert abs(study["irl_gold"][1] - alone["irl"]["policy"]["gold_reward"]) < 1e-4
    assert abs(study["sft_gold"][0] - study["sft_gold"][1]) > 1e-3  # the seeds differ by far more


@pytest.mark.slow
def test_irl_beats_sft_by_three_standard_deviations_at_other_seeds(tmp_path):
    """Guards the results page's quickstart finding at seeds the README does not quote
    (1000-1004): over 5 seeds the IRL policy's gold reward beats SFT's by more than 3 standard
    deviations of the difference."""
    out = tmp_path / "run"
    assert main(["run", "quickstart", "--out", str(out), "--set", "seed=1000"]) == 0
    study = json.loads((out / "results.json").read_text())["seeds"]
    margin = study["irl_minus_sft"]
    assert study["seeds"] == [1000, 1001, 1002, 1003, 1004] and margin["count"] == 5
    assert margin["mean"] > 3 * margin["std"], study


def test_an_unknown_irl_method_is_refused_before_training(tmp_path, capsys):
    assert main(["run", "quickstart", "--out", str(tmp_path / "run"), "--set", "irl=magic"]) == 2
    assert "irl must be one of afd, airl, gail, iq_learn, maxent, spin, none, got magic" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
