"""The training loop: compiled steps over a checkpointable data iterator, with logging,
periodic exact evaluation, Orbax checkpoints and exact resume.

    state = fit(run, step_fn, state, batches, steps=300, config=config_dict, resume=False)

``batches`` is any iterator of dicts of NumPy arrays with ``get_state()``/``set_state()``
(``jirl.data.loader``). A checkpoint holds the train state (params, optimizer state, step,
PRNG key), the config and the iterator state, so a resumed run repeats nothing and skips
nothing: its ``metrics.jsonl`` equals an uninterrupted run's, bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Callable, Iterator, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from rich.text import Text

from jirl.config import Check, ConfigError, JirlError, at_least, diff_configs, finite, non_negative, positive
from jirl.run_dir import RunDir
from jirl.train.checkpoint import CheckpointManager, NoReadableCheckpointError
from jirl.train.logging import METRICS_FILE, SAMPLES_FILE, TIMING_FILE, MetricsWriter, TrainLogger, to_floats, truncate_metrics
from jirl.sharding import make_mesh, shard_batch, shard_state
from jirl.train.step import TrainState

CHECKPOINT_DIR = "checkpoints"


class NonFiniteLossError(JirlError, FloatingPointError):
    """The loss or gradient became NaN or infinite."""


class IncompatibleResumeError(JirlError, ValueError):
    """A run was resumed with settings that differ from the checkpointed ones."""


MESH_AXIS = Check(lambda size: size == -1 or size >= 1, "-1 (all devices) or >= 1")


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings shared by training experiments."""

    steps: Annotated[int, at_least(1)] = 300
    batch_size: Annotated[int, at_least(1)] = 64
    learning_rate: Annotated[float, finite, non_negative] = 3e-3
    warmup_steps: Annotated[int, non_negative] = 20
    weight_decay: Annotated[float, finite, non_negative] = 0.0
    clip_norm: Annotated[float, positive] = 1.0
    accumulation_steps: Annotated[int, at_least(1)] = 1
    checkpoint_every: Annotated[int, at_least(1)] = 100
    keep_checkpoints: Annotated[int, at_least(1)] = 3
    eval_every: Annotated[int, at_least(1)] = 50
    log_every: Annotated[int, at_least(1)] = 10  # steps between host reads of the metrics (each step is still logged)
    mesh_data: Annotated[int, MESH_AXIS] = -1  # data-parallel axis size (-1: all devices / fsdp)
    mesh_fsdp: Annotated[int, at_least(1)] = 1
    sharding: Literal["replicate", "fsdp"] = "replicate"

    def validate(self) -> None:
        """Gradient accumulation must split a batch into equal micro-batches."""
        if self.batch_size % self.accumulation_steps:
            raise ConfigError(
                f"batch_size={self.batch_size} is not divisible by accumulation_steps={self.accumulation_steps}; "
                "change one so that micro-batches are equal"
            )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warm-up then cosine decay, after global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, max(config.warmup_steps, 1), max(config.steps, config.warmup_steps + 1)
    )
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.adamw(schedule, weight_decay=config.weight_decay))


def tokens_in(batch: dict) -> int:
    """Real (non-pad) tokens of a batch, for throughput."""
    if "prompt_len" in batch and "response_len" in batch:
        return int(np.sum(batch["prompt_len"]) + np.sum(batch["response_len"]))
    if "chosen_len" in batch and "rejected_len" in batch:  # preference pairs: both responses
        return int(2 * np.sum(batch["prompt_len"]) + np.sum(batch["chosen_len"]) + np.sum(batch["rejected_len"]))
    if "tokens" in batch:
        return int(np.asarray(batch["tokens"]).size)
    return 0


