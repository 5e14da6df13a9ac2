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

``restore(abstract_state)`` loads the newest complete checkpoint and, if that one turns out to
be unreadable (truncated or missing files), warns and falls back to the one before.
"""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import warnings
from typing import Any

import jax
# orbax-checkpoint 0.12 exposes v1 as an attribute only (the package is
# orbax.checkpoint.experimental.v1), so `import orbax.checkpoint.v1` would fail.
from orbax.checkpoint import v1 as ocp

from jirl.config import JirlError

STATE = "state"  # name of the checkpointable holding the state pytree
COMMIT_MARKER = "commit_success.txt"  # written by Orbax as the last step of every save
METADATA = "metadata"  # keys of the step's custom metadata
KEY_IMPLS = "prng_key_impls"


class CheckpointNotFoundError(JirlError, FileNotFoundError):
    """No (usable) checkpoint where one was asked for."""


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
        """Steps of the complete checkpoints, ascending."""
        if not self.directory.is_dir():
            return []
        named = (int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        return sorted(step for step in named if self.is_complete(step))

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None when there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, metadata: dict) -> None:
        """Save ``state`` (a pytree of arrays) and JSON ``metadata`` as checkpoint ``step``,
        then delete all but the newest ``keep_last`` checkpoints. Blocks until committed.

        Raises ``FileExistsError`` if checkpoint ``step`` exists already (it is kept as it is).
        """
        step = int(step)
        check_json(metadata)
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
        leaves without a sharding go to the default device); return ``(state, metadata)``."""
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise CheckpointNotFoundError(
                    f"no complete checkpoint for step {step} in {self.directory}; "
                    f"available steps: {steps}"
                )
            return self._load(step, abstract_state)
        if not steps:
            raise CheckpointNotFoundError(
                f"no complete checkpoint in {self.directory}; to start fresh, don't resume, "
                "or point the run at a new output directory"
            )
        return self._load_newest_readable(steps, abstract_state)

    def metadata(self, step: int | None = None) -> dict:
        """The JSON metadata saved with checkpoint ``step`` (default: the newest), without
        loading any arrays: check a run's config before restoring into its shapes."""
        steps = self.steps()
        if not steps:
            raise CheckpointNotFoundError(f"no complete checkpoint in {self.directory}")
        step = steps[-1] if step is None else step
        custom = ocp.metadata(self.step_path(step)).custom_metadata or {}
        if METADATA not in custom:
            raise CheckpointNotFoundError(f"checkpoint {self.step_path(step)} has no readable metadata")
        return custom[METADATA]

    def _load_newest_readable(self, steps: list[int], abstract_state: Any) -> tuple[Any, dict]:
        newest_first = steps[::-1]
        failures = []
        for step, earlier in zip(newest_first, newest_first[1:] + [None]):
            try:
                return self._load(step, abstract_state)
            except Exception as error:  # noqa: BLE001 - any failure means "unreadable"
                failure = (
                    f"checkpoint {self.step_path(step)} is unreadable "
                    f"({type(error).__name__}: {error})"
                )
                failures.append(failure)
                if earlier is not None:
                    warnings.warn(f"{failure}; falling back to step {earlier}", stacklevel=3)
        raise CheckpointNotFoundError(
            f"no readable checkpoint in {self.directory}:\n" + "\n".join(failures)
        )

    def _load(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        path = self.step_path(step)
        custom = ocp.metadata(path).custom_metadata or {}
        if METADATA not in custom or KEY_IMPLS not in custom:
            raise ValueError("its step metadata (_CHECKPOINT_METADATA) is missing or unreadable")
        loaded = ocp.load_checkpointables(path, {STATE: abstract_to_load(abstract_state)})
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


def check_json(metadata: dict) -> None:
    """Raise TypeError unless ``metadata`` can be written as JSON."""
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as error:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {error}") from error
