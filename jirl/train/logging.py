"""Training logs. Always: ``metrics.jsonl`` (deterministic values only), ``timing.jsonl``
(compile time, step time, tokens/s), ``samples.jsonl`` (decoded samples, when a run logs
any) and a rich progress bar with ETA. Besides: any number of *writers*, objects that send
the same numbers elsewhere, TensorBoard by default (``TensorBoardWriter``), Weights & Biases
on request (``WandbWriter``), or your own.

A writer is any object with these methods (``MetricsWriter`` is a base class with no-op
defaults; only ``scalars`` has to be written):

    scalars(step, metrics: dict[str, float], prefix: str)   # prefix: "train", "eval" or "time"
    text(step, name, text)                                   # decoded samples, as Markdown
    flush()                                                  # optional
    close()

Pass writers to ``jirl.train.loop.fit(..., logger=[...])`` or build them from the
``LogConfig`` piece of an experiment's config with ``make_writers``.

Wall-clock numbers never go into ``metrics.jsonl``, so a resumed run's metrics file can be
compared bit for bit with an uninterrupted one. Only process 0 writes anything.
"""

from __future__ import annotations

import abc
import dataclasses
import html
import json
import math
import random
import string
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import jax
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from jirl.config import ConfigError, JirlError
from jirl.run_dir import METRICS_FILE, RunDir

TIMING_FILE = "timing.jsonl"
SAMPLES_FILE = "samples.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb/jirl_run_id"  # the W&B run id, kept so that --resume continues the same W&B run
WANDB_INSTALL = "pip install wandb (or pip install 'jirl[wandb]')"


class MissingPackageError(JirlError, ImportError):
    """An optional package that a setting asks for is not installed."""


def to_floats(metrics: dict) -> dict:
    """Host copies of scalar metrics as Python numbers (bools stay bools)."""
    out = {}
    for name, value in jax.device_get(metrics).items():
        value = np.asarray(value)
        out[name] = bool(value) if value.dtype == bool else float(value)
    return out


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the lines of a metrics file with ``step <= last_step`` (and drop a torn last
    line), so a resumed run continues the file as if it had never stopped."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by the kill; everything after it is gone too
        if row.get("step", math.inf) <= last_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


# --------------------------------------------------------------------------- writers


