"""The tutorials' example scripts (``examples/``) run and their checks pass, so the docs in
``docs/tutorials/`` never describe code that no longer works.

Each script runs in its own process, as a reader would run it: plugins register names in
process-wide registries, and ``devices.py`` must set ``XLA_FLAGS`` before JAX starts.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, tmp_path: Path | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    if tmp_path is not None:
        args = (*args, "--out", str(tmp_path / name))
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert completed.returncode == 0, f"{name}.py failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    return completed.stdout


@functools.cache  # once per process: a plugin registers its names when it runs
def load_example(name: str):
    """The example as a module, without running its ``main``."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_has_a_tutorial_and_an_index_entry():
    index = (ROOT / "docs" / "tutorials" / "README.md").read_text()
    for script in sorted(EXAMPLES.glob("*.py")):
        assert (ROOT / "docs" / "tutorials" / f"{script.stem}.md").is_file(), script.stem
        assert f"({script.stem}.md)" in index, script.stem


@pytest.mark.slow
@pytest.mark.heavy  # the tutorial's full run (~1 min in CI, over the time budget); its loss and the checks the tutorial relies on run in test_new_objective_loss_checks_catch_a_wrong_loss
def test_new_objective(tmp_path):
    stdout = run_example("new_objective", tmp_path=tmp_path)
    assert "chipo (plugin)" in stdout and "OK: chiPO" in stdout


def test_new_objective_loss_checks_catch_a_wrong_loss():
    from jirl.preference.losses import dpo_loss

    example = load_example("new_objective")
    plugin = load_example("plugins/chipo")
    example.check_loss(plugin.chipo_loss)
    with pytest.raises(AssertionError):
        example.check_loss(dpo_loss)  # DPO's link is log z, not z + log z
    with pytest.raises(AssertionError):  # no clip: the gradient does not stop
        example.check_loss(lambda pc, pr, rc, rr, *, beta, r_max=5.0: plugin.chipo_loss(pc, pr, rc, rr, beta=beta, r_max=jnp.inf))


@pytest.mark.slow
def test_the_plugin_loss_registered_once_runs_in_dpo_oracle(tmp_path):
    """examples/plugins/chipo.py registers chipo in PREFERENCE_LOSSES only; dpo_oracle builds it
    from OBJECTIVES by name, with an option from the command line (~20 s)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    out = tmp_path / "chipo"
    settings = ["losses=chipo", "num_pairs=64", "pair_counts=", "online_iterations=0", "train.steps=2",
                "train.eval_every=2", "train.checkpoint_every=2", "train.batch_size=16"]
    command = [sys.executable, "-m", "jirl.cli", "--plugin", str(EXAMPLES / "plugins" / "chipo.py"), "run", "dpo_oracle",
               "--out", str(out), "--set", *settings]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-5000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["losses"]) == {"chipo"} and math.isfinite(results["losses"]["chipo"]["kl_to_optimal"])


def test_the_plugin_loss_takes_exactly_its_arguments():
    plugin = load_example("plugins/chipo")
    from jirl.preference.losses import PREFERENCE_LOSSES, needs_reference

    assert PREFERENCE_LOSSES.options("chipo") == {"r_max": 5.0}
    assert needs_reference("chipo")
    assert PREFERENCE_LOSSES.get("chipo") is plugin.chipo_loss


@pytest.mark.slow
@pytest.mark.heavy  # the tutorial's full run (~1 min in CI, over the time budget); a full RLOO run on the new task; RLOO's convergence is checked on bigram by tests/rl/test_loop.py
def test_new_task(tmp_path):
    stdout = run_example("new_task", tmp_path=tmp_path)
    assert "OK: RLOO closed" in stdout


@pytest.mark.slow
def test_own_preference_data(tmp_path):
    stdout = run_example("own_preference_data", "--steps", "80", tmp_path=tmp_path)
    assert "held-out accuracy" in stdout


@pytest.mark.slow
def test_pretrained_lora_rl():
    stdout = run_example("pretrained_lora_rl")
    assert "learned reward" in stdout


@pytest.mark.slow
def test_devices():
    stdout = run_example("devices")
    assert "8 devices" in stdout and "OK: one device" in stdout
