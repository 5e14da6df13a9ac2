"""The generic text trainers ``jirl run sft / dpo / kto`` (experiments/sft.py, dpo.py, kto.py) on a
tiny random Llama with a word-level ChatML tokenizer, on synthetic data a policy can learn:

- DPO and KTO must raise held-out reward accuracy (from 0: the initial policy is its reference);
- every held-out metric must equal a brute-force recomputation from per-sequence log-probs,
  computed here with plain loops from the weights saved by the run (which also checks the saved
  layout: adapters restored onto a fresh LoRA model, or full parameters);
- SFT must lower the held-out NLL of the assistant-only tokens, and its NLL must equal a
  per-token loop over the loss mask;
- bad settings are one ``ConfigError`` naming the setting.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tokenizers import Tokenizer as Backend
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from jirl.config import ConfigError
from jirl.experiment import run_experiment
from jirl.models import llama
from jirl.models.lora import add_lora, adapter_params, with_adapters
from jirl.models.loading import save_safetensors
from jirl.models.pretrained import load_pretrained
from jirl.models.transformer import Transformer, llama_tiny
from jirl.train.checkpoint import CheckpointManager

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOPICS = [f"q{i}" for i in range(12)]
FILLER = [f"w{i}" for i in range(8)]
WORDS = ["[UNK]", "<|im_start|>", "<|im_end|>", "user", "assistant", "system", "good", "bad", *TOPICS, *FILLER]
TINY = ("max_len=32", "max_prompt_len=12", "samples=2", "sample_tokens=4")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> str:
    """A 2-layer, d=32 random Llama (Hugging Face folder) with a 32-word ChatML tokenizer."""
    folder = tmp_path_factory.mktemp("models") / "tiny-chat"
    config = llama_tiny(len(WORDS), d_model=32, num_heads=4, num_kv_heads=2, max_len=64, tie_embeddings=False)
    _, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    save_safetensors(params, llama.hf_rules(config), llama.config_to_hf(config), folder)
    backend = Backend(WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "chat_template": CHATML}))
    return str(folder)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def words(rng, count: int, pool=FILLER) -> str:
    return " ".join(rng.choice(pool, count))


def preference_rows(count: int, seed: int) -> list[dict]:
    """Each prompt answered twice with the same filler; the chosen reply says ``good``, the rejected ``bad``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        filler = words(rng, 2)
        rows.append({"prompt": f"{TOPICS[i % len(TOPICS)]} {words(rng, 2)}", "chosen": f"good {filler}", "rejected": f"bad {filler}"})
    return rows


def run(tmp_path: Path, name: str, *settings: str) -> tuple[Path, dict]:
    return run_experiment(name, list(settings), out_dir=tmp_path / name)


# --------------------------------------------------------------------------- brute force


class Scorer:
    """log pi(tokens[start:start+length] | tokens[:start]) of a model, read in float64 from the
    logits of one plain forward pass over the buffer (a causal model: slot s - 1 sees only
    tokens[:s]), token by token in Python."""

    def __init__(self, model):
        self.model, self.cache = model, {}

    def __call__(self, tokens: np.ndarray, start: int, length: int) -> float:
        key = tokens.tobytes()
        if key not in self.cache:
            logits = np.asarray(self.model(jnp.asarray(tokens[None])).logits[0], np.float64)
            top = logits.max(axis=-1, keepdims=True)
            self.cache[key] = logits - (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))
        log_probs = self.cache[key]
        return sum(log_probs[slot - 1, tokens[slot]] for slot in range(start, start + length))


def trained_and_reference(model_path: str, run_dir: Path, rank: int, alpha: float = 16.0):
    """The trained policy rebuilt from the run's saved weights, and the initial model."""
    base = load_pretrained(model_path)
    if rank == 0:
        with CheckpointManager(run_dir / "params") as manager:
            params, metadata = manager.restore(base.params)
        assert metadata["format"] == "params" and metadata["lora"] is None
        return Scorer(nnx.merge(base.graphdef, params)), Scorer(nnx.merge(base.graphdef, base.params))
    fresh = add_lora(nnx.merge(base.graphdef, base.params), rank, alpha)
    graphdef, fresh_params = nnx.split(fresh)
    with CheckpointManager(run_dir / "adapters") as manager:
        adapters, metadata = manager.restore(adapter_params(fresh_params))
    assert metadata["format"] == "adapters" and metadata["lora"]["rank"] == rank
    return Scorer(nnx.merge(graphdef, with_adapters(fresh_params, adapters))), Scorer(nnx.merge(base.graphdef, base.params))


