"""Every bad input is one clear line, exit code 2, and no work: the table a hostile new user
would try (issue 21). Each row runs ``jirl run`` in-process and checks the message names the
problem, no traceback is printed and the output folder was never created (so no data was
prepared and nothing trained before the refusal)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from jirl.cli import main
from jirl.experiment import register_experiment

# (experiment, overrides, a phrase the message must contain)
BAD_SETTINGS = [
    # sizes and counts
    ("quickstart", ["num_demos=-5"], "num_demos must be >= 1, got -5"),
    ("quickstart", ["num_demos=0"], "num_demos must be >= 1, got 0"),
    ("quickstart", ["task.args=horizon=0"], "task.args: bigram horizon must be >= 1, got 0"),
    ("quickstart", ["task.args=num_chars=27"], "num_chars must be in [1, 26], got 27"),
    ("quickstart", ["task.args=horizon=x"], "task.args: horizon expects an int, got 'x'"),
    ("quickstart", ["task.args=depth=3"], "task.args: unknown config key 'depth'"),
    ("quickstart", ["task.name=bogus"], "task.name must be one of bigram"),
    ("quickstart", ["model.num_heads=3"], "is not divisible by num_heads=3"),
    ("quickstart", ["model.num_heads=0"], "model.num_heads must be >= 1, got 0"),
    ("quickstart", ["model.d_model=0"], "model.d_model must be >= 1, got 0"),
    ("quickstart", ["model.num_layers=0"], "model.num_layers must be >= 1, got 0"),
    ("quickstart", ["model.num_kv_heads=0"], "model.num_kv_heads must be >= 1, got 0"),
    ("quickstart", ["model.family=llama", "model.num_heads=2", "model.num_kv_heads=3"], "must be a multiple of num_kv_heads=3"),
    ("quickstart", ["model.family=bert"], "model.family expects one of"),
    ("quickstart", ["train.eval_every=0"], "train.eval_every must be >= 1, got 0"),
    ("quickstart", ["train.keep_checkpoints=0"], "train.keep_checkpoints must be >= 1, got 0"),
    ("quickstart", ["train.checkpoint_every=0"], "train.checkpoint_every must be >= 1, got 0"),
    ("quickstart", ["train.accumulation_steps=0"], "train.accumulation_steps must be >= 1, got 0"),
    ("quickstart", ["train.accumulation_steps=3"], "batch_size=64 is not divisible by accumulation_steps=3"),
    ("quickstart", ["train.steps=-3"], "train.steps must be >= 1, got -3"),
    ("quickstart", ["train.batch_size=0"], "train.batch_size must be >= 1, got 0"),
    ("quickstart", ["train.warmup_steps=-1"], "train.warmup_steps must be >= 0, got -1"),
    ("quickstart", ["train.clip_norm=0"], "train.clip_norm must be > 0"),
    ("quickstart", ["train.mesh_fsdp=0"], "train.mesh_fsdp must be >= 1, got 0"),
    ("quickstart", ["seeds=0"], "seeds must be >= 1, got 0"),
    ("quickstart", ["rl_iterations=-1"], "rl_iterations must be >= 1"),
    ("quickstart", ["rl.group_size=0"], "rl.group_size must be >= 1, got 0"),
    ("quickstart", ["rl.minibatches=7"], "minibatches=7 does not divide the 128 samples"),
    ("quickstart", ["rl.epochs=0"], "rl.epochs must be >= 1, got 0"),
    # rates and coefficients
    ("quickstart", ["rl_learning_rate=nan"], "rl_learning_rate must be a number, got nan"),
    ("quickstart", ["rl_learning_rate=inf"], "rl_learning_rate must be a finite number, got inf"),
    ("quickstart", ["rl_learning_rate=0"], "rl_learning_rate must be > 0, got 0"),
    ("quickstart", ["train.learning_rate=nan"], "train.learning_rate must be a number, got nan"),
    ("quickstart", ["train.learning_rate=-1"], "train.learning_rate must be >= 0, got -1"),
    ("quickstart", ["train.weight_decay=-0.1"], "train.weight_decay must be >= 0"),
    ("quickstart", ["expert_beta=0"], "expert_beta must be > 0, got 0"),
    ("quickstart", ["expert_beta=-1"], "expert_beta must be > 0, got -1"),
    ("quickstart", ["rl.kl_coef=-0.1"], "rl.kl_coef must be >= 0"),
    ("quickstart", ["rl.temperature=0"], "rl.temperature must be > 0, got 0"),
    ("quickstart", ["rl.gamma=1.5"], "rl.gamma must be in [0, 1], got 1.5"),
    ("quickstart", ["rl.lam=-0.5"], "rl.lam must be in [0, 1], got -0.5"),
    ("quickstart", ["settings.afd.learning_rate=nan"], "settings.afd.learning_rate must be a number, got nan"),
    ("quickstart", ["settings.maxent.l2=-1"], "settings.maxent.l2 must be >= 0"),
    ("quickstart", ["settings.spin.beta=0"], "settings.spin.beta must be > 0, got 0"),
    ("quickstart", ["settings.iq_learn.alpha=0"], "settings.iq_learn.alpha must be > 0, got 0"),
    # names in registries, at every nesting level: refused before SFT or AfD train
    ("quickstart", ["irl=bogus"], "irl must be one of"),
    ("quickstart", ["settings.afd.variant=bogus"], "settings.afd.variant must be one of"),
    ("quickstart", ["settings.afd.loss=bogus"], "settings.afd.loss must be one of"),
    ("quickstart", ["rl.advantage=bogus"], "rl.advantage must be one of"),
    ("quickstart", ["rl.policy_loss=bogus"], "rl.policy_loss must be one of"),
    ("quickstart", ["rl.aggregation=mean"], "rl.aggregation expects one of"),
    # the exact oracle's temperatures
    ("oracle", ["betas=nan"], "betas must be a number, got nan"),
    ("oracle", ["betas=-1,0.5"], "betas must be a list whose every item is > 0"),
    ("oracle", ["betas=0"], "betas must be a list whose every item is > 0"),
    ("oracle", ["betas="], "betas must be a non-empty list"),
    ("oracle", ["betas=inf"], "betas must be a list whose every item is a finite number"),
    ("oracle", ["demo_beta=0"], "demo_beta must be > 0, got 0"),
    ("oracle", ["num_demos=-1"], "num_demos must be"),
    ("oracle", ["reference=bogus"], "reference expects one of"),
    # other studies
    ("rl_oracle", ["algorithms=rloo,bogus"], "algorithms must be a list whose every item is one of"),
    ("rl_oracle", ["beta=0"], "beta must be > 0, got 0"),
    ("rl_oracle", ["task.name=gold_rm", "task.args=d_model=6"], "gold_rm needs d_model a multiple of 4"),
    ("dpo_oracle", ["losses=dpo,bogus"], "losses must be a list whose every item is one of"),
    ("dpo_oracle", ["beta=nan"], "beta must be a number, got nan"),
    ("dpo_oracle", ["pair_counts=256,8192"], "pair_counts [256, 8192] must not exceed num_pairs=4096"),
    ("irl_recovery", ["methods=sft,bogus"], "methods must be a list whose every item is one of"),
    ("irl_recovery", ["tasks=nope"], "tasks must be a list whose every item is one of"),
    ("irl_recovery", ["num_demos=-5"], "num_demos must be >= 1, got -5"),
    ("rm_noise", ["noise_levels=0.1,1.5"], "noise_levels must be a list whose every item is in [0, 0.5]"),
    ("rm_noise", ["methods=bt,bogus"], "methods must be a list whose every item is one of"),
    ("credit_horizon", ["horizons=8,0"], "horizons must be a list whose every item is >= 1"),
    ("credit_horizon", ["schemes=terminal,bogus"], "schemes must be a list whose every item is one of"),
    ("overoptimization", ["rl_learning_rate=nan"], "rl_learning_rate must be a number, got nan"),
    ("overoptimization", ["proxy_sizes=16,0"], "proxy_sizes must be a list whose every item is >= 1"),
    ("hh_rlhf", ["preset=tpu"], "preset must be one of cpu, gpu"),
    ("hh_rlhf", ["group_size=1"], "group_size must be >= 2, got 1"),
    ("hh_rlhf", ["lora.rank=0"], "lora.rank must be >= 1, got 0"),
    ("hh_rlhf", ["model=no_such_model"], "model must be a known model"),
    # chat sampling settings, refused before the model is loaded
    ("chat", ["top_p=0"], "top_p must be in (0, 1], got 0"),
    ("chat", ["top_p=-1"], "top_p must be in (0, 1], got -1"),
    ("chat", ["top_p=nan"], "top_p must be a number, got nan"),
    ("chat", ["temperature=nan"], "temperature must be a number, got nan"),
    ("chat", ["temperature=-1"], "temperature must be >= 0, got -1"),
    ("chat", ["max_new_tokens=0"], "max_new_tokens must be > 0, got 0"),
    ("chat", ["model=no_such_model"], "model must be a known model"),
    # the command line itself
    ("quickstart", ["no_such_key=1"], "unknown config key 'no_such_key'"),
    ("quickstart", ["train.stepz=5"], "Did you mean"),
    ("quickstart", ["seed"], "the form is key=value"),
    ("quickstart", ["train.steps=ten"], "train.steps expects an int, got 'ten'"),
    ("no_such_experiment", [], "unknown experiment 'no_such_experiment'"),
]


@pytest.fixture()
def no_experiment_runs(monkeypatch):
    """An input that is wrongly accepted fails its row at once instead of running the study."""
    def started(*args, **kwargs):
        raise AssertionError("the experiment started: this input was not refused")

    monkeypatch.setattr("jirl.experiment.timed_call", started)


def refusal(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_clear_line(code: int, err: str, phrase: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert phrase in lines[0], lines[0]


@pytest.mark.usefixtures("no_experiment_runs")
@pytest.mark.parametrize(("experiment", "overrides", "phrase"), BAD_SETTINGS, ids=lambda v: ",".join(v) if isinstance(v, list) else None)
def test_bad_setting_is_one_line_before_any_work(capsys, tmp_path, experiment, overrides, phrase):
    out = tmp_path / "run"
    argv = ["run", experiment, "--out", str(out)] + [arg for o in overrides for arg in ("--set", o)]
    code, err = refusal(capsys, argv)
    assert_one_clear_line(code, err, phrase)
    assert not out.exists(), "the run folder was created before the refusal"


def test_the_table_covers_sixty_inputs():
    assert len(BAD_SETTINGS) + len(BAD_OUTPUT_FOLDERS) >= 60


# --------------------------------------------------------------------------- --out and --resume


def out_under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("x")
    return tmp_path / "a_file" / "run"


def out_in_a_read_only_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder / "run"


def out_is_a_nonempty_folder(tmp_path: Path) -> Path:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    return tmp_path / "full"


BAD_OUTPUT_FOLDERS = [
    (out_under_a_file, "cannot create the output folder"),
    (lambda tmp_path: Path("/proc/jirl_run"), "cannot create the output folder"),
    (out_is_a_nonempty_folder, "already exists"),
]
if os.geteuid() != 0:  # root writes anywhere, so a read-only folder only stops other users
    BAD_OUTPUT_FOLDERS.append((out_in_a_read_only_folder, "cannot create the output folder"))


@pytest.mark.usefixtures("no_experiment_runs")
@pytest.mark.parametrize(("make_out", "phrase"), BAD_OUTPUT_FOLDERS)
def test_bad_output_folder_is_one_line(capsys, tmp_path, make_out, phrase):
    code, err = refusal(capsys, ["run", "oracle", "--out", str(make_out(tmp_path))])
    assert_one_clear_line(code, err, phrase)


def test_a_nonempty_folder_is_left_as_it_was(capsys, tmp_path):
    folder = out_is_a_nonempty_folder(tmp_path)
    refusal(capsys, ["run", "oracle", "--out", str(folder)])
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_resume_of_an_experiment_without_checkpoints_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"experiment": "oracle", "config": {}}))
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    code, err = refusal(capsys, ["run", "oracle", "--out", str(out), "--resume"])
    assert_one_clear_line(code, err, "oracle keeps no checkpoints, so --resume cannot continue it")
    assert (out / "metrics.jsonl").read_text() == '{"step": 0}\n'  # nothing appended


def test_resume_with_a_corrupt_config_is_one_line(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"experiment": "quickstart", "conf')
    code, err = refusal(capsys, ["run", "quickstart", "--out", str(out), "--resume"])
    assert_one_clear_line(code, err, "config.json")
    assert (out / "config.json").read_text() == '{"experiment": "quickstart", "conf'


def test_resume_of_a_missing_folder_is_one_line(capsys, tmp_path):
    code, err = refusal(capsys, ["run", "quickstart", "--out", str(tmp_path / "nowhere"), "--resume"])
    assert_one_clear_line(code, err, "nowhere")


@pytest.fixture()
def tiny_model_folder(tmp_path):
    source = Path(__file__).parent / "models" / "fixtures" / "tiny_llama"
    return Path(shutil.copytree(source, tmp_path / "model"))


def test_model_with_zero_heads_in_its_config_is_one_line(capsys, tmp_path, tiny_model_folder):
    config = json.loads((tiny_model_folder / "config.json").read_text())
    config["num_attention_heads"] = 0
    (tiny_model_folder / "config.json").write_text(json.dumps(config))
    code, err = refusal(capsys, ["run", "chat", "--out", str(tmp_path / "run"), "--set", f"model={tiny_model_folder}"])
    assert_one_clear_line(code, err, "num_attention_heads")


def test_truncated_safetensors_is_one_line(capsys, tmp_path, tiny_model_folder):
    weights = next(tiny_model_folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = refusal(capsys, ["run", "chat", "--out", str(tmp_path / "run"), "--set", f"model={tiny_model_folder}"])
    assert_one_clear_line(code, err, weights.name)


# --------------------------------------------------------------------------- no NaN in a result file


@dataclasses.dataclass
class DivergingConfig:
    seed: int = 0


register_experiment("_test_diverging", config=DivergingConfig)(
    lambda config, run: {"stage": {"sft": {"loss": 0.5}, "rl": {"gold_reward": float("nan"), "curve": [1.0, float("inf")]}}}
)


def test_a_result_holding_nan_stops_the_run_and_names_where(capsys, tmp_path):
    out = tmp_path / "run"
    code, err = refusal(capsys, ["run", "_test_diverging", "--out", str(out)])
    assert_one_clear_line(code, err, "stage.rl.gold_reward, stage.rl.curve[1]")
    assert not (out / "results.json").exists()
    kept = json.loads((out / "results.nonfinite.json").read_text().replace("NaN", "null").replace("Infinity", "null"))
    assert kept["stage"]["sft"]["loss"] == 0.5  # the numbers are kept for a post-mortem
