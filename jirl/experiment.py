"""Experiment registry and the run directory each experiment writes into.

An experiment is a function ``run(config, run: RunDir) -> dict`` registered with
``@register_experiment(name, config=ConfigCls)``. Modules in the top-level ``experiments``
package are imported by ``load_experiments`` so that their decorators run.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import time
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rich.text import Text

from jirl.config import (
    ConfigError,
    JirlError,
    apply_config_file,
    apply_overrides,
    config_to_dict,
    diff_configs,
    validate_config,
)
from jirl.registry import Registry
from jirl.run_dir import RunDir, nonfinite_paths, to_jsonable, write_json_file

RunFn = Callable[[Any, "RunDir"], Mapping[str, Any]]

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
RUN_INFO_FILE = "run.json"
DEFAULT_RUNS_ROOT = Path("runs")


class OutputDirNotEmptyError(JirlError, FileExistsError):
    """The requested output folder already holds files."""


class OutputDirError(JirlError, OSError):
    """The output folder cannot be created or written (a file in the way, no permission, ...)."""


class NonFiniteResultError(JirlError, FloatingPointError):
    """An experiment's results hold NaN or inf: a number no reader should be given."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A registered experiment: its config class and the function that runs it."""

    name: str
    config_cls: type
    run_fn: RunFn
    description: str = ""
    resumable: bool = False  # keeps checkpoints, so --resume continues it

    def default_config(self) -> Any:
        """The experiment's config with every field at its default (``config_cls()``)."""
        return self.config_cls()


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def register_experiment(name: str, *, config: type, description: str = "", resumable: bool = False):
    """Decorator registering ``run(config, run_dir) -> dict`` as experiment ``name``.

    ``config`` must be a dataclass with an int ``seed`` field. Without ``description``, the
    first line of the function's docstring is used. ``resumable``: the experiment checkpoints
    and continues from ``run.resume`` (``--resume``); other experiments refuse ``--resume``.
    """
    check_config_class(config)

    def decorator(run_fn: RunFn) -> RunFn:
        summary = description or first_line(run_fn.__doc__)
        experiment = Experiment(name, config, run_fn, summary, resumable)
        already_registered = name in EXPERIMENTS and EXPERIMENTS.get(name) == experiment
        if not already_registered:
            EXPERIMENTS.register(name, experiment)
        return run_fn

    return decorator


def check_config_class(config_cls: type) -> None:
    """Raise TypeError unless ``config_cls`` is a dataclass class with an ``int`` field ``seed``
    (every experiment must be seedable)."""
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"experiment config must be a dataclass class, got {config_cls!r}")
    if typing.get_type_hints(config_cls).get("seed") is not int:
        raise TypeError(f"experiment config {config_cls.__name__} needs an int field 'seed'")


def first_line(text: str | None) -> str:
    """The first line of ``text`` (stripped), or ``""`` for None or blank text: an experiment's
    description taken from its docstring."""
    return text.strip().splitlines()[0] if text and text.strip() else ""


def load_experiments() -> None:
    """Import every module of the ``experiments`` package so that its experiments register."""
    import experiments

    for module in pkgutil.iter_modules(experiments.__path__):
        importlib.import_module(f"{experiments.__name__}.{module.name}")


# --------------------------------------------------------------------------- running


