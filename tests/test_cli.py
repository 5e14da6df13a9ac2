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
from jirl.config import apply_config_file, config_from_dict, describe_fields
from jirl.experiment import EXPERIMENTS, RunDir, load_experiments, register_experiment

ECHO = "_test_echo"


@dataclasses.dataclass(frozen=True)
class EchoModelConfig:
    # How many units the echo model has
    # (a comment block above the field).
    width: int = 4


@dataclasses.dataclass(frozen=True)
class EchoConfig:
    seed: int = 0
    scale: float = 1.0  # multiplies each logged step
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


# --------------------------------------------------------------------------- jirl run --config


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def echo_config(out: Path) -> EchoConfig:
    return config_from_dict(EchoConfig, read_json(out / "config.json")["config"])


def test_yaml_config_file_values_reach_the_config(tmp_path, capsys):
    path = write_text(tmp_path / "echo.yaml", "seed: 3\nscale: 1e-3  # YAML reads 1e-3 as text; parsed like --set\nmodel:\n  width: 6\n")
    code, _, stderr = run_cli(capsys, "run", ECHO, "--config", str(path), "--out", str(tmp_path / "r"))
    assert code == 0, stderr
    assert echo_config(tmp_path / "r") == EchoConfig(seed=3, scale=1e-3, model=EchoModelConfig(width=6))


def test_json_config_file_with_dotted_keys(tmp_path, capsys):
    path = write_text(tmp_path / "echo.json", json.dumps({"model.width": 7, "mode": "mul", "scale": 2}))
    code, _, stderr = run_cli(capsys, "run", ECHO, "--config", str(path), "--out", str(tmp_path / "r"))
    assert code == 0, stderr
    assert echo_config(tmp_path / "r") == EchoConfig(scale=2.0, mode="mul", model=EchoModelConfig(width=7))
    assert read_json(tmp_path / "r" / "results.json")["combined"] == 0.0  # seed 0 * scale 2


def test_set_wins_over_the_config_file(tmp_path, capsys):
    path = write_text(tmp_path / "echo.yml", "seed: 3\nmodel: {width: 6}\n")
    out = tmp_path / "r"
    code, _, stderr = run_cli(capsys, "run", ECHO, "--set", "model.width=9", "--config", str(path), "--out", str(out))
    assert code == 0, stderr
    assert echo_config(out) == EchoConfig(seed=3, model=EchoModelConfig(width=9))


def test_run_json_records_the_file_and_its_command_reruns_without_it(tmp_path, capsys):
    import shlex

    path = write_text(tmp_path / "echo.yaml", "seed: 3\nmodel:\n  width: 6\n")
    first = tmp_path / "first"
    code, _, stderr = run_cli(capsys, "run", ECHO, "--config", str(path), "--set", "scale=0.5", "--out", str(first))
    assert code == 0, stderr
    info = read_json(first / "run.json")
    assert info["config_file"] == str(path.resolve())
    assert info["config_file_overrides"] == ["seed=3", "model.width=6"]
    assert info["overrides"] == ["scale=0.5"]
    path.unlink()  # the command holds the file's values: it reruns the same config without it
    words = shlex.split(info["command"])
    assert words[:3] == ["jirl", "run", ECHO]
    words[words.index("--out") + 1] = str(tmp_path / "again")
    code, _, stderr = run_cli(capsys, *words[1:])
    assert code == 0, stderr
    assert echo_config(tmp_path / "again") == echo_config(first) == EchoConfig(seed=3, scale=0.5, model=EchoModelConfig(width=6))


def test_run_json_without_a_config_file(tmp_path, capsys):
    assert run_cli(capsys, "run", ECHO, "--out", str(tmp_path / "r"))[0] == 0
    info = read_json(tmp_path / "r" / "run.json")
    assert info["config_file"] is None and info["config_file_overrides"] == []


@pytest.mark.parametrize(
    "file_name, text, expected",
    [
        ("echo.yaml", "scal: 2\n", ["echo.yaml: unknown config key 'scal'. Did you mean 'scale'?"]),
        ("echo.yaml", "model:\n  widht: 2\n", ["unknown config key 'model.widht'. Did you mean 'model.width'?"]),
        ("echo.json", '{"seed": "abc"}', ["echo.json: seed expects an int, got 'abc'"]),
        ("echo.yaml", "model: 3\n", ["model is a nested config", "model.width"]),
        ("echo.yaml", "seed: [1\n", ["echo.yaml is not valid YAML"]),
        ("echo.json", "{'seed': 1}", ["echo.json is not valid JSON"]),
        ("echo.yaml", "- seed=1\n", ["echo.yaml must hold a mapping", "top level is a list"]),
        ("echo.json", "null", ["echo.json must hold a mapping", "top level is null"]),
        ("echo.toml", "seed = 1\n", ["echo.toml: unknown format '.toml'", ".yaml, .yml or .json"]),
    ],
)
def test_bad_config_files_are_user_errors_naming_the_file(tmp_path, capsys, file_name, text, expected):
    path = write_text(tmp_path / file_name, text)
    code, _, stderr = run_cli(capsys, "run", ECHO, "--config", str(path), "--out", str(tmp_path / "r"))
    assert code == 2
    assert stderr.startswith("error: config file ") and "Traceback" not in stderr
    for part in expected:
        assert part in stderr
    assert not (tmp_path / "r").exists()


COLUMNS = "_test_columns"


@dataclasses.dataclass(frozen=True)
class ColumnsConfig:
    seed: int = 0
    columns: dict[str, str] = dataclasses.field(default_factory=lambda: {"prompt": "prompt"})
    tags: tuple[str, ...] = ()


