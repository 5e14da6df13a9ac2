"""``jirl run rm`` (experiments/rm.py): a sequence reward model on a pretrained decoder.

A tiny Llama (tests/models/fixtures/tiny_llama, random weights, vocabulary 64, context 32) with
a word-level tokenizer written here stands in for the pretrained backbone; the preference data
is a JSONL file in TRL's standard form, or HH-RLHF dialogues.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer as Backend
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from experiments import rm
from jirl.config import ConfigError
from jirl.data.chat_tokenize import ChatTokenization, tokenize_preference_row
from jirl.data.formats import read_rows
from jirl.experiment import RunDir, run_experiment
from jirl.train.loop import TrainConfig

TINY_LLAMA = Path(__file__).parent / "models" / "fixtures" / "tiny_llama"
WORDS = ["<pad>", "<unk>", "</s>", "good", "bad", "fine", "okay", "maybe"] + [f"w{i}" for i in range(20)]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """The tiny Llama's config and weights with a word-level tokenizer (EOS ``</s>``)."""
    folder = tmp_path_factory.mktemp("tiny_backbone")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(TINY_LLAMA / name, folder / name)
    backend = Backend(WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.add_special_tokens(["<pad>", "</s>"])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "<pad>"}))
    return folder


def separable_rows(path: Path, count: int = 160, seed: int = 0) -> Path:
    """Prompts of 2-4 random words; the chosen reply says ``good``/``fine``, the rejected one
    ``bad``/``maybe``, each padded with random words: a preference any RM can learn."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        words = lambda n: " ".join(f"w{j}" for j in rng.integers(0, 20, n))  # noqa: E731
        rows.append({
            "prompt": f"w{i % 20} {words(rng.integers(1, 4))}",
            "chosen": f"{words(rng.integers(0, 3))} good {words(rng.integers(0, 2))} fine",
            "rejected": f"{words(rng.integers(0, 3))} bad {words(rng.integers(0, 2))} maybe",
        })
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tiny_config(backbone: Path, data: Path, **changes) -> rm.RMConfig:
    train = TrainConfig(steps=60, batch_size=16, learning_rate=3e-2, warmup_steps=5, checkpoint_every=60,
                        eval_every=30, log_every=10)
    values = dict(model=str(backbone), data=str(data), max_len=24, eval_fraction=0.25, feature_batch_size=16,
                  eval_batch_size=16, train=train)
    values.update(changes)
    return rm.RMConfig(**values)


@pytest.fixture(scope="module")
def trained(backbone, tmp_path_factory):
    """One head-only run on the separable set: (config, results, model, run folder)."""
    folder = tmp_path_factory.mktemp("rm_run")
    config = tiny_config(backbone, separable_rows(folder / "prefs.jsonl"))
    results, model = rm.train_reward_model(config, RunDir(folder / "run"))
    return config, results, model, folder / "run"


def test_head_learns_separable_preferences(trained):
    _, results, _, _ = trained
    assert results["data"]["eval_pairs"] >= 25 and results["data"]["train_pairs"] >= 100
    assert results["after"]["accuracy"] >= 0.9, results["after"]
    assert results["after"]["loss"] < results["before"]["loss"] - 0.1
    assert results["after"]["margin"] > 0.5
    assert results["curves"]["eval"][-1]["step"] == 60


@pytest.mark.slow
def test_lora_on_the_top_layer_learns_too(backbone, tmp_path):
    config = tiny_config(backbone, separable_rows(tmp_path / "prefs.jsonl", seed=1), loss="classification",
                         lora=rm.LoRASettings(rank=4, alpha=8.0, layers=1))
    results, model = rm.train_reward_model(config, RunDir(tmp_path / "run"))
    assert results["first_adapted_layer"] == 1  # layer 0 cached, layer 1 adapted
    assert results["after"]["accuracy"] >= 0.9, results["after"]
    loaded = rm.load_reward_model(tmp_path / "run")
    lora_b = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(rm.nnx.state(loaded.model, rm.ADAPTERS))
              if "lora_b" in jax.tree_util.keystr(path)]
    assert lora_b and any(np.abs(np.asarray(b)).max() > 0 for b in lora_b)  # the adapters trained and were saved


def eval_examples(config: rm.RMConfig, tokenizer) -> list[dict]:
    return rm.prepare_pairs(config, tokenizer)[1]


def test_eval_metrics_equal_a_per_pair_recomputation(trained):
    config, results, model, _ = trained
    tokenizer = rm.load_pretrained(config.model).tokenizer
    examples = eval_examples(config, tokenizer)
    graphdef, params = rm.nnx.split(model)
    reward = jax.jit(lambda tokens, length: rm.nnx.merge(graphdef, params)(tokens[None], length[None])[0])
    chosen, rejected, losses = [], [], []
    for e in examples:  # one pair at a time, through the whole model (no cached features)
        r_c = float(reward(e["chosen"], e["prompt_len"] + e["chosen_len"]))
        r_r = float(reward(e["rejected"], e["prompt_len"] + e["rejected_len"]))
        chosen.append(r_c)
        rejected.append(r_r)
        losses.append(float(np.logaddexp(0.0, -(r_c - r_r))))  # BT: softplus(-(r+ - r-))
    p = np.mean([c > r for c, r in zip(chosen, rejected)])
    after = results["after"]
    assert after["pairs"] == len(examples)
    assert after["accuracy"] == pytest.approx(p, abs=1e-12)
    assert after["accuracy_se"] == pytest.approx(np.sqrt(p * (1 - p) / len(examples)), abs=1e-12)
    assert after["loss"] == pytest.approx(np.mean(losses), rel=1e-4, abs=1e-5)
    assert after["chosen"] == pytest.approx(np.mean(chosen), rel=1e-4, abs=1e-5)
    assert after["rejected"] == pytest.approx(np.mean(rejected), rel=1e-4, abs=1e-5)
    assert after["margin"] == pytest.approx(np.mean(chosen) - np.mean(rejected), rel=1e-4, abs=1e-5)


def test_pair_metrics_on_known_rewards():
    metrics = rm.pair_metrics("bt", np.array([1.0, 0.0, 2.0, 0.5]), np.array([0.0, 1.0, 2.0, -0.5]), np.zeros(4))
    assert metrics["accuracy"] == pytest.approx(0.625)  # 1 + 0 + 1/2 (tie) + 1
    assert metrics["accuracy_se"] == pytest.approx(np.sqrt(0.625 * 0.375 / 4))
    assert metrics["margin"] == pytest.approx(0.25)
    expected = np.mean(np.logaddexp(0.0, -np.array([1.0, -1.0, 0.0, 1.0])))
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    hinge = rm.pair_metrics("hinge", np.array([2.0, 0.5]), np.array([0.0, 0.0]), np.zeros(2))
    assert hinge["loss"] == pytest.approx(0.25)  # hinge keeps its own margin 1: (0 + 0.5) / 2


def test_load_reward_model_reproduces_the_trained_scores_exactly(trained):
    config, results, model, run_folder = trained
    loaded = rm.load_reward_model(run_folder)
    info = json.loads((run_folder / "reward_model" / "reward_model.json").read_text())
    assert info["backbone"] == str(Path(config.model).resolve()) and info["lora"]["rank"] == 0
    assert info["tokenization"]["max_len"] == config.max_len and loaded.tokenization.max_len == config.max_len
    assert info["normalization"] == {**info["normalization"], **results["normalization"]}
    examples = eval_examples(config, loaded.tokenizer)
    tokens = np.stack([e["chosen"] for e in examples])
    prompt_len = np.array([e["prompt_len"] for e in examples])
    response_len = np.array([e["chosen_len"] for e in examples])
    norm = results["normalization"]
    expected = rm.normalized_score_fn(model, norm["mean"], norm["std"])(tokens, prompt_len, response_len)
    np.testing.assert_array_equal(np.asarray(loaded.score_fn(tokens, prompt_len, response_len)), np.asarray(expected))
    assert loaded.tokenizer.encode("good fine") == [3, 5]


def test_scores_are_standardised_over_the_training_responses(trained):
    config, results, _, run_folder = trained
    loaded = rm.load_reward_model(run_folder)
    train, _, _ = rm.prepare_pairs(config, loaded.tokenizer)
    scores = np.concatenate([
        np.asarray(loaded.score_fn(np.stack([e[side] for e in train]), np.array([e["prompt_len"] for e in train]),
                                   np.array([e[f"{side}_len"] for e in train])))
        for side in ("chosen", "rejected")
    ])
    assert abs(scores.mean()) < 1e-3 and scores.std() == pytest.approx(1.0, abs=1e-3)


def test_unknown_loss_lists_the_registered_names(backbone, tmp_path):
    with pytest.raises(ConfigError, match="bt.*classification.*hinge"):
        run_experiment("rm", ["loss=nope", f"model={backbone}"], out_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="bt, classification, hinge"):
        rm.check_config(rm.RMConfig(loss="nope"))


def test_data_preparation_matches_tokenize_preference_row(backbone, tmp_path):
    config = tiny_config(backbone, separable_rows(tmp_path / "prefs.jsonl", count=40))
    tokenizer = rm.load_pretrained(config.model).tokenizer
    train, held_out, report = rm.prepare_pairs(config, tokenizer)
    rows, _ = read_rows(tmp_path / "prefs.jsonl", "preference")
    sides = [rm.assign_split(json.dumps(row.prompt, sort_keys=True), 0.25, 0) for row in rows]
    expected = [tokenize_preference_row(row, tokenizer, ChatTokenization(24)).example for row, s in zip(rows, sides) if s == "test"]
    assert report["eval_pairs"] == len(expected) == len(held_out) and report["train_pairs"] == len(train)
    for got, want in zip(held_out, expected):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def write_hh(path: Path, dialogues) -> Path:
    with gzip.open(path, "wt") as f:
        for chosen, rejected in dialogues:
            f.write(json.dumps({"chosen": chosen, "rejected": rejected}) + "\n")
    return path


def test_hh_rows_use_the_hh_split_and_the_last_human_turn(backbone, tmp_path):
    dialogues = []
    for i in range(30):
        prompt = f"\n\nHuman: w{i % 20} w1\n\nAssistant: w2\n\nHuman: w{(3 * i) % 20} good\n\nAssistant:"
        dialogues.append((prompt + " fine w4", prompt + " bad w5"))
    path = write_hh(tmp_path / "pairs.jsonl.gz", dialogues)
    assert rm.is_hh_file(path)
    rows, keys, report = rm.hh_rows(path, "last_turn")
    assert report["kept"] == 30 and keys[0] == dialogues[0][0][: -len(" fine w4")]
    assert rows[0].prompt == [{"role": "user", "content": "w0 good"}]
    assert rows[0].chosen == [{"role": "assistant", "content": "fine w4"}]
    dialogue_rows, _, _ = rm.hh_rows(path, "dialogue")
    assert [m["role"] for m in dialogue_rows[0].prompt] == ["user", "assistant", "user"]
    assert dialogue_rows[0].prompt[1]["content"] == "w2"
    config = tiny_config(backbone, tmp_path)  # a folder: its pairs.jsonl.gz
    train, held_out, report = rm.prepare_pairs(config, rm.load_pretrained(config.model).tokenizer)
    test = sum(rm.assign_split(key, 0.2, 0) == "test" for key in keys)
    assert report["format"] == "hh-rlhf" and len(held_out) == test and len(train) == 30 - test


def test_hh_messages_splits_turns():
    prompt = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:"
    assert rm.hh_messages(prompt) == [
        {"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"},
    ]


@pytest.mark.skipif(not (rm.SHARED_HH / "pairs.jsonl.gz").exists(), reason="needs ../shared/data/hh-rlhf-harmless")
def test_real_hh_split_is_the_minilm_baselines_370_held_out_pairs():
    _, keys, _ = rm.hh_rows(rm.SHARED_HH / "pairs.jsonl.gz", "last_turn")
    sides = [rm.assign_split(key, 0.2, 0) for key in keys]
    assert (sides.count("train"), sides.count("test")) == (1465, 370)  # results/hh_rlhf: test_pairs 370


def test_gpu_preset_changes_only_defaults():
    config = rm.apply_preset(rm.RMConfig(preset="gpu", max_len=300))
    assert config.max_len == 300 and config.lora.rank == 16 and config.train.steps == 600
    assert rm.apply_preset(rm.RMConfig()) == rm.RMConfig()
