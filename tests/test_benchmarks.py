"""Each benchmark script runs one tiny iteration, so the scripts do not rot (their timings are
not checked here: speed is measured in benchmarks/, never in timed tests)."""

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def test_harness_reports_the_median_and_spread_of_the_timed_calls():
    from harness import Timing

    timing = Timing(first_call_s=9.0, seconds=[2.0, 1.0, 4.0])
    summary = timing.summary(work=8.0, unit="tokens/s")
    assert summary["median_s"] == 2.0 and summary["rate"] == 4.0
    assert (summary["rate_min"], summary["rate_max"]) == (2.0, 8.0) and summary["first_call_s"] == 9.0


def test_fitted_exponent_recovers_a_power_law():
    from rl_scaling import fitted_exponent

    assert fitted_exponent([1, 2, 4, 8], [3 * w**1.5 for w in [1, 2, 4, 8]]) == pytest.approx(1.5)


@pytest.mark.slow
def test_rl_scaling_smoke(tmp_path):
    import rl_scaling

    out = tmp_path / "rl.json"
    rl_scaling.main(["--repeats", "1", "--seeds", "2", "--batch-sizes", "8", "16", "--horizons", "4", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["seeds"]["num_seeds"] == 2 and results["seeds"]["ratio"] > 0
    assert results["scaling"]["batch_exponent"] is not None and "machine" in results


@pytest.mark.slow
def test_generation_smoke_on_the_real_model(tmp_path):
    import generation

    out = tmp_path / "gen.json"
    generation.main(["--batch-sizes", "2", "--new-tokens", "3", "--repeats", "1", "--no-peer", "--out", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    assert row["batch"] == 2 and 0 < row["jirl"]["tokens_per_call"] <= 6
    assert 0 < row["jirl"]["compute_roofline_fraction"] < 1 and 0 < row["jirl"]["memory_roofline_fraction"]
