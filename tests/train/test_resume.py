"""Exact resume after SIGKILL, refusal of incompatible resumes, and NaN stops (contract 8)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.cli import main
from jirl.experiment import RunDir
from jirl.models.transformer import Transformer, llama_tiny
from jirl.train.checkpoint import CheckpointManager
from jirl.train.loop import NonFiniteLossError, TrainConfig, fit
from jirl.train.losses import LossOutput
from jirl.train.sft import sft_loss
from jirl.train.step import init_train_state, make_update_step

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "train.steps=40", "train.checkpoint_every=8", "train.eval_every=10", "num_demos=256", "train.batch_size=32",
    "rl_iterations=5", "settings.afd.steps=20",  # a short IRL stage: it reruns from its start on --resume
    "seeds=1",
]


def jirl_command(out, *extra):
    return [sys.executable, "-m", "jirl.cli", "run", "quickstart", "--out", str(out), "--set", *SMALL, *extra]


def metric_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.heavy  # three quickstart processes (~200 s in CI); test_a_run_stopped_mid_way_and_resumed_... checks the same resume in-process
def test_a_run_killed_at_a_random_step_and_resumed_writes_identical_metrics(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    straight = tmp_path / "straight"
    subprocess.run(jirl_command(straight), env=env, cwd=tmp_path, check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    kill_after = random.Random().randint(10, 35)  # metrics lines, i.e. roughly the step
    process = subprocess.Popen(jirl_command(killed), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while metric_lines(killed / "metrics.jsonl") < kill_after and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(jirl_command(killed, "--resume"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (killed / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes(), f"killed after {kill_after} lines"
    results = [json.loads((d / "results.json").read_text()) for d in (straight, killed)]
    assert results[0] == results[1]


def test_resuming_with_a_different_config_is_refused_with_the_keys(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    tiny = ["train.steps=4", "train.checkpoint_every=4", "train.eval_every=4", "num_demos=64", "rl_iterations=1", "settings.afd.steps=2", "seeds=1"]
    # A run saves its config before training starts; the training itself is not needed here.
    monkeypatch.setattr("jirl.experiment.timed_call", lambda experiment, config, run: ({}, 0.0))
    assert main(["run", "quickstart", "--out", str(out), "--set", *tiny]) == 0
    capsys.readouterr()
    code = main(["run", "quickstart", "--out", str(out), "--resume", "--set", *tiny, "train.learning_rate=0.1", "seed=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.learning_rate" in err and "seed" in err and "train.steps" not in err


TINY = ["train.steps=4", "train.checkpoint_every=2", "train.eval_every=2", "num_demos=64", "train.batch_size=16",
        "rl_iterations=1", "settings.afd.steps=2", "seeds=1"]


@pytest.mark.slow
def test_a_run_killed_while_preparing_data_resumes_in_its_folder_like_a_fresh_run(tmp_path, capsys):
    straight = tmp_path / "straight"
    assert main(["run", "quickstart", "--out", str(straight), "--set", *TINY]) == 0
    # What a kill during data preparation leaves: the config, a half-written TFDS build, and
    # possibly metrics of a stage that never reached a checkpoint.
    killed = tmp_path / "killed"
    built = next((straight / "data").glob("task_demonstrations/*/1.0.0"))  # <dataset>/<config>/<version>
    leftover = killed / built.parent.relative_to(straight) / f"incomplete.AB12CD_{built.name}"
    leftover.mkdir(parents=True)
    (leftover / "task_demonstrations-train.array_record-00000-of-00001").write_bytes(b"half")
    (killed / "config.json").write_text((straight / "config.json").read_text())
    (killed / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    capsys.readouterr()

    assert main(["run", "quickstart", "--out", str(killed), "--resume", "--set", *TINY]) == 0
    assert "training starts from step 0" in capsys.readouterr().out
    assert not leftover.exists()
    assert json.loads((killed / "results.json").read_text()) == json.loads((straight / "results.json").read_text())
    assert (killed / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()


def test_resume_with_a_saved_config_of_other_settings_lists_them(tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"experiment": "quickstart", "config": {"seed": 7}}))
    assert main(["run", "quickstart", "--out", str(out), "--resume"]) == 2
    assert "differs from the saved run in" in capsys.readouterr().err


class CrashingBatches:
    """``PoisonedBatches`` (never poisoned) whose process dies when asked for batch ``crash_at``."""

    def __init__(self, crash_at: int | None = None):
        self.batches, self.crash_at = PoisonedBatches(poison_at=-1), crash_at

    def __next__(self):
        if self.batches.position + 1 == self.crash_at:
            raise KeyboardInterrupt  # what fit sees of a killed run: nothing after this point
        return next(self.batches)

    def get_state(self):
        return self.batches.get_state()

    def set_state(self, state):
        self.batches.set_state(state)


def test_a_run_stopped_mid_way_and_resumed_writes_the_metrics_of_an_uninterrupted_run(tmp_path):
    graphdef = nnx.split(Transformer(llama_tiny(7, max_len=16), rngs=nnx.Rngs(0)))[0]
    optimizer = optax.adam(1e-2)
    step_fn = make_update_step(sft_loss(graphdef), optimizer)
    train = TrainConfig(steps=12, checkpoint_every=4, eval_every=3, log_every=1)  # every step logged before the crash
    evaluate = jax.jit(lambda state: {"param_norm": optax.tree.norm(state.params)})

    def run(folder, batches, resume=False, init_seed=0):
        state = init_train_state(nnx.split(Transformer(llama_tiny(7, max_len=16), rngs=nnx.Rngs(init_seed)))[1], optimizer, jax.random.key(init_seed))
        return fit(RunDir(tmp_path / folder, console=None), step_fn, state, batches, config={"x": 1}, train=train,
                   resume=resume, evaluate=evaluate, progress=False)

    straight = run("straight", CrashingBatches())
    crash_at = random.Random().randint(6, 11)  # after the step-4 checkpoint, before the end
    with pytest.raises(KeyboardInterrupt):
        run("stopped", CrashingBatches(crash_at))
    assert metric_lines(tmp_path / "stopped" / "metrics.jsonl") > 4  # steps past the checkpoint were logged
    resumed = run("stopped", CrashingBatches(), resume=True, init_seed=1)  # other initial weights: all must come from the checkpoint

    read = lambda folder: (tmp_path / folder / "metrics.jsonl").read_bytes()  # noqa: E731
    assert read("stopped") == read("straight"), f"stopped before batch {crash_at}"
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.params, straight.params)


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_zero(tmp_path):
    graphdef = nnx.split(Transformer(llama_tiny(7, max_len=16), rngs=nnx.Rngs(0)))[0]
    optimizer = optax.adam(1e-2)
    step_fn = make_update_step(sft_loss(graphdef), optimizer)
    train = TrainConfig(steps=6, checkpoint_every=4, eval_every=1, log_every=1)

    def run(folder, batches, resume=False):
        state = init_train_state(nnx.split(Transformer(llama_tiny(7, max_len=16), rngs=nnx.Rngs(0)))[1], optimizer, jax.random.key(0))
        return fit(RunDir(tmp_path / folder, console=None), step_fn, state, batches, config={"x": 1}, train=train,
                   resume=resume, progress=False)

    straight = run("straight", CrashingBatches())
    with pytest.raises(KeyboardInterrupt):
        run("stopped", CrashingBatches(crash_at=3))  # before the step-4 checkpoint
    assert metric_lines(tmp_path / "stopped" / "metrics.jsonl") == 2
    resumed = run("stopped", CrashingBatches(), resume=True)
    read = lambda folder: (tmp_path / folder / "metrics.jsonl").read_bytes()  # noqa: E731
    assert read("stopped") == read("straight")  # the two stale rows are not kept twice
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.params, straight.params)


class PoisonedBatches:
    """Batches whose ``poison`` flag turns the loss into NaN at one step."""

    def __init__(self, poison_at: int):
        self.poison_at, self.position = poison_at, 0

    def __next__(self):
        self.position += 1
        rng = np.random.default_rng(self.position)
        tokens = rng.integers(1, 7, (8, 8)).astype(np.int32)
        return {
            "tokens": tokens,
            "prompt_len": np.full(8, 2, np.int32),
            "response_len": np.full(8, 5, np.int32),
            "poison": np.full(8, self.position == self.poison_at),
        }

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_good_checkpoint(tmp_path):
    graphdef, params = nnx.split(Transformer(llama_tiny(7, max_len=16), rngs=nnx.Rngs(0)))
    sft = sft_loss(graphdef)

    def loss_fn(params, batch, key):
        out, metrics = sft(params, batch, key)
        return LossOutput(jnp.where(batch["poison"][0], jnp.nan, out.total), out.count), metrics

    optimizer = optax.adam(1e-3)
    state = init_train_state(params, optimizer, jax.random.key(0))
    run = RunDir(tmp_path, console=None)
    train = TrainConfig(steps=20, checkpoint_every=5, eval_every=100)
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf at step 7 \(metrics of that step: .*\); .*last good checkpoint \(step 5\)"):
        fit(run, make_update_step(loss_fn, optimizer), state, PoisonedBatches(poison_at=7),
            config={"x": 1}, train=train, progress=False)
    manager = CheckpointManager(tmp_path / "checkpoints")
    assert manager.steps() == [5]
    restored, metadata = manager.restore(jax.eval_shape(lambda: state))
    assert int(restored.step) == 5 and metadata["data_state"] == {"position": 5}
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(restored.params))
    assert metric_lines(tmp_path / "metrics.jsonl") == 6  # steps 1-6 logged, step 7 not
