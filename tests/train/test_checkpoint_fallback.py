"""Resume through ``fit`` after damage to the checkpoints: an unreadable checkpoint is moved
aside (``<step>.corrupt-<n>``, never deleted), the run falls back to the newest readable one (or
starts from step 0 if none is left) and ends exactly like an uninterrupted run; later saves of
the moved step and a second resume work (the fallback cannot get stuck)."""

import json
import re
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from orbax.checkpoint import v1 as ocp

from jirl.experiment import RunDir
from jirl.models.transformer import Transformer, llama_tiny
from jirl.train.checkpoint import CheckpointManager, CheckpointMismatchError
from jirl.train.loop import CHECKPOINT_DIR, TrainConfig, fit
from jirl.train.sft import sft_loss
from tests.train.test_checkpoint import truncate_data_files
from jirl.train.step import init_train_state, make_update_step

STEPS, EVERY, STOP_AFTER = 12, 4, 9  # checkpoints at 4, 8 (and 12); the stopped run logs steps 1-9
TRAIN = TrainConfig(steps=STEPS, checkpoint_every=EVERY, eval_every=3, keep_checkpoints=3)
TIMING_FIELDS = ("seconds", "time", "tokens_per_second")

# Orbax leaves an unawaited coroutine and a closed event loop behind when a read fails.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning"),
]


class Batches:
    """Deterministic token batches with a checkpointable position; raises KeyboardInterrupt
    (what ``fit`` sees of a killed run) when asked for batch ``stop_before``."""

    def __init__(self, stop_before: int | None = None):
        self.position, self.stop_before = 0, stop_before

    def __next__(self):
        if self.position + 1 == self.stop_before:
            raise KeyboardInterrupt
        self.position += 1
        rng = np.random.default_rng(self.position)
        return {
            "tokens": rng.integers(1, 7, (8, 8)).astype(np.int32),
            "prompt_len": np.full(8, 2, np.int32),
            "response_len": np.full(8, 5, np.int32),
        }

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


MODEL = llama_tiny(7, max_len=16)
OPTIMIZER = optax.adam(1e-2)
STEP_FN = make_update_step(sft_loss(nnx.split(Transformer(MODEL, rngs=nnx.Rngs(0)))[0]), OPTIMIZER)
EVALUATE = jax.jit(lambda state: {"param_norm": optax.tree.norm(state.params)})


def train(folder, batches, resume=False, init_seed=0):
    params = nnx.split(Transformer(MODEL, rngs=nnx.Rngs(init_seed)))[1]
    state = init_train_state(params, OPTIMIZER, jax.random.key(init_seed))
    return fit(RunDir(folder, console=None), STEP_FN, state, batches, config={"x": 1}, train=TRAIN,
               resume=resume, evaluate=EVALUATE, progress=False)