register_experiment(COLUMNS, config=ColumnsConfig, description="Test-only experiment with a dict field")(
    lambda config, run: {"seed": config.seed})


@pytest.mark.parametrize("file_name, text", [
    ("c.yaml", 'columns: {prompt: "a,b", chosen: "it\'s, \\"quoted\\""}\ntags: ["x,y"]\n'),
    ("c.json", json.dumps({"columns": {"prompt": "a,b", "chosen": 'it\'s, "quoted"'}, "tags": ["x,y"]})),
])
def test_config_file_dict_values_with_commas_run_and_their_command_reruns(tmp_path, capsys, file_name, text):
    import shlex

    path = write_text(tmp_path / file_name, text)
    first = tmp_path / "first"
    code, _, stderr = run_cli(capsys, "run", COLUMNS, "--config", str(path), "--set", "seed=2", "--out", str(first))
    assert code == 0, stderr
    config = config_from_dict(ColumnsConfig, read_json(first / "config.json")["config"])
    assert config == ColumnsConfig(seed=2, columns={"prompt": "a,b", "chosen": 'it\'s, "quoted"'}, tags=("x,y",))
    path.unlink()  # the recorded command reruns the same config without the file
    words = shlex.split(read_json(first / "run.json")["command"])
    words[words.index("--out") + 1] = str(tmp_path / "again")
    code, _, stderr = run_cli(capsys, *words[1:])
    assert code == 0, stderr
    assert read_json(tmp_path / "again" / "config.json") == read_json(first / "config.json")


def test_set_wins_over_a_config_file_dict(tmp_path, capsys):
    path = write_text(tmp_path / "c.yaml", 'columns: {prompt: "a,b", chosen: c}\n')
    out = tmp_path / "r"
    code, _, stderr = run_cli(capsys, "run", COLUMNS, "--config", str(path), "--set", "columns.prompt=p",
                              '--set', 'tags=["u,v"]', "--out", str(out))
    assert code == 0, stderr
    assert read_json(out / "config.json")["config"] == {"seed": 0, "columns": {"prompt": "p", "chosen": "c"},
                                                        "tags": ["u,v"]}


def test_missing_config_file_is_a_user_error(tmp_path, capsys):
    missing = tmp_path / "nowhere.yaml"
    code, _, stderr = run_cli(capsys, "run", ECHO, "--config", str(missing), "--out", str(tmp_path / "r"))
    assert code == 2
    assert stderr.strip() == f"error: config file {missing} not found; check the path given to --config"


def test_run_without_a_name_is_a_user_error(capsys):
    code, _, stderr = run_cli(capsys, "run", "--set", "seed=1")
    assert code == 2 and "jirl run needs the NAME of an experiment" in stderr


# --------------------------------------------------------------------------- jirl run --help, show --format yaml


def test_run_help_lists_every_key_with_type_default_and_comment(capsys):
    code, stdout, _ = run_cli(capsys, "run", ECHO, "--help")
    assert code == 0
    assert "--config FILE" in stdout and "--set KEY=VALUE" in stdout  # the command's own help
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:5]]
            for line in stdout.splitlines() if line.startswith("│")}
    assert rows["scale"] == ["float", "1.0", "multiplies each logged step"]
    assert rows["model.width"] == ["int", "4", "How many units the echo model has (a comment block above the field)."]
    assert rows["mode"][:2] == ["Literal['add', 'mul']", "add"] and rows["seed"] == ["int", "0", ""]


def test_run_help_without_a_name_is_the_plain_help(capsys):
    code, stdout, _ = run_cli(capsys, "run", "-h")
    assert code == 0 and "--config FILE" in stdout and "config (" not in stdout


def test_run_help_of_an_unknown_experiment_is_a_user_error(capsys):
    code, stdout, stderr = run_cli(capsys, "run", "_test_ech", "--help")
    assert code == 2 and "unknown experiment '_test_ech'" in stderr and stdout == ""


def test_show_lists_comments(capsys):
    code, stdout, _ = run_cli(capsys, "show", ECHO)
    assert code == 0
    assert "comment" in stdout and "multiplies each logged step" in stdout and "How many units" in stdout


def test_show_yaml_round_trips_through_run_config(tmp_path, capsys):
    code, text, _ = run_cli(capsys, "show", ECHO, "--format", "yaml")
    assert code == 0
    assert "scale: 1.0  # multiplies each logged step" in text
    assert "  # How many units the echo model has\n" in text and "  width: 4\n" in text
    path = write_text(tmp_path / "defaults.yaml", text)
    assert run_cli(capsys, "run", ECHO, "--config", str(path), "--out", str(tmp_path / "file"))[0] == 0
    assert run_cli(capsys, "run", ECHO, "--out", str(tmp_path / "plain"))[0] == 0
    assert read_json(tmp_path / "file" / "config.json") == read_json(tmp_path / "plain" / "config.json")
    assert read_json(tmp_path / "file" / "run.json")["config_file_overrides"] == [
        "seed=0", "scale=1.0", "mode=add", "model.width=4"
    ]


def test_every_experiment_default_yaml_reads_back_to_its_defaults(tmp_path, capsys):
    load_experiments()
    for name in EXPERIMENTS.names():
        code, text, _ = run_cli(capsys, "show", name, "--format", "yaml")
        assert code == 0
        path = write_text(tmp_path / f"{name}.yaml", text)
        defaults = EXPERIMENTS.get(name).default_config()
        config, overrides = apply_config_file(defaults, path)
        assert config == defaults, name
        assert len(overrides) == len(describe_fields(defaults)), name  # every key is in the file
