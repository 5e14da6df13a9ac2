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


def test_forward_flops_count_every_matmul_parameter_of_the_model():
    """The FLOP formula against a brute-force count: 2 x every kernel and embedding parameter
    of a built model (the tied embedding doubles as the LM head), attention apart."""
    import jax
    from flax import nnx
    from harness import forward_flops_per_token

    from jirl.models.transformer import Transformer, TransformerConfig

    for family in ("llama", "gpt2"):
        config = TransformerConfig(vocab_size=96, family=family, d_model=32, num_layers=3, num_heads=4, max_len=16)
        params = nnx.state(Transformer(config, rngs=nnx.Rngs(0)), nnx.Param)
        counted = 0
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            name = jax.tree_util.keystr(path)
            if "kernel" in name or ("embed" in name and "pos" not in name):
                counted += leaf.size
        assert forward_flops_per_token(config, context=0) == 2 * counted, family
        assert forward_flops_per_token(config, context=10) - forward_flops_per_token(config, context=0) == 4 * 3 * 32 * 10


@pytest.mark.slow
def test_training_smoke(tmp_path):
    import training

    out = tmp_path / "training.json"
    training.main(["--batch", "4", "--seq", "16", "--steps", "1", "--warmup", "1", "--no-peer", "--breakdown", "--out", str(out)])
    results = json.loads(out.read_text())
    rows = {row["step"]: row for row in results["rows"]}
    assert set(rows) == {"dpo", "grpo"}
    assert all(0 < row["jirl"]["mfu"] < 1 and row["jirl"]["rate"] > 0 for row in rows.values())
    assert set(results["dpo_breakdown"]) == {"layers_forward", "layers_forward_backward", "head_forward", "head_forward_backward"}


@pytest.mark.slow
def test_profile_rl_smoke(tmp_path):
    import profile_rl

    out = tmp_path / "profile.json"
    profile_rl.main(["--batch", "4", "--seq", "16", "--repeats", "1", "--trace", str(tmp_path / "trace"), "--out", str(out)])
    phases = json.loads(out.read_text())["phases"]
    assert set(phases) == {"sample", "score", "update"}
    assert sum(p["fraction"] for p in phases.values()) == pytest.approx(1.0)
    assert list((tmp_path / "trace").rglob("*.xplane.pb"))


def test_profile_decode_smoke(tmp_path):
    import profile_decode

    out = tmp_path / "profile_decode.json"
    profile_decode.main(["--tiny", "--batch", "2", "--prompt", "4", "--new-tokens", "2", "--repeats", "1", "--out", str(out)])
    parts = json.loads(out.read_text())["milliseconds"]
    assert set(parts) == {"step", "forward", "layer_matmuls", "lm_head", "attention", "sampling"}
    assert all(ms > 0 for ms in parts.values())


@pytest.mark.slow
def test_devices_smoke_shows_sharded_runs_equal_one_device(tmp_path):
    import subprocess

    out = tmp_path / "devices.json"
    subprocess.run(
        [sys.executable, str(BENCHMARKS / "devices.py"), "--devices", "1", "2", "--steps", "2", "--repeats", "1",
         "--batch", "4", "--seq", "16", "--out", str(out)],
        check=True, capture_output=True, text=True,
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(r["devices"], r["mesh"]) for r in rows] == [(1, "data"), (2, "data"), (2, "fsdp")]
    assert all(r["equal"] for r in rows)


@pytest.mark.slow
def test_dtypes_smoke(tmp_path):
    import dtypes

    out = tmp_path / "dtypes.json"
    dtypes.main(["--small", "--repeats", "1", "--steps", "1", "--batch", "2", "--seq", "16", "--out", str(out)])
    results = json.loads(out.read_text())
    assert set(results["dpo_step"]) == {"float32", "bfloat16", "bf16_speedup"}
    assert all(row["float32"]["gflops_per_s"] > 0 and row["bf16_speedup"] > 0 for row in results["matmuls"].values())