def held_out(run_dir: Path, kind: str, model_path: str, settings: tuple[str, ...], name: str):
    """The run's held-out examples, prepared again with the run's own settings."""
    from experiments.text_common import load_policy, prepare_data
    from jirl.config import apply_overrides
    from jirl.experiment import EXPERIMENTS
    from jirl.run_dir import RunDir

    config = apply_overrides(EXPERIMENTS.get(name).default_config(), list(settings))
    policy = load_policy(config)
    return prepare_data(kind, config, policy, RunDir(run_dir / "again")).eval


# --------------------------------------------------------------------------- DPO


@pytest.mark.slow
def test_dpo_raises_held_out_accuracy_and_its_metrics_match_brute_force(chat_model, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(160, seed=0))
    settings = (f"model={chat_model}", f"data={data}", *TINY, "eval_fraction=0.2", "beta=0.5",
                "train.steps=120", "train.batch_size=8", "train.learning_rate=3e-3", "train.eval_every=40")
    out, results = run(tmp_path, "dpo", *settings)
    before, after = results["before"], results["after"]
    assert before["accuracy"] == 0.0 and before["margin"] == pytest.approx(0.0, abs=1e-5)
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference: softplus(0)
    assert after["accuracy"] >= 0.9 and after["margin"] > 0.5 and after["loss"] < 0.5 * math.log(2)
    assert [e["step"] for e in results["curves"]["eval"]] == [0, 40, 80, 120]
    assert len(results["curves"]["train"]) == 120
    assert len(results["samples"]["before"]) == 2 and "reply" in results["samples"]["after"][0]
    assert (out / "dpo.png").exists() and (out / "metrics.jsonl").exists()

    policy, reference = trained_and_reference(chat_model, out, rank=8)
    pairs = held_out(out, "preference", chat_model, settings, "dpo")
    beta, rewards = 0.5, {"chosen": [], "rejected": []}
    for pair in pairs:
        p = int(pair["prompt_len"])
        for side in rewards:
            tokens, n = np.asarray(pair[side]), int(pair[f"{side}_len"])
            rewards[side].append(beta * (policy(tokens, p, n) - reference(tokens, p, n)))
    chosen, rejected = np.array(rewards["chosen"]), np.array(rewards["rejected"])
    assert results["eval_pairs"] == len(pairs)
    assert after["accuracy"] == pytest.approx(np.mean(chosen > rejected), abs=1e-9)
    assert after["reward_chosen"] == pytest.approx(chosen.mean(), abs=2e-4)
    assert after["reward_rejected"] == pytest.approx(rejected.mean(), abs=2e-4)
    assert after["margin"] == pytest.approx((chosen - rejected).mean(), abs=2e-4)
    assert after["loss"] == pytest.approx(np.mean(np.log1p(np.exp(-(chosen - rejected)))), abs=2e-4)


def test_dpo_settings_are_checked_before_any_work(chat_model, tmp_path):
    with pytest.raises(ConfigError, match="kto is unpaired") as error:
        run(tmp_path, "dpo", f"model={chat_model}", "loss=kto")
    assert "ipo" in str(error.value) and "simpo" in str(error.value)
    with pytest.raises(ConfigError, match="dpo"):
        run(tmp_path, "dpo", f"model={chat_model}", "loss=dpoo")
    with pytest.raises(ConfigError, match="label_smoothing"):
        run(tmp_path, "dpo", f"model={chat_model}", "loss=cdpo", "options.smoothing=0.1")
    with pytest.raises(ConfigError, match="max_prompt_len"):
        run(tmp_path, "dpo", f"model={chat_model}", "max_len=16", "max_prompt_len=16")


# --------------------------------------------------------------------------- KTO


