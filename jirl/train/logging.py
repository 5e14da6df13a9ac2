"""Training logs: ``metrics.jsonl`` (deterministic values only), ``timing.jsonl`` (compile time,
step time, tokens/s), TensorBoard event files and a rich progress bar with ETA.

Wall-clock numbers never go into ``metrics.jsonl``, so a resumed run's metrics file can be
compared bit for bit with an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from jirl.run_dir import METRICS_FILE, RunDir  # noqa: F401  (METRICS_FILE: still importable from here)

TIMING_FILE = "timing.jsonl"


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


class TrainLogger:
    """Writes metrics, timing and TensorBoard events for one training run (process 0 only)."""

    def __init__(self, run: RunDir, total_steps: int, start_step: int = 0, progress: bool = True, tensorboard: bool = True):
        self.run = run
        self.enabled = jax.process_index() == 0
        self.timing_path = run.path / TIMING_FILE
        self.writer = None
        if self.enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(run.path / "tensorboard"))
        self.progress = None
        if self.enabled and progress:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[summary]}"),
                console=run.console,
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, summary="")

    def _timing(self, row: dict) -> None:
        with self.timing_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def compiled(self, step: int, seconds: float) -> None:
        """Record the compile time of the first update (``compile_seconds`` at ``step``) in
        ``timing.jsonl`` and TensorBoard."""
        if self.enabled:
            self._timing({"step": step, "compile_seconds": seconds})
            if self.writer:
                self.writer.add_scalar("time/compile_seconds", seconds, step)

    def step(self, step: int, metrics: dict, seconds: float, tokens: int) -> None:
        """Record the metrics of update ``step`` (1-based) and its wall time."""
        if not self.enabled:
            return
        self.run.log(step, **metrics)
        tokens_per_second = tokens / max(seconds, 1e-9)
        self._timing({"step": step, "step_seconds": seconds, "tokens_per_second": tokens_per_second})
        if self.writer:
            for name, value in metrics.items():
                self.writer.add_scalar(f"train/{name}", float(value), step)
            self.writer.add_scalar("time/step_seconds", seconds, step)
            self.writer.add_scalar("time/tokens_per_second", tokens_per_second, step)
        if self.progress:
            summary = f"loss {metrics.get('loss', float('nan')):.4f}  {tokens_per_second:,.0f} tok/s"
            self.progress.update(self.task, completed=step, summary=summary)

    def evaluation(self, step: int, metrics: dict) -> None:
        """Evaluation metrics (deterministic) go to metrics.jsonl too, tagged ``eval/``."""
        if not self.enabled:
            return
        self.run.log(step, **{f"eval/{k}": v for k, v in metrics.items()})
        if self.writer:
            for name, value in metrics.items():
                self.writer.add_scalar(f"eval/{name}", float(value), step)

    def close(self) -> None:
        """Stop the progress bar and close the TensorBoard writer."""
        if self.progress:
            self.progress.stop()
        if self.writer:
            self.writer.close()