def run_experiment(
    name: str, overrides: Sequence[str] = (), out_dir: Path | str | None = None, resume: bool = False,
    config_file: Path | str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run experiment ``name`` with ``key=value`` overrides; return (run folder, results).

    ``config_file``: a YAML or JSON file of config values (``jirl.config.apply_config_file``),
    applied before ``overrides``, which win over it. ``run.json`` records the file's path and
    its values as overrides (``config_file_overrides``), and its ``command`` repeats those
    values as ``--set`` ones, so it reruns the same config even if the file has changed.

    With ``resume=True``, ``out_dir`` must be an earlier run of the same experiment; the config
    (defaults + config file + overrides) must equal the one it saved, and the experiment
    continues from its latest checkpoint (``run.resume`` tells the experiment to do so).
    """
    load_experiments()
    experiment = EXPERIMENTS.get(name)
    config, file_overrides = experiment.default_config(), []
    if config_file is not None:
        config, file_overrides = apply_config_file(config, config_file)
    config = apply_overrides(config, overrides)
    validate_config(config)  # every bad value is refused here, before any work
    if resume:
        if not experiment.resumable:
            raise ConfigError(
                f"{name} keeps no checkpoints, so --resume cannot continue it; rerun it into a new --out folder"
            )
        run = RunDir(check_resumable(name, config, out_dir), resume=True)
    else:
        run = RunDir(prepare_out_dir(name, out_dir))
        try:
            write_json_file(run.path / CONFIG_FILE, {"experiment": name, "config": config_to_dict(config)})
        except OSError as error:
            raise OutputDirError(f"cannot write into the output folder {run.path}: {error.strerror or error}; choose another --out") from None
    verb = "resuming" if resume else "writing to"
    run.console.print(Text(f"{name}: {verb} {run.path}"), soft_wrap=True)

    started_at = datetime.datetime.now().isoformat(timespec="seconds")
    results, elapsed_seconds = timed_call(experiment, config, run)
    bad = nonfinite_paths(results)
    if bad:
        kept = write_json_file(run.path / "results.nonfinite.json", results)
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteResultError(
            f"{name}'s results hold NaN/inf at {shown}: a stage diverged, so no results.json is written "
            f"(the numbers are kept in {kept}, checkpoints and metrics in {run.path}). Lower the learning rate "
            "of that stage or check its inputs."
        )
    write_json_file(run.path / RESULTS_FILE, results)
    run_info = {"experiment": name, "overrides": list(overrides),
                "config_file": str(Path(config_file).resolve()) if config_file is not None else None,
                "config_file_overrides": file_overrides, "started_at": started_at,
                "elapsed_seconds": elapsed_seconds, "resumed": resume,
                "command": shell_command(name, run.path, [*file_overrides, *overrides]), **provenance()}
    write_json_file(run.path / RUN_INFO_FILE, run_info)
    summary = f"done in {elapsed_seconds:.1f}s; results in {run.path}"
    run.console.print(Text(summary), soft_wrap=True)
    return run.path, results


def provenance() -> dict[str, Any]:
    """Where a result came from: jirl's git commit (when run from a checkout; ``dirty`` when
    tracked files had uncommitted changes), the library versions, the device and the host.
    Recorded in ``run.json`` so a published number can be traced to the code that made it."""
    import flax
    import jax

    import jirl

    devices = jax.devices()
    return {
        "git_commit": git_commit(Path(jirl.__file__).resolve().parent.parent),
        "versions": {"jirl": jirl.__version__, "jax": jax.__version__, "flax": flax.__version__,
                     "python": platform.python_version()},
        "device": {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices),
                   "cpu_count": os.cpu_count(), "cpu_model": cpu_model()},
        "date": datetime.date.today().isoformat(),
    }


def shell_command(name: str, out: Path, overrides: Sequence[str]) -> str:
    """The ``jirl run`` command line that reruns this experiment into ``out``."""
    import shlex

    words = ["jirl", "run", name, "--out", str(out)] + (["--set", *overrides] if overrides else [])
    return " ".join(shlex.quote(str(word)) for word in words)


def cpu_model() -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(repo: Path) -> str | None:
    """``HEAD``'s hash of the checkout at ``repo`` (``+dirty`` when tracked files differ from it),
    or None outside a git checkout or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def check_resumable(name: str, config: Any, out_dir: Path | str | None) -> Path:
    """The folder of the run to resume, after checking it is one with the same config."""
    if out_dir is None:
        raise ConfigError("--resume needs --out DIR naming the run folder to continue")
    path = Path(out_dir)
    saved_file = path / CONFIG_FILE
    if not saved_file.exists():
        raise ConfigError(f"cannot resume: {saved_file} not found; is {path} a jirl run folder?")
    try:
        saved = json.loads(saved_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot resume: {saved_file} is not valid JSON ({error}); restore it, or start a new run "
                          "in another --out folder") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ConfigError(f"cannot resume: {saved_file} is not a jirl run config; start a new run in another --out folder")
    if saved.get("experiment") != name:
        raise ConfigError(f"cannot resume: {path} holds a run of {saved.get('experiment')!r}, not {name!r}")
    current = config_to_dict(config)
    differing = diff_configs(saved["config"], current)
    if differing:
        raise ConfigError(
            f"cannot resume {path}: the config differs from the saved run in {', '.join(differing)}. "
            "Resume with the same --config file and --set values, or start a new run in another --out folder."
        )
    return path


def timed_call(experiment: Experiment, config: Any, run: RunDir) -> tuple[dict[str, Any], float]:
    """Run the experiment; return its results as JSON types and the wall time in seconds."""
    start = time.perf_counter()
    results = experiment.run_fn(config, run)
    elapsed_seconds = time.perf_counter() - start
    if not isinstance(results, Mapping):
        raise TypeError(
            f"experiment {experiment.name!r} must return a dict of results, got {type(results)}"
        )
    return to_jsonable(results), elapsed_seconds


def prepare_out_dir(name: str, out_dir: Path | str | None) -> Path:
    """Create the run folder; refuse a non-empty one rather than mix two runs' files."""
    path = Path(out_dir) if out_dir is not None else default_out_dir(name)
    try:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise OutputDirNotEmptyError(
                f"output folder {path} already exists and is not an empty folder; "
                "choose another --out or move the old run away"
            )
        path.mkdir(parents=True, exist_ok=True)
    except OutputDirNotEmptyError:
        raise
    except OSError as error:
        raise OutputDirError(f"cannot create the output folder {path}: {error.strerror or error}; choose another --out") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputDirError(f"cannot write into the output folder {path}: permission denied; choose another --out")
    return path


def default_out_dir(name: str) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>``, suffixed if a run started in the same second."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = DEFAULT_RUNS_ROOT / f"{name}-{stamp}"
    suffix = 1
    while path.exists():
        path = DEFAULT_RUNS_ROOT / f"{name}-{stamp}-{suffix}"
        suffix += 1
    return path
