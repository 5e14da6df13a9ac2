import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, struct
from orbax.checkpoint._src.path import atomicity  # internal: to fail a save just before commit

from jirl.config import JirlError
from jirl.train.checkpoint import CheckpointManager, CheckpointNotFoundError

METADATA = {
    "config": {"model": {"d_model": 8, "dtype": "bfloat16"}, "lr": 3e-4, "seeds": [0, 1]},
    "data_iterator": {"epoch": 2, "position": 17, "order": "shuffled"},
    "note": None,
}


@struct.dataclass
class TrainState:
    params: nnx.State
    frozen: nnx.State
    opt_state: optax.OptState
    step: jax.Array
    key: jax.Array
    extras: dict


def make_state(seed=0, key_impl=None):
    """A train state with every kind of leaf a run checkpoints."""
    params = nnx.split(nnx.Linear(3, 4, rngs=nnx.Rngs(seed)))[1]
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    rng = np.random.default_rng(seed)
    fp32 = rng.standard_normal((5, 3)).astype(np.float32)
    fp32[0, :3] = [np.nan, -0.0, np.inf]  # values whose bits a lossy round trip would change
    return TrainState(
        params=optax.apply_updates(params, updates),
        frozen=nnx.State({}),
        opt_state=opt_state,
        step=jnp.int32(seed + 1),
        key=jax.random.split(jax.random.key(seed, impl=key_impl))[1],
        extras={
            "bf16": jnp.asarray(rng.standard_normal(6), jnp.bfloat16),
            "fp32": jnp.asarray(fp32),
        },
    )


