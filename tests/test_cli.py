"""Tests for the experiment registry, run folders and the ``jirl`` command."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import numpy as np
import pytest

from jirl.cli import main
from jirl.config import config_from_dict
from jirl.experiment import EXPERIMENTS, RunDir, load_experiments, register_experiment

ECHO = "_test_echo"


@dataclasses.dataclass(frozen=True)
class EchoModelConfig:
    width: int = 4


@dataclasses.dataclass(frozen=True)
class EchoConfig:
    seed: int = 0
    scale: float = 1.0
    mode: Literal["add", "mul"] = "add"
    model: EchoModelConfig = dataclasses.field(default_factory=EchoModelConfig)


def run_echo(config: EchoConfig, run: RunDir) -> dict:
    """Logs three steps of scale * step and echoes the config back."""
    for step in range(3):
        run.log(step, loss=np.float32(config.scale * step), width=jnp.int32(config.model.width))
    combined = config.seed + config.scale if config.mode == "add" else config.seed * config.scale
    return {"seed": config.seed, "combined": combined, "steps": jnp.arange(3)}


register_experiment(ECHO, config=EchoConfig, description="Test-only echo experiment")(run_echo)


def read_json(path: Path):
    return json.loads(path.read_text())


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- registration


def test_reregistering_the_same_function_is_tolerated():
    register_experiment(ECHO, config=EchoConfig, description="Test-only echo experiment")(run_echo)
    assert EXPERIMENTS.get(ECHO).run_fn is run_echo


def test_registering_another_function_under_a_taken_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_experiment(ECHO, config=EchoConfig)(lambda config, run: {})


def test_description_defaults_to_the_docstring_first_line():
    register_experiment("_test_docstring", config=EchoConfig)(run_echo)
    assert EXPERIMENTS.get("_test_docstring").description.startswith("Logs three steps")


@dataclasses.dataclass
class NoSeedConfig:
    scale: float = 1.0


@dataclasses.dataclass
class FloatSeedConfig:
    seed: float = 0.0


@pytest.mark.parametrize("config_cls", [NoSeedConfig, FloatSeedConfig, dict])
def test_config_class_needs_an_int_seed(config_cls):
    with pytest.raises(TypeError):
        register_experiment("_test_bad_config", config=config_cls)
    assert "_test_bad_config" not in EXPERIMENTS


def test_load_experiments_is_idempotent():
    load_experiments()
    names = EXPERIMENTS.names()
    load_experiments()
    assert EXPERIMENTS.names() == names


def test_run_dir_log_converts_arrays_and_write_json(tmp_path):
    run = RunDir(tmp_path)
    run.log(np.int64(5), vector=jnp.array([1.0, 2.0]), flag=np.bool_(True))
    assert read_json(tmp_path / "metrics.jsonl") == {"step": 5, "vector": [1.0, 2.0], "flag": True}
    path = run.write_json("sub/extra.json", {"value": np.float64(0.5), "pair": (1, 2)})
    assert path == tmp_path / "sub" / "extra.json"
    assert read_json(path) == {"value": 0.5, "pair": [1, 2]}


# --------------------------------------------------------------------------- jirl run


def test_run_writes_config_metrics_and_results(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys, "run", ECHO, "--set", "seed=7", "scale=0.5", "--set", "mode=mul", "model.width=9",
        "--out", str(out),
    )
    assert code == 0
    assert "_test_echo" in stdout

    stored = read_json(out / "config.json")
    assert stored["experiment"] == ECHO
    assert config_from_dict(EchoConfig, stored["config"]) == EchoConfig(
        seed=7, scale=0.5, mode="mul", model=EchoModelConfig(width=9)
    )

    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 0, "loss": 0.0, "width": 9},
        {"step": 1, "loss": 0.5, "width": 9},
        {"step": 2, "loss": 1.0, "width": 9},
    ]
    assert read_json(out / "results.json") == {"seed": 7, "combined": 3.5, "steps": [0, 1, 2]}
    run_info = read_json(out / "run.json")
    assert run_info["overrides"] == ["seed=7", "scale=0.5", "mode=mul", "model.width=9"]
    assert run_info["elapsed_seconds"] >= 0


def test_run_with_defaults_uses_a_timestamped_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, _ = run_cli(capsys, "run", ECHO)
    assert code == 0
    (run_folder,) = (tmp_path / "runs").iterdir()
    assert run_folder.name.startswith(f"{ECHO}-")
    assert read_json(run_folder / "results.json")["combined"] == 1.0


def test_run_into_an_existing_empty_folder(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "run", ECHO, "--out", str(tmp_path))
    assert code == 0 and (tmp_path / "results.json").exists()


def test_run_refuses_a_non_empty_folder_and_leaves_it_alone(tmp_path, capsys):
    precious = tmp_path / "results.json"
    precious.write_text("earlier results")
    code, _, stderr = run_cli(capsys, "run", ECHO, "--out", str(tmp_path))
    assert code == 2
    assert stderr.startswith("error: ") and "not an empty folder" in stderr
    assert precious.read_text() == "earlier results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_unknown_experiment_lists_known_ones(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "run", "_test_ech", "--out", str(tmp_path / "run"))
    assert code == 2
    assert "unknown experiment '_test_ech'" in stderr and ECHO in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "run").exists()


def test_unknown_key_suggests_a_fix(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "run", ECHO, "--set", "scal=2", "--out", str(tmp_path / "r"))
    assert code == 2
    assert "Did you mean 'scale'?" in stderr
    assert not (tmp_path / "r").exists()


def test_wrong_type_is_a_user_error(tmp_path, capsys):
    out = str(tmp_path / "r")
    code, _, stderr = run_cli(capsys, "run", ECHO, "--set", "seed=abc", "--out", out)
    assert code == 2
    assert stderr.strip() == "error: seed expects an int, got 'abc'"


def test_bad_literal_lists_the_choices(tmp_path, capsys):
    out = str(tmp_path / "r")
    code, _, stderr = run_cli(capsys, "run", ECHO, "--set", "mode=div", "--out", out)
    assert code == 2 and "'add', 'mul'" in stderr


# --------------------------------------------------------------------------- jirl list / show


def test_list_includes_the_test_experiment(capsys):
    code, stdout, _ = run_cli(capsys, "list")
    assert code == 0
    assert ECHO in stdout and "Test-only echo experiment" in stdout


def test_show_prints_description_and_config_fields(capsys):
    code, stdout, _ = run_cli(capsys, "show", ECHO)
    assert code == 0
    assert "Test-only echo experiment" in stdout
    for expected in ["seed", "scale", "float", "1.0", "mode", "model.width", "Literal"]:
        assert expected in stdout


def test_show_unknown_experiment_is_a_user_error(capsys):
    code, _, stderr = run_cli(capsys, "show", "nope")
    assert code == 2 and "unknown experiment 'nope'" in stderr


def test_console_script_module_runs(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "jirl.cli", "list"], cwd=tmp_path, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr


def test_console_script_reports_user_errors_without_traceback(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "jirl.cli", "show", "_no_such_experiment"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: unknown experiment")
    assert "Traceback" not in completed.stderr


# --------------------------------------------------------------------------- plugins


PLUGIN_SOURCE = '''
import jax.numpy as jnp
from jirl.rl.advantages import ADVANTAGES


@ADVANTAGES.register("{name}")
def constant_advantage(rewards, mask):
    return jnp.where(mask, 1.0, 0.0)
'''


def write_plugin(folder: Path, file_name: str, source: str) -> Path:
    path = folder / file_name
    path.write_text(source)
    return path


def test_plugin_file_registers_before_list_and_is_marked(tmp_path, capsys, monkeypatch):
    from jirl.rl.advantages import ADVANTAGES

    monkeypatch.setenv("COLUMNS", "400")  # no wrapping of the registry table
    path = write_plugin(tmp_path, "my_advantage.py", PLUGIN_SOURCE.format(name="_test_plugin_advantage"))
    code, stdout, stderr = run_cli(capsys, "--plugin", str(path), "list")
    assert code == 0, stderr
    assert "_test_plugin_advantage" in ADVANTAGES
    assert "_test_plugin_advantage (plugin)" in stdout
    for title in ("tasks", "preference losses", "advantage estimators", "credit schemes", "IRL methods"):
        assert title in stdout
    assert "rloo (plugin)" not in stdout and "rloo" in stdout  # built-in names are not marked
    # Importing the same file again (here through the sub-command's option) registers nothing twice.
    code, _, stderr = run_cli(capsys, "list", "--plugin", str(path))
    assert code == 0, stderr


def test_plugins_from_the_environment_by_module_name(tmp_path, capsys, monkeypatch):
    from jirl.rl.advantages import ADVANTAGES

    write_plugin(tmp_path, "jirl_test_env_plugin.py", PLUGIN_SOURCE.format(name="_test_env_advantage"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("JIRL_PLUGINS", " jirl_test_env_plugin , ")
    code, _, stderr = run_cli(capsys, "show", ECHO)
    assert code == 0, stderr
    assert "_test_env_advantage" in ADVANTAGES


def test_plugin_can_register_an_experiment_that_run_finds(tmp_path, capsys):
    source = '''
import dataclasses
from jirl.experiment import register_experiment


@dataclasses.dataclass
class Config:
    seed: int = 0
    value: float = 1.5


@register_experiment("_test_plugin_experiment", config=Config)
def run(config, run):
    """An experiment from a plugin."""
    return {"doubled": 2 * config.value}
'''
    path = write_plugin(tmp_path, "plugin_experiment.py", source)
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "run", "_test_plugin_experiment", "--plugin", str(path), "--set", "value=2", "--out", str(out))
    assert code == 0, stderr
    assert read_json(out / "results.json") == {"doubled": 4.0}


def test_missing_plugin_file_is_a_user_error(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "--plugin", str(tmp_path / "nowhere.py"), "list")
    assert code == 2
    assert "plugin file" in stderr and "does not exist" in stderr


def test_missing_plugin_module_is_a_user_error(capsys, monkeypatch):
    monkeypatch.setenv("JIRL_PLUGINS", "jirl_no_such_plugin_module")
    code, _, stderr = run_cli(capsys, "list")
    assert code == 2
    assert "plugin module 'jirl_no_such_plugin_module' not found" in stderr


def test_broken_plugin_names_the_error_and_where(tmp_path, capsys):
    path = write_plugin(tmp_path, "broken_plugin.py", "x = 1\nraise RuntimeError('half-written plugin')\n")
    code, _, stderr = run_cli(capsys, "--plugin", str(path), "list")
    assert code == 2
    assert "failed while importing: RuntimeError: half-written plugin" in stderr
    assert "broken_plugin.py:2" in stderr
    assert "jirl_plugin_broken_plugin" not in sys.modules  # a later, fixed import starts afresh


def test_plugin_importing_a_missing_dependency_is_reported_as_broken(tmp_path, capsys, monkeypatch):
    write_plugin(tmp_path, "jirl_test_needs_dep.py", "import jirl_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, stderr = run_cli(capsys, "--plugin", "jirl_test_needs_dep", "list")
    assert code == 2
    assert "failed while importing: ModuleNotFoundError" in stderr and "jirl_no_such_dependency" in stderr


def test_plugin_specs_order_env_then_options():
    from jirl.cli import build_parser, plugin_specs

    args = build_parser().parse_args(["--plugin", "a.py", "run", "x", "--plugin", "b"])
    assert plugin_specs(args, environ={"JIRL_PLUGINS": "m1,, m2"}) == ["m1", "m2", "a.py", "b"]


def test_show_piped_cuts_no_key_or_default(capsys):
    assert main(["show", "credit_horizon"]) == 0
    out = capsys.readouterr().out
    assert "terminal,uniform,shaping,abc,prime,rto,decomposition,true" in out
    assert "…" not in out