def unpaired_rows(count: int, seed: int) -> list[dict]:
    """Replies saying ``good`` are desirable, ``bad`` undesirable (LLaMA-Factory's {messages, label})."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        label = bool(rng.integers(2))
        reply = f"{'good' if label else 'bad'} {words(rng, 2)}"
        prompt = f"{TOPICS[i % len(TOPICS)]} {words(rng, 2)}"
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}], "label": label})
    return rows


@pytest.mark.slow
def test_kto_separates_desirable_from_undesirable_and_its_metrics_match_brute_force(chat_model, tmp_path):
    data = write_jsonl(tmp_path / "judged.jsonl", unpaired_rows(200, seed=1))
    settings = (f"model={chat_model}", f"data={data}", *TINY, "eval_fraction=0.2", "beta=0.5", "undesirable_weight=1.3",
                "train.steps=120", "train.batch_size=8", "train.learning_rate=3e-3", "train.eval_every=60")
    out, results = run(tmp_path, "kto", *settings)
    before, after = results["before"], results["after"]
    assert before["accuracy"] == 0.0 and before["kl"] == pytest.approx(0.0, abs=1e-5)
    assert after["accuracy"] >= 0.85 and after["reward_desirable"] > 0 > after["reward_undesirable"]
    assert after["loss"] < before["loss"]
    assert [e["step"] for e in results["curves"]["eval"]] == [0, 60, 120]

    policy, reference = trained_and_reference(chat_model, out, rank=8)
    examples = held_out(out, "unpaired", chat_model, settings, "kto")
    beta, width = 0.5, 32
    logp = {"policy": [], "reference": [], "policy_x": [], "reference_x": []}
    for i, example in enumerate(examples):
        other = examples[(i + 1) % len(examples)]
        p, n = int(example["prompt_len"]), int(example["response_len"])
        q, m = int(other["prompt_len"]), int(other["response_len"])
        mismatched = np.concatenate([np.asarray(example["tokens"])[:p], np.asarray(other["tokens"])[q : q + m]])[:width]
        mismatched = np.pad(mismatched, (0, width - len(mismatched)))
        for name, model in (("policy", policy), ("reference", reference)):
            logp[name].append(model(np.asarray(example["tokens"]), p, n))
            logp[f"{name}_x"].append(model(mismatched, p, min(m, width - p)))
    logp = {k: np.array(v) for k, v in logp.items()}
    label = np.array([int(e["label"]) for e in examples]) > 0
    r = logp["policy"] - logp["reference"]
    kl = np.mean(logp["policy_x"] - logp["reference_x"])
    z0 = max(kl, 0.0)
    value = 1 / (1 + np.exp(-beta * np.where(label, r - z0, z0 - r)))
    loss = np.mean(np.where(label, 1.0, 1.3) * (1 - value))
    assert results["eval_examples"] == len(examples)
    assert after["kl"] == pytest.approx(kl, abs=2e-4)
    assert after["loss"] == pytest.approx(loss, abs=2e-4)
    assert after["reward_desirable"] == pytest.approx(beta * r[label].mean(), abs=2e-4)
    assert after["reward_undesirable"] == pytest.approx(beta * r[~label].mean(), abs=2e-4)
    assert after["accuracy"] == pytest.approx(np.mean(np.where(label, r > 0, r < 0)), abs=1e-9)


# --------------------------------------------------------------------------- SFT


def conversation_rows(count: int, seed: int) -> list[dict]:
    """Two-turn chats: the assistant always answers ``good <topic>``; the user's second turn is
    random filler (never trained: the loss mask covers the assistant turns only)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        rows.append({"messages": [
            {"role": "user", "content": f"{topic} {words(rng, 2)}"}, {"role": "assistant", "content": f"good {topic}"},
            {"role": "user", "content": words(rng, 3)}, {"role": "assistant", "content": f"good {topic} good"},
        ]})
    return rows


@pytest.mark.slow
def test_sft_lowers_held_out_nll_of_assistant_tokens_exactly_as_a_per_token_loop(chat_model, tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", conversation_rows(120, seed=2))
    settings = (f"model={chat_model}", f"data={data}", "columns=", *TINY, "max_prompt_len=0", "lora.rank=0",
                "eval_fraction=0.2", "train.steps=60", "train.batch_size=8", "train.learning_rate=3e-3", "train.eval_every=30")
    out, results = run(tmp_path, "sft", *settings)
    before, after = results["before"], results["after"]
    assert after["nll"] < 0.5 * before["nll"]
    assert after["perplexity"] == pytest.approx(math.exp(after["nll"]), rel=1e-9)
    assert [e["step"] for e in results["curves"]["eval"]] == [0, 30, 60]

    policy, _ = trained_and_reference(chat_model, out, rank=0)
    examples = held_out(out, "sft", chat_model, settings, "sft")
    total, count = 0.0, 0
    for example in examples:
        tokens, mask = np.asarray(example["tokens"]), np.asarray(example["loss_mask"])
        end = int(example["prompt_len"]) + int(example["response_len"])
        for slot in range(int(example["prompt_len"]), end):
            if mask[slot]:
                total -= policy(tokens, slot, 1)
                count += 1
    user_tokens = sum(int(e["response_len"]) for e in examples) - count
    assert user_tokens > 0  # the second user turn sits inside the response and is masked out
    assert after["tokens"] == count
    assert after["nll"] == pytest.approx(total / count, abs=2e-5)
