"""``jirl run rm_noise`` on a reduced configuration, and the HH reward model above chance."""

import json

import pytest

from jirl.cli import main


@pytest.mark.slow
def test_rm_noise_writes_the_table_and_noise_hurts(tmp_path):
    out = tmp_path / "run"
    args = ["run", "rm_noise", "--out", str(out), "--set", "num_seeds=2", "noise_levels=0,0.4",
            "synthetic.pool_size=2048", "synthetic.num_pairs=1000", "head_steps=300"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["methods"] == ["bt", "classification", "hinge"] and results["noise_levels"] == ["0", "0.4"]
    for method in results["methods"]:
        clean, noisy = (results["accuracy"][method][n]["synthetic"]["mean"] for n in ("0", "0.4"))
        assert noisy < clean, method
        assert results["bon_gain"][method]["0"]["mean"] <= results["bon_gain_oracle"] + 1e-6
    assert results["accuracy"]["bt"]["0"]["synthetic"]["mean"] > 0.75
    # The real HH pairs: kept/dropped counts are reported, and a BT head on the 80 % training
    # split scores above chance on the held-out 20 % (the README states the number).
    hh = results["hh"]
    assert hh["kept"] + sum(hh["dropped"].values()) == 1843
    assert hh["train"] + hh["test"] == hh["kept"]
    assert results["accuracy"]["bt"]["0"]["hh"]["mean"] > 0.5
    assert (out / "rm_noise.png").stat().st_size > 10_000
