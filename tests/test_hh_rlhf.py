"""``jirl run hh_rlhf`` end to end on the real SmolLM2-135M-Instruct and MiniLM (a smoke run),
and its pieces: the GPU preset, prompts from held-out dialogues, the reward function."""

import json

import numpy as np
import pytest

from experiments.hh_rlhf import GPU_PRESET, HHRLHFConfig, apply_preset
from jirl.cli import main
from jirl.config import ConfigError


def test_gpu_preset_changes_only_fields_left_at_their_defaults():
    config = apply_preset(HHRLHFConfig(preset="gpu", steps=7))
    assert config.steps == 7  # set explicitly: kept
    assert config.group_size == GPU_PRESET["group_size"] and config.max_new_tokens == GPU_PRESET["max_new_tokens"]
    assert apply_preset(HHRLHFConfig()) == HHRLHFConfig()
    with pytest.raises(ConfigError, match="preset='tpu'"):
        apply_preset(HHRLHFConfig(preset="tpu"))


def test_a_missing_pairs_file_is_an_error_naming_it(tmp_path, capsys):
    """Without pairs.jsonl[.gz] in manual_dir the run stops before any model is loaded, with
    a message naming the file it looked for (not a bare StopIteration)."""
    assert main(["run", "hh_rlhf", "--out", str(tmp_path / "run"), "--set", f"manual_dir={tmp_path}", "steps=1"]) != 0
    assert f"{tmp_path}/pairs.jsonl.gz" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.heavy  # the real model's RL path runs in tests/test_examples.py::test_pretrained_lora_rl
def test_smoke_run_on_the_real_model(tmp_path):
    out = tmp_path / "run"
    # The reward model learns from 150 pairs here (all 1,843 take two minutes to embed on CI).
    args = ["run", "hh_rlhf", "--out", str(out), "--set", "steps=2", "rm_pairs=150", "eval_prompts=4", "show_samples=1",
            "max_new_tokens=16"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    rm = results["reward_model"]
    # The head was fitted (a 384-dim linear head separates 121 pairs; measured 1.0). Its held-out
    # accuracy on ~30 pairs is too noisy to test here: the full run's 0.559 is in the README.
    assert rm["train_pairs"] + rm["test_pairs"] == 150 and rm["train_accuracy"] > 0.9 and 0 <= rm["test_accuracy"] <= 1
    assert len(results["curves"]["score"]) == 2 and all(np.isfinite(results["curves"]["kl"]))
    # Before training the policy is the reference: the exact KL is zero; after, it is >= 0.
    assert results["before"]["kl"] == pytest.approx(0.0, abs=1e-5) and results["after"]["kl"] >= 0
    assert 1 <= results["after"]["length"] <= 16
    assert results["samples"]["before"][0]["prompt"] == results["samples"]["after"][0]["prompt"]
    assert (out / "hh_rlhf.png").stat().st_size > 10_000
    assert any((out / "adapters").iterdir())  # the adapters alone were checkpointed


class CharTokenizer:
    """ids 1..26 are 'a'..'z'; 0 is EOS (left out when decoding, as special tokens are)."""

    eos_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i - 1) for i in ids if i)


class TextRecorder:
    """A reward model whose score is a text's length; it records what it was asked to score."""

    def __init__(self):
        self.seen = []

    def score(self, texts):
        self.seen.extend(texts)
        return np.array([float(len(t)) for t in texts])


def test_reward_function_scores_each_reply_with_its_own_human_turn():
    from experiments.hh_rlhf import PromptSet, reward_fn_for, rm_text

    prompts = PromptSet(
        tokens=np.array([[1, 2, 0], [3, 4, 5]], np.int32), lens=np.array([2, 3], np.int32),
        texts=["first turn", "second turn"], horizon=4, eos_id=0,
    )
    recorder = TextRecorder()
    reward_fn = reward_fn_for(prompts, recorder, CharTokenizer())
    # Row 0: prompt [1, 2] then reply "cd" + EOS; row 1: prompt [3, 4, 5] then reply "z" + EOS.
    tokens = np.array([[1, 2, 3, 4, 0, 0, 0], [3, 4, 5, 26, 0, 0, 0]], np.int32)
    rewards = np.asarray(reward_fn(tokens, np.array([2, 3]), np.array([3, 2])))
    assert recorder.seen == [rm_text("first turn", "cd"), rm_text("second turn", "z")]
    expected = np.zeros((2, 4), np.float32)
    expected[0, 2], expected[1, 1] = len(recorder.seen[0]), len(recorder.seen[1])  # paid at the last token
    np.testing.assert_array_equal(rewards, expected)