class MetricsWriter(abc.ABC):
    """Base class of a log writer: ``scalars`` to implement (abstract), the rest are no-ops. Any object
    with a ``scalars`` method works as a writer too (``text``, ``flush``, ``close`` are then
    called when present). Writers are context managers that ``close`` on exit."""

    @abc.abstractmethod
    def scalars(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        """Record ``metrics`` at ``step``, each named ``f"{prefix}/{name}"`` (just ``name``
        without a prefix). fit's prefixes: ``train`` (each update's metrics, as in
        metrics.jsonl), ``eval`` (the ``eval/`` lines of metrics.jsonl) and ``time``
        (compile_seconds, step_seconds, tokens_per_second, as in timing.jsonl)."""

    def text(self, step: int, name: str, text: str) -> None:
        """Record a text (decoded samples, Markdown) under ``name`` at ``step``."""

    def flush(self) -> None:
        """Push what is buffered to its destination."""

    def close(self) -> None:
        """Flush and release the destination; the writer is not used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _tag(prefix: str, name: str) -> str:
    """``prefix/name``, or ``name`` without a prefix."""
    return f"{prefix}/{name}" if prefix else name


class TensorBoardWriter(MetricsWriter):
    """TensorBoard event files (``tensorboardX``) in ``directory``; view them with
    ``tensorboard --logdir DIRECTORY``."""

    def __init__(self, directory: Path | str):
        from tensorboardX import SummaryWriter

        self.directory = Path(directory)
        self.writer = SummaryWriter(str(self.directory))

    def scalars(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        """One ``add_scalar`` per metric, tagged ``prefix/name``."""
        for name, value in metrics.items():
            self.writer.add_scalar(_tag(prefix, name), float(value), step)

    def text(self, step: int, name: str, text: str) -> None:
        """``add_text`` (TensorBoard's text tab renders it as Markdown)."""
        self.writer.add_text(name, text, step)

    def flush(self) -> None:
        """Write the pending events to the event file."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def import_wandb():
    """The ``wandb`` module, or ``MissingPackageError`` saying how to install it."""
    try:
        import wandb
    except ImportError as error:
        raise MissingPackageError(
            f"logging to Weights & Biases needs the wandb package, which is not installed: {WANDB_INSTALL}. "
            "Or turn it off (log.wandb=false)."
        ) from error
    return wandb


class WandbWriter(MetricsWriter):
    """A Weights & Biases run whose files go in ``directory/wandb``. ``mode="offline"`` needs
    no network or login (upload later with ``wandb sync DIRECTORY/wandb/offline-run-*``).
    ``config`` is the run's config (shown and compared by W&B). With ``resume=True`` the run
    id saved in ``directory`` by an earlier writer is reused, so a resumed training run
    continues the same W&B run (W&B ignores steps it has already seen). Extra keyword
    arguments go to ``wandb.init`` (``entity``, ``group``, ``tags``, ...).

    Raises ``MissingPackageError`` naming the install command when ``wandb`` is missing."""

    def __init__(
        self,
        directory: Path | str,
        *,
        project: str = "jirl",
        mode: Literal["online", "offline"] = "offline",
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
        resume: bool = False,
        **init_kwargs: Any,
    ):
        self.wandb = import_wandb()
        self.directory = Path(directory)
        id_file = self.directory / WANDB_ID_FILE
        id_file.parent.mkdir(parents=True, exist_ok=True)
        run_id = id_file.read_text().strip() if resume and id_file.exists() else None
        if run_id is None:
            run_id = "".join(random.SystemRandom().choices(string.ascii_lowercase + string.digits, k=8))
            id_file.write_text(run_id + "\n")
        self.run = self.wandb.init(
            project=project,
            mode=mode,
            dir=str(self.directory),
            config=dict(config or {}),
            name=name,
            id=run_id,
            resume="allow" if resume else None,
            reinit="create_new",  # several writers (sub-runs) may be open in one process
            settings=self.wandb.Settings(silent=True, console="off"),  # leave the terminal to rich
            **init_kwargs,
        )

    def scalars(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        """One ``run.log`` at ``step`` with every metric, keyed ``prefix/name``; W&B drops
        values for a step lower than one it has already seen."""
        self.run.log({_tag(prefix, name): float(value) for name, value in metrics.items()}, step=step)

    def text(self, step: int, name: str, text: str) -> None:
        """The text as a preformatted HTML panel (``wandb.Html``) under ``name``."""
        self.run.log({name: self.wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def close(self) -> None:
        """Finish the W&B run (its service process may go on writing the offline file for a
        moment)."""
        self.run.finish()


@dataclasses.dataclass
class LogConfig:
    """Where training curves go besides metrics.jsonl and timing.jsonl (always written)."""

    tensorboard: bool = True  # TensorBoard event files in <out>/tensorboard (view: tensorboard --logdir <out>)
    wandb: bool = False  # also log to Weights & Biases (needs: pip install wandb); its files go in <out>/wandb
    wandb_project: str = "jirl"  # the W&B project the run is filed under
    # offline: no network or login needed, upload later with `wandb sync <out>/wandb/offline-run-*`;
    # online: stream to the W&B server (needs `wandb login`)
    wandb_mode: Literal["online", "offline"] = "offline"
    wandb_name: str = ""  # the run's display name in W&B (empty: the output folder's name)

    def validate(self) -> None:
        """A W&B run needs a project name and the wandb package (checked before any work)."""
        if self.wandb:
            if not self.wandb_project.strip():
                raise ConfigError("wandb_project must not be empty when wandb=true")
            import_wandb()


def make_writers(log: LogConfig, run: RunDir, config: Mapping[str, Any] | None = None) -> list[MetricsWriter]:
    """The writers ``log`` asks for, writing into the run folder (process 0 only: an empty list
    on the others). ``config`` (the experiment's config as a dict) is handed to W&B. Pass the
    list to ``fit(..., logger=writers)`` and close the writers when the run is done."""
    if jax.process_index() != 0:
        return []
    if log.wandb:
        import_wandb()  # a missing package is reported before anything is created
    writers: list[MetricsWriter] = []
    if log.tensorboard:
        writers.append(TensorBoardWriter(run.path / TENSORBOARD_DIR))
    if log.wandb:
        writers.append(
            WandbWriter(run.path, project=log.wandb_project, mode=log.wandb_mode, config=config,
                        name=log.wandb_name or run.path.resolve().name, resume=run.resume)
        )
    return writers


def logged_evaluation(run: RunDir, step: int) -> dict[str, float]:
    """The ``eval/`` metrics that ``run``'s metrics.jsonl holds for ``step``, named without the
    prefix (empty when it holds none; a torn line is skipped)."""
    path = run.path / METRICS_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    metrics = {}
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step") == step:
            metrics.update({name[5:]: value for name, value in row.items() if name.startswith("eval/")})
    return metrics


def replay_evaluation(run: RunDir, writers: Sequence[Any], step: int = 0) -> None:
    """Send the evaluation of ``step`` that metrics.jsonl already holds to each of ``writers``
    as ``fit`` sends its own (``scalars(step, metrics, "eval")``): for metrics written with
    ``run.log`` before the writers existed, such as the initial model's at step 0."""
    metrics = logged_evaluation(run, step) if writers else {}
    if metrics:
        for writer in writers:
            writer.scalars(step, {name: float(value) for name, value in metrics.items()}, "eval")


# --------------------------------------------------------------------------- the logger


def format_samples(texts: Sequence[str]) -> str:
    """Decoded samples as Markdown: each in a fenced block (kept verbatim), numbered."""
    return "\n\n".join(f"**{i}**\n\n```\n{text}\n```" for i, text in enumerate(texts))


class TrainLogger:
    """Writes metrics, timing, samples and a progress bar for one training run, and passes the
    numbers to ``writers`` (process 0 only).

    ``writers``: ``None`` for the default, a ``TensorBoardWriter`` in ``<run>/tensorboard``
    (none with ``tensorboard=False``), else one writer or a list of writers, used instead of
    the default. The logger owns its writers: ``close`` closes them, ``finish`` only stops
    the progress bar and flushes. The progress bar runs from ``start(total_steps,
    start_step)`` (called by ``fit``; at once when ``total_steps`` is given here)."""

    def __init__(
        self,
        run: RunDir,
        total_steps: int | None = None,
        start_step: int = 0,
        progress: bool = True,
        tensorboard: bool = True,
        writers: Any = None,
    ):
        self.run = run
        self.enabled = jax.process_index() == 0
        if self.enabled:
            run.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = run.path / METRICS_FILE  # written by run.log
        self.timing_path = run.path / TIMING_FILE
        self.samples_path = run.path / SAMPLES_FILE
        self.show_progress = progress
        self.progress = None
        self.task = None
        if writers is None:
            writers = [TensorBoardWriter(run.path / TENSORBOARD_DIR)] if self.enabled and tensorboard else []
        elif not isinstance(writers, (list, tuple)):
            writers = [writers]
        for writer in writers:
            if not callable(getattr(writer, "scalars", None)):
                raise TypeError(
                    f"{writer!r} is not a log writer: it needs a scalars(step, metrics, prefix) method "
                    "(see jirl.train.logging.MetricsWriter)"
                )
        self.writers = list(writers)
        if total_steps is not None:
            self.start(total_steps, start_step)

    @property
    def writer(self):
        """The first ``TensorBoardWriter``'s ``SummaryWriter`` (``None`` without one), as before
        writers could be chosen."""
        return next((w.writer for w in self.writers if isinstance(w, TensorBoardWriter)), None)

    def start(self, total_steps: int, start_step: int = 0) -> None:
        """Show the progress bar of a run of ``total_steps`` updates, ``start_step`` done."""
        if not (self.enabled and self.show_progress):
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[summary]}"),
                console=self.run.console,
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, summary="")
        else:
            self.progress.update(self.task, total=total_steps, completed=start_step)

    def _append(self, path: Path, row: dict) -> None:
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def _timing(self, row: dict) -> None:
        self._append(self.timing_path, row)

    def _scalars(self, step: int, metrics: Mapping[str, Any], prefix: str) -> None:
        values = {name: float(value) for name, value in metrics.items()}
        for writer in self.writers:
            writer.scalars(step, values, prefix)

    def compiled(self, step: int, seconds: float) -> None:
        """Record the compile time of the first update (``compile_seconds`` at ``step``) in
        ``timing.jsonl`` and the writers (``time/compile_seconds``)."""
        if self.enabled:
            self._timing({"step": step, "compile_seconds": seconds})
            self._scalars(step, {"compile_seconds": seconds}, "time")

    def step(self, step: int, metrics: dict, seconds: float, tokens: int) -> None:
        """Record the metrics of update ``step`` (1-based) and its wall time."""
        if not self.enabled:
            return
        self.run.log(step, **metrics)
        tokens_per_second = tokens / max(seconds, 1e-9)
        self._timing({"step": step, "step_seconds": seconds, "tokens_per_second": tokens_per_second})
        self._scalars(step, metrics, "train")
        self._scalars(step, {"step_seconds": seconds, "tokens_per_second": tokens_per_second}, "time")
        if self.progress:
            summary = f"loss {metrics.get('loss', float('nan')):.4f}  {tokens_per_second:,.0f} tok/s"
            self.progress.update(self.task, completed=step, summary=summary)

    def evaluation(self, step: int, metrics: dict) -> None:
        """Evaluation metrics (deterministic) go to metrics.jsonl too, tagged ``eval/``."""
        if not self.enabled:
            return
        self.run.log(step, **{f"eval/{k}": v for k, v in metrics.items()})
        self._scalars(step, metrics, "eval")

    def samples(self, step: int, texts: Sequence[str], name: str = "samples") -> None:
        """Decoded samples at ``step``: one line ``{"step", "name", "texts"}`` in samples.jsonl
        and one Markdown text (``format_samples``) to each writer."""
        if not self.enabled:
            return
        texts = [str(text) for text in texts]
        self._append(self.samples_path, {"step": int(step), "name": name, "texts": texts})
        for writer in self.writers:
            text = getattr(writer, "text", None)
            if callable(text):
                text(step, name, format_samples(texts))

    def flush(self) -> None:
        """Flush every writer that can."""
        for writer in self.writers:
            flush = getattr(writer, "flush", None)
            if callable(flush):
                flush()

    def finish(self) -> None:
        """Stop the progress bar and flush the writers; they stay open (another ``fit`` may
        use this logger)."""
        if self.progress:
            self.progress.stop()
            self.progress = self.task = None
        self.flush()

    def close(self) -> None:
        """Stop the progress bar and close the writers."""
        if self.progress:
            self.progress.stop()
            self.progress = self.task = None
        for writer in self.writers:
            close = getattr(writer, "close", None)
            if callable(close):
                close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