def raw_bits(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.frombuffer(np.asarray(x).tobytes(), np.uint8)


def assert_bit_identical(restored, saved):
    assert jax.tree.structure(restored) == jax.tree.structure(saved)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(raw_bits(got), raw_bits(want))


def abstract(state):
    return jax.eval_shape(lambda: state)


@pytest.mark.parametrize("template", ["eval_shape", "concrete"])
@pytest.mark.parametrize("key_impl", [None, "rbg"])
def test_round_trip_is_bit_identical(tmp_path, template, key_impl):
    saved = make_state(seed=0, key_impl=key_impl)
    manager = CheckpointManager(tmp_path)
    manager.save(7, saved, METADATA)

    target = abstract(saved) if template == "eval_shape" else make_state(seed=1, key_impl=key_impl)
    restored, metadata = manager.restore(target)

    assert isinstance(restored, TrainState)
    assert_bit_identical(restored, saved)
    assert jax.dtypes.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
    assert jax.random.key_impl(restored.key) == jax.random.key_impl(saved.key)
    assert restored.extras["bf16"].dtype == jnp.bfloat16
    assert metadata == METADATA
    assert manager.steps() == [7] and manager.latest_step() == 7


def test_keeps_only_the_last_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in range(1, 6):
        manager.save(step, {"x": jnp.full(3, step)}, {"step": step})

    assert manager.steps() == [4, 5]
    assert sorted(os.listdir(tmp_path)) == ["4", "5"]
    restored, metadata = manager.restore({"x": jax.ShapeDtypeStruct((3,), jnp.int32)}, step=4)
    assert np.array_equal(restored["x"], np.full(3, 4)) and metadata == {"step": 4}


def truncate_data_files(step_dir):
    data_files = [p for p in (step_dir / "state").rglob("d/*") if p.is_file()]
    assert data_files
    for path in data_files:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


CORRUPTIONS = {
    "truncated data": truncate_data_files,
    "missing tree metadata": lambda step_dir: (step_dir / "state" / "_METADATA").unlink(),
    "unreadable step metadata": lambda step_dir: (
        (step_dir / "_CHECKPOINT_METADATA").write_text("{not json")
    ),
}


# Orbax leaves an unawaited coroutine and a closed event loop behind when a read fails.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_unreadable_latest_falls_back_to_previous(tmp_path, corruption):
    manager = CheckpointManager(tmp_path)
    states = {step: make_state(seed=step) for step in (1, 2)}
    for step, state in states.items():
        manager.save(step, state, {"step": step})
    CORRUPTIONS[corruption](tmp_path / "2")
    (tmp_path / "3").mkdir()  # a step directory without Orbax's commit marker

    assert manager.steps() == [1, 2]
    with pytest.warns(UserWarning, match=f"{tmp_path / '2'} is unreadable.*falling back to step 1"):
        restored, metadata = manager.restore(abstract(states[1]))
    assert_bit_identical(restored, states[1])
    assert metadata == {"step": 1}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_all_unreadable_raises(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(1, {"x": jnp.ones(3)}, {})
    truncate_data_files(tmp_path / "1")
    with pytest.raises(CheckpointNotFoundError, match="no readable checkpoint"):
        manager.restore({"x": jax.ShapeDtypeStruct((3,), jnp.float32)})


KILLED_SAVER = textwrap.dedent(
    """
    import sys, time
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from jirl.train.checkpoint import CheckpointManager

    def hang(self):  # all data is written; the commit is next: the worst moment to die
        print("committing", flush=True)
        time.sleep(600)

    atomicity.AtomicRenameTemporaryPath.finalize = hang
    CheckpointManager(sys.argv[1]).save(2, {"x": jnp.full((256, 1024), 2.0)}, {"step": 2})
    """
)


def test_save_killed_midway_leaves_previous_checkpoint(tmp_path):
    template = {"x": jax.ShapeDtypeStruct((256, 1024), jnp.float32)}
    CheckpointManager(tmp_path).save(1, {"x": jnp.ones((256, 1024))}, {"step": 1})

    saver = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert saver.stdout.readline().strip() == "committing"
    finally:
        saver.send_signal(signal.SIGKILL)
        saver.wait()
    assert saver.returncode == -signal.SIGKILL
    assert len(os.listdir(tmp_path)) == 2  # step 1 and the half-written step 2

    manager = CheckpointManager(tmp_path)
    assert manager.steps() == [1]
    restored, metadata = manager.restore(template)
    assert metadata == {"step": 1} and np.all(restored["x"] == 1)

    manager.save(2, {"x": jnp.full((256, 1024), 2.0)}, {"step": 2})  # also clears the leftover
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]
    assert manager.restore(template)[1] == {"step": 2}


def test_failed_save_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    def fail(self):
        raise OSError("disk full (simulated)")

    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(1, {"x": jnp.ones(3)}, {"step": 1})
    with monkeypatch.context() as patch:
        patch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", fail)
        with pytest.raises(OSError, match="disk full"):
            manager.save(2, {"x": jnp.full(3, 2.0)}, {"step": 2})

    assert manager.steps() == [1]
    assert manager.restore({"x": jax.ShapeDtypeStruct((3,), jnp.float32)})[1] == {"step": 1}
    manager.save(2, {"x": jnp.full(3, 2.0)}, {"step": 2})  # works again and still keeps 1
    assert sorted(os.listdir(tmp_path)) == ["2"]


def test_saving_an_existing_step_raises_and_keeps_it(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(1, {"x": jnp.ones(3)}, {"version": 1})
    with pytest.raises(FileExistsError):
        manager.save(1, {"x": jnp.zeros(3)}, {"version": 2})
    restored, metadata = manager.restore({"x": jax.ShapeDtypeStruct((3,), jnp.float32)})
    assert metadata == {"version": 1} and np.all(restored["x"] == 1)


def test_non_json_metadata_is_rejected_before_writing(tmp_path):
    manager = CheckpointManager(tmp_path)
    with pytest.raises(TypeError, match="JSON"):
        manager.save(1, {"x": jnp.ones(3)}, {"array": np.ones(3)})
    assert manager.steps() == []


def test_missing_checkpoint_error_names_directory(tmp_path):
    directory = tmp_path / "run"
    manager = CheckpointManager(directory)
    with pytest.raises(CheckpointNotFoundError, match="start fresh") as error:
        manager.restore({"x": jax.ShapeDtypeStruct((3,), jnp.float32)})
    assert str(directory) in str(error.value)
    assert isinstance(error.value, JirlError) and isinstance(error.value, FileNotFoundError)
    assert manager.latest_step() is None and not directory.exists()


def test_missing_step_error_lists_available_steps(tmp_path):
    manager = CheckpointManager(tmp_path)
    for step in (10, 20):
        manager.save(step, {"x": jnp.ones(3)}, {})
    with pytest.raises(CheckpointNotFoundError, match=r"step 15 .*available steps: \[10, 20\]"):
        manager.restore({"x": jax.ShapeDtypeStruct((3,), jnp.float32)}, step=15)


def with_sharding(abstract_state, sharding):
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract_state
    )


def test_restore_onto_a_given_device(tmp_path):
    saved = make_state()
    manager = CheckpointManager(tmp_path)
    manager.save(1, saved, {})
    device = jax.devices()[-1]
    sharding = jax.sharding.SingleDeviceSharding(device)

    restored, _ = manager.restore(with_sharding(abstract(saved), sharding))

    assert_bit_identical(restored, saved)
    for leaf in jax.tree.leaves(restored):
        assert leaf.sharding == sharding


@pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")
def test_restore_with_named_sharding(tmp_path):
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    n = 2 * jax.device_count()
    saved = {"keys": jax.random.split(jax.random.key(0), n), "x": jnp.arange(n, dtype=jnp.float32)}
    manager = CheckpointManager(tmp_path)
    manager.save(1, saved, {})

    restored, _ = manager.restore(with_sharding(abstract(saved), sharding))

    assert_bit_identical(restored, saved)
    assert restored["x"].sharding == sharding
    assert restored["keys"].sharding.spec == sharding.spec