def process_rows(global_batch: dict) -> dict:
    """This process's share of a global batch. Every process iterates the same global batch
    stream (same seed, same iterator state in every checkpoint) and keeps its own rows."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return global_batch
    rows = len(next(iter(global_batch.values())))
    if rows % count:
        raise ValueError(f"global batch size {rows} is not divisible by the {count} processes")
    share = rows // count
    return {k: v[index * share : (index + 1) * share] for k, v in global_batch.items()}


def _abstract(state):
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), state
    )


def check_resume_config(saved: dict, current: dict) -> None:
    """Raise ``IncompatibleResumeError`` listing every dotted key (with both values) where the
    current config dict differs from the one saved with the checkpoint."""
    differing = diff_configs(saved, current)
    if differing:
        details = ", ".join(f"{k} (checkpoint {_lookup(saved, k)!r}, now {_lookup(current, k)!r})" for k in differing)
        raise IncompatibleResumeError(
            f"cannot resume: the config differs from the checkpointed run in {details}. "
            "Resume with the same settings, or start a new run in another --out folder."
        )


def _lookup(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def fit(
    run: RunDir,
    step_fn: Callable,
    state: TrainState,
    batches: Iterator[dict],
    *,
    config: dict,
    train: TrainConfig | None = None,
    resume: bool = False,
    evaluate: Callable[[TrainState], dict] | None = None,
    progress: bool = True,
    logger: TrainLogger | MetricsWriter | Sequence[MetricsWriter] | None = None,
    samples: Callable[[TrainState], Sequence[str]] | None = None,
) -> TrainState:
    """Run ``step_fn`` (from ``make_update_step``) until ``state.step == train.steps``.

    Every ``train.eval_every`` steps ``evaluate(state)`` (deterministic metrics) is logged;
    every ``train.checkpoint_every`` steps and at the end the state, ``config`` and
    ``batches.get_state()`` are checkpointed. A NaN/inf loss raises ``NonFiniteLossError``
    naming the step; the checkpoints already written are kept.

    The host does not wait for each step: metrics stay on the device and are read every
    ``train.log_every`` steps (and before an evaluation, a checkpoint or a compile), then
    every step's line is written. ``step_seconds`` is then the mean over those steps. A NaN
    is found at the next read, always before anything is checkpointed (a non-finite update
    is never applied; the steps after it in the same window are).

    ``logger``: where the logs go besides ``metrics.jsonl`` and ``timing.jsonl``. ``None``:
    TensorBoard in ``<run>/tensorboard`` (closed at the end). One writer or a list of writers
    (``jirl.train.logging``: ``TensorBoardWriter``, ``WandbWriter``, ``make_writers(LogConfig)``
    or your own with a ``scalars(step, metrics, prefix)`` method) replaces that default; a
    ``TrainLogger`` (for ``run``) is used as it is. What is passed in is flushed at the end,
    not closed: close it yourself (several fits may share it). ``samples(state)``, when
    given, returns decoded texts logged with ``TrainLogger.samples`` (``samples.jsonl`` and
    the writers) at the evaluation steps.
    """
    train = train or TrainConfig()
    steps = train.steps  # the learning-rate schedule of make_optimizer(train) assumes this length
    mesh = make_mesh(data=train.mesh_data, fsdp=train.mesh_fsdp)
    state = shard_state(state, mesh, train.sharding)
    manager = CheckpointManager(run.path / CHECKPOINT_DIR, keep_last=train.keep_checkpoints)
    metadata = None
    if resume and manager.latest_step() is not None:
        try:
            check_resume_config(manager.metadata()["config"], config)  # compare settings before loading any array
            state, metadata = manager.restore(_abstract(state))
        except NoReadableCheckpointError as error:  # every one was moved aside (kept), none is left
            run.console.print(Text(str(error), style="yellow"))
    if resume and metadata is None:
        # Stopped before its first checkpoint (e.g. while preparing data), or none was readable.
        run.console.print(Text(f"nothing was checkpointed in {manager.directory}: training starts from step 0", style="yellow"))
        resume = False
        if jax.process_index() == 0:
            for name in (METRICS_FILE, TIMING_FILE, SAMPLES_FILE):
                truncate_metrics(run.path / name, 0)
    if resume:
        check_resume_config(metadata["config"], config)
        batches.set_state(metadata["data_state"])
        if jax.process_index() == 0:
            for name in (METRICS_FILE, TIMING_FILE, SAMPLES_FILE):
                truncate_metrics(run.path / name, int(state.step))
    elif manager.latest_step() is not None:
        raise JirlError(f"{manager.directory} already holds checkpoints; pass --resume to continue that run")

    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    start = int(state.step)
    owned = logger is None  # fit closes only the logger it makes
    if isinstance(logger, TrainLogger):
        if logger.run.path.resolve() != run.path.resolve():
            raise ValueError(f"the logger writes into {logger.run.path}, but this run is {run.path}")
    else:
        logger = TrainLogger(run, progress=progress, writers=logger)
    logger.start(steps, start)
    compiled = {}  # one executable per batch shape (buckets), compile time logged apart
    pending = []  # (step, device metrics, tokens) of the steps not yet read on the host
    window_began = time.perf_counter()

    def read_pending():
        """Wait for the pending steps, stop on a NaN, log each step."""
        nonlocal window_began
        if not pending:
            return
        fetched = jax.device_get([metrics for _, metrics, _ in pending])
        seconds = (time.perf_counter() - window_began) / len(pending)
        for (step_number, _, tokens), metrics in zip(pending, fetched):
            metrics = to_floats(metrics)
            if metrics.pop("nonfinite"):
                last = manager.latest_step()
                kept = f"the last good checkpoint (step {last}) is kept" if last else "no checkpoint had been written yet"
                shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                raise NonFiniteLossError(
                    f"the loss or gradient became NaN/inf at step {step_number} (metrics of that step: {shown}); "
                    f"training stopped and {kept}. Lower the learning rate, clip gradients harder or check the data."
                )
            logger.step(step_number, metrics, seconds, tokens)
        pending.clear()
        window_began = time.perf_counter()

    try:
        for step in range(start, steps):
            host_batch = next(batches)
            batch = shard_batch(process_rows(host_batch), mesh)
            shapes = tuple(sorted((k, v.shape) for k, v in host_batch.items()))
            if shapes not in compiled:
                read_pending()  # keep compile time out of the step times
                began = time.perf_counter()
                compiled[shapes] = step_fn.lower(state, batch).compile()
                logger.compiled(step + 1, time.perf_counter() - began)
                window_began = time.perf_counter()
            state, metrics = compiled[shapes](state, batch)
            # The compiled step wants its input shardings back: XLA may lay the new state out
            # otherwise (e.g. shard a small FSDP bias it was given replicated).
            state = jax.device_put(state, state_shardings)
            pending.append((step + 1, metrics, tokens_in(host_batch)))
            done = step + 1 == steps
            scheduled = (step + 1) % train.eval_every == 0 or done
            evaluating = evaluate is not None and scheduled
            sampling = samples is not None and scheduled
            saving = (step + 1) % train.checkpoint_every == 0 or done
            if (step + 1) % train.log_every == 0 or evaluating or sampling or saving:
                read_pending()
            if evaluating:
                logger.evaluation(step + 1, {k: float(v) for k, v in evaluate(state).items()})
            if sampling:
                logger.samples(step + 1, samples(state))
            if saving:
                manager.save(step + 1, state, {"config": config, "data_state": batches.get_state()})
    finally:
        if owned:
            logger.close()
        else:
            logger.finish()
        manager.close()
    return state


def scan_updates(step_fn: Callable, state: TrainState, data: dict, order: jax.Array) -> tuple[TrainState, dict]:
    """``len(order)`` updates of the pure ``step_fn`` (``jirl.train.step.update_fn``), update
    ``i`` on the rows ``order[i]`` of the in-memory ``data`` (a dict of equal-length arrays), as
    one ``lax.scan``. Returns the final state and every update's metrics stacked ``[steps]``. It
    is pure: ``jax.vmap`` it over stacked states, data and orders to train seeds side by side
    (``jirl.data.loader.batch_order`` gives a loader's order). A non-finite update is skipped
    by the step itself; check ``metrics["nonfinite"]``."""

    def body(state, index):
        return step_fn(state, jax.tree_util.tree_map(lambda v: v[index], data))

    return jax.lax.scan(body, state, order)


def train_on_arrays(state: TrainState, step_fn: Callable, data: dict, steps: int, batch_size: int, seed: int) -> tuple[TrainState, dict]:
    """``steps`` updates on minibatches drawn without replacement (per batch) from in-memory
    ``data`` (a dict of equal-length arrays), for small datasets that need no loader,
    checkpoints or logs. Returns the final state and the last step's metrics."""
    rows = len(next(iter(data.values())))
    size = min(batch_size, rows)
    rng = np.random.default_rng(seed)
    metrics = {}
    for _ in range(steps):
        index = rng.choice(rows, size=size, replace=False)
        state, metrics = step_fn(state, {k: jnp.asarray(v[index]) for k, v in data.items()})
    return state, metrics