def metrics(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not any(t in k for t in TIMING_FIELDS)} for row in rows]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run: its folder and final state."""
    folder = tmp_path_factory.mktemp("straight")
    return folder, train(folder, Batches())


@pytest.fixture(scope="module")
def stopped_template(tmp_path_factory):
    """A run killed after step 9, with checkpoints 4 and 8; tests work on copies."""
    folder = tmp_path_factory.mktemp("stopped")
    with pytest.raises(KeyboardInterrupt):
        train(folder, Batches(stop_before=STOP_AFTER + 1))
    assert CheckpointManager(folder / CHECKPOINT_DIR).steps() == [4, 8]
    assert [row["step"] for row in metrics(folder)][-1] == STOP_AFTER
    return folder


@pytest.fixture
def stopped(stopped_template, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(stopped_template, folder)
    return folder


def truncate_step_metadata(step_dir):
    path = step_dir / "_CHECKPOINT_METADATA"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty_folder(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()


def assert_same_as_straight(folder, state, straight):
    straight_folder, straight_state = straight
    assert metrics(folder) == metrics(straight_folder)
    assert int(state.step) == STEPS
    jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, straight_state.params)


def resume_again_is_a_quiet_no_op(folder, straight):
    """A second resume: no warning about checkpoints, nothing trained, nothing changed."""
    before = metrics(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = train(folder, Batches(), resume=True, init_seed=1)
    assert not [w for w in caught if "moved step" in str(w.message) or "unreadable" in str(w.message)]
    assert metrics(folder) == before
    assert_same_as_straight(folder, state, straight)
    assert CheckpointManager(folder / CHECKPOINT_DIR).steps() == [4, 8, 12]


@pytest.mark.slow  # with the shared set-up: three compiled training runs, ~15 s
@pytest.mark.parametrize(
    "corrupt, why",
    [
        (truncate_data_files, "is unreadable"),
        (truncate_step_metadata, r"is unreadable \(ValueError: its step metadata"),
        (empty_folder, "is incomplete"),
    ],
    ids=["truncated array data", "truncated _CHECKPOINT_METADATA", "empty step folder"],
)
def test_an_unreadable_latest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(
    stopped, straight, corrupt, why
):
    checkpoints = stopped / CHECKPOINT_DIR
    corrupt(checkpoints / "8")
    damaged = sorted(p.relative_to(checkpoints / "8") for p in (checkpoints / "8").rglob("*"))

    match = f"{re.escape(str(checkpoints / '8'))} {why}.*moved step 8 aside to {re.escape(str(checkpoints / '8.corrupt-1'))}"
    with pytest.warns(UserWarning, match=match):
        state = train(stopped, Batches(), resume=True, init_seed=1)  # other initial weights: all comes from step 4

    assert_same_as_straight(stopped, state, straight)
    assert CheckpointManager(checkpoints).steps() == [4, 8, 12]  # step 8 was saved again
    moved = checkpoints / "8.corrupt-1"
    assert sorted(p.relative_to(moved) for p in moved.rglob("*")) == damaged  # kept as it was
    resume_again_is_a_quiet_no_op(stopped, straight)


@pytest.mark.slow
@pytest.mark.parametrize("corrupt", [truncate_data_files, truncate_step_metadata, empty_folder],
                         ids=["truncated array data", "truncated _CHECKPOINT_METADATA", "empty step folders"])
def test_with_no_readable_checkpoint_all_are_moved_aside_and_the_run_starts_from_step_0(stopped, straight, corrupt):
    checkpoints = stopped / CHECKPOINT_DIR
    for step in (4, 8):
        corrupt(checkpoints / str(step))

    with pytest.warns(UserWarning, match="moved step [48] aside") as caught:
        state = train(stopped, Batches(), resume=True)  # same initial weights as the straight run
    assert {step for step in (4, 8) for w in caught if f"moved step {step} aside" in str(w.message)} == {4, 8}

    assert_same_as_straight(stopped, state, straight)
    assert CheckpointManager(checkpoints).steps() == [4, 8, 12]
    assert (checkpoints / "4.corrupt-1").is_dir() and (checkpoints / "8.corrupt-1").is_dir()
    resume_again_is_a_quiet_no_op(stopped, straight)


def test_a_step_moved_aside_twice_gets_a_new_name_and_orbax_lists_neither(tmp_path):
    manager = CheckpointManager(tmp_path)
    template = {"x": jax.ShapeDtypeStruct((3,), jnp.float32)}
    manager.save(1, {"x": jnp.ones(3)}, {"step": 1})
    for attempt in (1, 2):
        manager.save(2, {"x": jnp.full(3, 2.0)}, {"step": 2})
        truncate_step_metadata(tmp_path / "2")
        with pytest.warns(UserWarning, match=f"moved step 2 aside to {re.escape(str(tmp_path / f'2.corrupt-{attempt}'))}"):
            assert manager.metadata() == {"step": 1}
        assert manager.restore(template)[1] == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2.corrupt-1", "2.corrupt-2"]
    checkpointer = ocp.training.Checkpointer(tmp_path)
    assert [c.step for c in checkpointer.checkpoints] == [1]  # Orbax's own listing skips them too
    checkpointer.close()
    manager.save(2, {"x": jnp.full(3, 2.0)}, {"step": 2})
    assert manager.steps() == [1, 2] and manager.restore(template)[1] == {"step": 2}
    manager.close()


def test_a_state_of_other_shapes_is_refused_and_nothing_is_moved(tmp_path):
    manager = CheckpointManager(tmp_path)
    for step in (1, 2):
        manager.save(step, {"x": jnp.ones(3)}, {"step": step})
    with pytest.raises(CheckpointMismatchError, match=r"shapes only in the checkpoint: \[\(3,\)\], only in the state: \[\(4,\)\]"):
        manager.restore({"x": jax.ShapeDtypeStruct((4,), jnp.float32)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]
    manager.close()
