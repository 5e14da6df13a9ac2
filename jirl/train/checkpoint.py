"""Checkpoints of the train state and run metadata (DESIGN.md contract 8), on Orbax's v1 API.

``CheckpointManager(directory, keep_last=3)`` saves step ``s`` into ``directory/<s>`` through
Orbax's ``v1.training.Checkpointer`` and reads it back with ``v1.load_checkpointables``:

- the state pytree (params, optimizer state, step, PRNG key, ...) is the checkpointable
  ``"state"``; typed PRNG keys are stored as their raw ``key_data`` (uint32) and the key
  implementation is recorded, so a restore gives back a typed key of the same impl;
- the JSON ``metadata`` (config, data-iterator state, ...) is the step's custom metadata.

A save is atomic: Orbax writes into ``<s>.orbax-checkpoint-tmp``, writes
``commit_success.txt`` and only then renames the folder to ``<s>``. A step counts as complete
only if it has that name and that file, so a killed save is never mistaken for a checkpoint.
Old checkpoints are removed (Orbax's ``LatestN`` policy) only after the new one is committed.

Fallback, which cannot get stuck: ``restore(abstract_state)`` and ``metadata()`` (both without
a ``step``) use the newest readable checkpoint. A checkpoint that is unreadable (truncated or
missing array data, an unreadable ``_CHECKPOINT_METADATA`` or tree ``_METADATA``) and a step
folder without commit marker (e.g. an empty ``<s>``) are *moved aside*, never deleted: renamed
to ``directory/<s>.corrupt-<n>`` (first free ``n``), a name that neither this class nor Orbax
lists as a step, with a warning naming the step and the new folder. So a resumed run can save
step ``s`` again, and a second resume sees only good checkpoints. ``save`` moves incomplete
step folders aside too. A load that fails because the checkpoint holds arrays of other shapes
than the state to restore into is the caller's mistake, not damage: it raises
``CheckpointMismatchError`` and moves nothing.

If no checkpoint is readable, all are moved aside and ``NoReadableCheckpointError`` (a
``CheckpointNotFoundError``) is raised. The folder then holds no checkpoint, which
``jirl.train.loop.fit(..., resume=True)`` treats like a run stopped before its first
checkpoint: it warns and trains from step 0.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import pathlib
import warnings
from typing import Any, Callable

import jax
# orbax-checkpoint 0.12 exposes v1 as an attribute only (the package is
# orbax.checkpoint.experimental.v1), so `import orbax.checkpoint.v1` would fail.
from orbax.checkpoint import v1 as ocp

from jirl.config import JirlError

STATE = "state"  # name of the checkpointable holding the state pytree
COMMIT_MARKER = "commit_success.txt"  # written by Orbax as the last step of every save
METADATA = "metadata"  # keys of the step's custom metadata
KEY_IMPLS = "prng_key_impls"
MOVED_ASIDE = ".corrupt-"  # an unreadable step folder <s> becomes <s>.corrupt-<n>


class CheckpointNotFoundError(JirlError, FileNotFoundError):
    """No (usable) checkpoint where one was asked for."""


class NoReadableCheckpointError(CheckpointNotFoundError):
    """Every checkpoint of the folder was unreadable; all were moved aside, so the folder now
    holds none (a resumed run starts from step 0)."""


class CheckpointMismatchError(JirlError, ValueError):
    """A checkpoint holds other arrays (shapes) than the state asked to restore into."""


# --------------------------------------------------------------------------- typed PRNG keys


def is_typed_key(leaf: Any) -> bool:
    """Whether ``leaf`` is a typed PRNG key array (``jax.random.key``), which Orbax cannot save
    as is."""
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def keys_to_data(state: Any) -> tuple[Any, dict[str, str]]:
    """Replace each typed PRNG key by its raw key data; return the new tree and
    ``{key path: impl name}`` for the keys replaced."""
    impls: dict[str, str] = {}

    def encode(path, leaf):
        if not is_typed_key(leaf):
            return leaf
        impls[jax.tree_util.keystr(path)] = str(jax.random.key_impl(leaf))
        return jax.random.key_data(leaf)

    return jax.tree_util.tree_map_with_path(encode, state), impls


def data_to_keys(state: Any, abstract_state: Any, impls: dict[str, str]) -> Any:
    """Wrap the raw key data back into typed keys wherever ``abstract_state`` has a key."""

    def decode(path, abstract_leaf, leaf):
        if not is_typed_key(abstract_leaf):
            return leaf
        name = jax.tree_util.keystr(path)
        if name not in impls:
            raise ValueError(f"the checkpoint holds no PRNG key at {name}")
        return jax.random.wrap_key_data(leaf, impl=impls[name])

    return jax.tree_util.tree_map_with_path(decode, abstract_state, state)


# --------------------------------------------------------------------------- abstract state


def default_sharding() -> jax.sharding.Sharding:
    """Where JAX puts an array created without a sharding: the first local device."""
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def abstract_leaf_to_load(leaf: Any) -> Any:
    """The ``jax.ShapeDtypeStruct`` Orbax restores into for one leaf of the target state.

    Keys become their key data (same sharding: key-data dims are trailing). A leaf without a
    sharding goes to the default device, like a freshly created array.
    """
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
        return leaf  # python scalars and the like
    sharding = getattr(leaf, "sharding", None) or default_sharding()
    data = jax.eval_shape(jax.random.key_data, leaf) if is_typed_key(leaf) else leaf
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)


def abstract_to_load(abstract_state: Any) -> Any:
    """``abstract_leaf_to_load`` over a whole (abstract or concrete) target state: the
    ``jax.ShapeDtypeStruct`` tree that Orbax restores into."""
    return jax.tree.map(abstract_leaf_to_load, abstract_state)


# --------------------------------------------------------------------------- the manager


class CheckpointManager:
    """Saves and restores numbered checkpoints of a training run under ``directory``.

    Call ``save``/``restore`` on every process of a multi-host run. Use as a context manager
    (or call ``close``) to release Orbax's background resources.
    """

    def __init__(self, directory: str | pathlib.Path, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        self.directory = pathlib.Path(directory).absolute()
        self.keep_last = keep_last

    @functools.cached_property
    def _checkpointer(self) -> ocp.training.Checkpointer:
        # Created on first use, so that looking for checkpoints creates no directory.
        return ocp.training.Checkpointer(
            self.directory,
            preservation_policy=ocp.training.preservation_policies.LatestN(n=self.keep_last),
            cleanup_tmp_directories=True,  # leftovers of killed saves
        )

    def step_path(self, step: int) -> pathlib.Path:
        """The folder of checkpoint ``step``, ``directory / str(step)``."""
        return self.directory / str(step)

    def is_complete(self, step: int) -> bool:
        """Whether checkpoint ``step`` was fully written (its commit marker exists)."""
        return (self.step_path(step) / COMMIT_MARKER).is_file()

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending. (Folders moved aside,
        ``<s>.corrupt-<n>``, are no steps, neither here nor for Orbax.)"""
        return sorted(step for step in self._step_folders() if self.is_complete(step))

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None when there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, metadata: dict) -> None:
        """Save ``state`` (a pytree of arrays) and JSON ``metadata`` as checkpoint ``step``,
        then delete all but the newest ``keep_last`` checkpoints. Blocks until committed.

        Raises ``FileExistsError`` if checkpoint ``step`` exists already (it is kept as it is).
        Incomplete step folders (no commit marker, e.g. an empty ``<step>``) are moved aside
        first, with a warning: Orbax would refuse to save their steps.
        """
        step = int(step)
        check_json(metadata)
        self._move_aside_incomplete(stacklevel=3)
        state_data, key_impls = keys_to_data(state)
        try:
            self._checkpointer.save_checkpointables(
                step,
                {STATE: state_data},
                force=True,  # the caller decides when to save, not Orbax's save policy
                custom_metadata={METADATA: metadata, KEY_IMPLS: key_impls},
            )
        except BaseException:
            # After a failed save the Checkpointer's list of steps is wrong (it forgets the
            # earlier ones) and it re-raises the old error on the next save: start afresh.
            self._discard_checkpointer()
            raise

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Load checkpoint ``step`` (default: the newest readable one) into the structure,
        dtypes, shapes and shardings of ``abstract_state`` (arrays or ``jax.ShapeDtypeStruct``s;
        leaves without a sharding go to the default device); return ``(state, metadata)``.

        Without ``step``, unreadable checkpoints and incomplete step folders are moved aside
        with a warning (see the module docstring) and the next older checkpoint is tried;
        ``NoReadableCheckpointError`` if none is left. ``CheckpointMismatchError`` (nothing
        moved) if the newest checkpoint holds arrays of other shapes."""
        if step is not None:
            steps = self.steps()
            if step not in steps:
                raise CheckpointNotFoundError(
                    f"no complete checkpoint for step {step} in {self.directory}; "
                    f"available steps: {steps}"
                )
            return self._load(step, abstract_state)
        return self._newest_readable(functools.partial(self._load, abstract_state=abstract_state), abstract_state)

    def metadata(self, step: int | None = None) -> dict:
        """The JSON metadata saved with checkpoint ``step`` (default: the newest readable), without
        loading any arrays: check a run's config before restoring into its shapes.

        Without ``step``, checkpoints whose metadata is unreadable (they cannot be restored
        either) and incomplete step folders are moved aside, as in ``restore``."""
        if step is None:
            return self._newest_readable(lambda step: self._custom_metadata(step)[METADATA])
        if step not in self.steps():
            raise CheckpointNotFoundError(f"no complete checkpoint for step {step} in {self.directory}")
        try:
            return self._custom_metadata(step)[METADATA]
        except Exception as error:  # noqa: BLE001
            raise CheckpointNotFoundError(
                f"checkpoint {self.step_path(step)} has no readable metadata ({brief(error)})"
            ) from error

    # ----------------------------------------------------------------------- fallback

    def _newest_readable(self, read: Callable[[int], Any], abstract_state: Any = None) -> Any:
        """``read(step)`` of the newest checkpoint it succeeds on, moving aside incomplete step
        folders and each checkpoint it fails on (unless ``abstract_state`` does not match)."""
        self._move_aside_incomplete(stacklevel=4)
        newest_first = self.steps()[::-1]
        if not newest_first:
            raise CheckpointNotFoundError(
                f"no complete checkpoint in {self.directory}; to start fresh, don't resume, "
                "or point the run at a new output directory"
            )
        failures = []
        for step, earlier in zip(newest_first, newest_first[1:] + [None]):
            try:
                return read(step)
            except Exception as error:  # noqa: BLE001 - any failure of the files means "unreadable"
                if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error):
                    raise  # out of memory says nothing about the checkpoint
                if abstract_state is not None:
                    mismatch = self._mismatch(step, abstract_state)
                    if mismatch is not None:
                        raise CheckpointMismatchError(
                            f"cannot restore checkpoint {self.step_path(step)}: {mismatch}. Restore "
                            "with the model and optimizer settings of the run that saved it."
                        ) from error
                moved_to = self._move_aside(step)
                failure = (
                    f"checkpoint {self.step_path(step)} is unreadable ({brief(error)}); "
                    f"moved step {step} aside to {moved_to}"
                )
                failures.append(failure)
                then = f"falling back to step {earlier}" if earlier is not None else "no checkpoint is left"
                warnings.warn(f"{failure}; {then}", stacklevel=3)
        raise NoReadableCheckpointError(
            f"no readable checkpoint in {self.directory}: all {len(failures)} were unreadable and "
            "were moved aside, so the folder now holds none: resuming (again) trains from step 0. "
            "The moved folders are kept (delete them when you no longer need them):\n"
            + "\n".join(failures)
        )

    def _step_folders(self) -> list[int]:
        """Steps of all folders named like a step (``<s>``), complete or not."""
        if not self.directory.is_dir():
            return []
        return [int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir()]

    def _move_aside_incomplete(self, stacklevel: int) -> None:
        """Move aside step folders without commit marker (an empty ``<s>``, a save that died
        outside Orbax's temporary folder): Orbax would count them as steps and refuse to save
        those steps again."""
        for step in sorted(self._step_folders()):
            if not self.is_complete(step):
                moved_to = self._move_aside(step)
                warnings.warn(
                    f"checkpoint folder {self.step_path(step)} is incomplete (no {COMMIT_MARKER}); "
                    f"moved step {step} aside to {moved_to}",
                    stacklevel=stacklevel,
                )

    def _move_aside(self, step: int) -> pathlib.Path:
        """Rename folder ``<step>`` to the first free ``<step>.corrupt-<n>``; return the new path.
        Only process 0 renames (the folder is shared); the others just stop using it."""
        source = self.step_path(step)
        count = 1
        while (target := self.directory / f"{step}{MOVED_ASIDE}{count}").exists():
            count += 1
        if jax.process_index() == 0:
            try:
                os.rename(source, target)
            except OSError as error:
                raise JirlError(
                    f"checkpoint folder {source} is unreadable and could not be moved aside to {target} "
                    f"({error}); move or delete it by hand, then resume again"
                ) from error
        self._discard_checkpointer()  # its list of steps is out of date
        return target

    def _mismatch(self, step: int, abstract_state: Any) -> str | None:
        """How the arrays saved in checkpoint ``step`` differ (shapes) from those of
        ``abstract_state``; None if they agree or the saved tree metadata is unreadable (then the
        failed load is the checkpoint's fault)."""
        try:
            saved = ocp.metadata(self.step_path(step)).metadata
        except Exception:  # noqa: BLE001
            return None
        have, want = array_shapes(saved), array_shapes(abstract_to_load(abstract_state))
        if have == want or not have:  # Orbax gives None when it cannot read the arrays' metadata
            return None
        only_saved = sorted((have - want).elements())[:3]
        only_wanted = sorted((want - have).elements())[:3]
        return (
            f"it holds {have.total()} arrays, the state to restore into has {want.total()}; "
            f"shapes only in the checkpoint: {only_saved}, only in the state: {only_wanted}"
        )

    def _custom_metadata(self, step: int) -> dict:
        custom = ocp.metadata(self.step_path(step)).custom_metadata or {}
        if METADATA not in custom or KEY_IMPLS not in custom:
            raise ValueError("its step metadata (_CHECKPOINT_METADATA) is missing or unreadable")
        return custom

    def _load(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        custom = self._custom_metadata(step)
        loaded = ocp.load_checkpointables(self.step_path(step), {STATE: abstract_to_load(abstract_state)})
        return data_to_keys(loaded[STATE], abstract_state, custom[KEY_IMPLS]), custom[METADATA]

    def close(self) -> None:
        """Release Orbax's background resources (a later ``save``/``restore`` opens them again)."""
        checkpointer = self.__dict__.pop("_checkpointer", None)
        if checkpointer is not None:
            checkpointer.close()

    def _discard_checkpointer(self) -> None:
        with contextlib.suppress(Exception):  # closing re-raises the error of the failed save
            self.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def array_shapes(tree: Any) -> collections.Counter:
    """The multiset of the shapes of the array leaves of ``tree`` (arrays,
    ``jax.ShapeDtypeStruct``s or Orbax ``ArrayMetadata``). Dtypes are left out: Orbax casts."""
    return collections.Counter(
        tuple(leaf.shape) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape") and hasattr(leaf, "dtype")
    )


def brief(error: BaseException) -> str:
    """``Type: first line of the message`` of the root cause of ``error`` (Orbax wraps a
    TensorStore read error in a vague one), without TensorStore's spec, at most 300 characters."""
    seen = {id(error)}
    while (inner := error.__cause__ or error.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        error = inner
    lines = str(error).strip().strip("\"'").splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".split(" [tensorstore_spec")[0]
    return text if len(text) <= 300 else text[:297] + "..."


def check_json(metadata: dict) -> None:
    """Raise TypeError unless ``metadata`` can be written as JSON."""
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as error:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {error}") from error
