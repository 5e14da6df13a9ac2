"""``jirl run irl`` (experiments/irl.py) on a tiny Llama with a byte-level chat tokenizer: AfD's
pairs prefer the demonstration and sampling never reads it, the reply mask is the SFT loss mask,
methods without a text implementation are refused, and the run end to end (a discriminator that
separates demonstrations from the policy's replies, saved where ``jirl run rl`` reads it)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.irl import (
    IRLTextConfig,
    pair_records,
    prompts_only,
    reply_nll_evaluator,
    sample_replies,
    single_reply,
)
from experiments.rl import REWARDS, RewardInputs
from experiments.sft import token_evaluator
from experiments.text_common import stacked
from experiments.rm import load_reward_model
from jirl.cli import main
from jirl.config import ConfigError, apply_overrides, validate_config
from jirl.data.chat_tokenize import ChatTokenization, tokenize_sft_row
from jirl.data.conversations import SftRow
from jirl.data.errors import DataError
from jirl.data.examples import stack_examples
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.models.pretrained import load_pretrained
from jirl.models.scoring import logits_fn
from jirl.train.trained import load_trained
from tests.data.test_chat_tokenize import EOS, byte_chat_tokenizer
from tests.test_rl_experiment import QUESTIONS, write_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny_llama_irl"))


def demo_rows(settings: ChatTokenization, questions=QUESTIONS) -> list[dict]:
    tokenizer = byte_chat_tokenizer()
    examples = [tokenize_sft_row(SftRow([{"role": "user", "content": q}, {"role": "assistant", "content": a}], f"demos:{i + 1}", True),
                                 tokenizer, settings).example for i, (q, a) in enumerate(questions)]
    return single_reply(examples, "test"), examples


def test_reply_nll_is_sfts_held_out_nll_and_each_replys_mean_a_loop(tiny_model):
    base = load_pretrained(str(tiny_model))
    rows, examples = demo_rows(ChatTokenization(max_len=64, max_prompt_len=32))
    evaluate = reply_nll_evaluator(base.graphdef, stacked(rows), chunk=3)
    got = evaluate(base.params)
    # jirl run sft's evaluator (with the loss masks of the single-reply rows) gives the same pooled NLL.
    sft_nll = token_evaluator(base.graphdef, stack_examples(examples), 3)(base.params)["nll"]
    assert got["nll"] == pytest.approx(sft_nll, rel=1e-6)
    # Each reply's own mean, by a loop over its tokens.
    logits = np.asarray(logits_fn(base.graphdef, base.params)(jnp.asarray(np.stack([r["tokens"] for r in rows]))))
    for row, value, logit in zip(rows, got["per_reply"], logits):
        p, n = int(row["prompt_len"]), int(row["response_len"])
        log_probs = logit - np.log(np.exp(logit - logit.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logit.max(-1, keepdims=True)
        expected = -np.mean([log_probs[t - 1, row["tokens"][t]] for t in range(p, p + n)])
        assert value == pytest.approx(expected, rel=1e-4)


def test_afd_pairs_prefer_the_demonstration_and_sampling_never_reads_it(tiny_model):
    base = load_pretrained(str(tiny_model))
    rows, _ = demo_rows(ChatTokenization(max_len=48, max_prompt_len=32))
    sampling = SamplingConfig(max_new_tokens=16, eos_id=EOS, temperature=1.0)
    key = jax.random.key(3)
    replies = sample_replies(base.graphdef, base.params, rows, 32, sampling, key, batch_size=len(rows))
    # The same key on buffers that hold the prompts alone, through generate directly.
    prompts = np.stack([r["tokens"][:32] for r in prompts_only(rows, EOS)])
    assert all((p[r["prompt_len"]:] == EOS).all() for p, r in zip(prompts, rows))
    out = generate(base.graphdef, base.params, prompts, np.array([r["prompt_len"] for r in rows]), jax.random.fold_in(key, 0), sampling)
    np.testing.assert_array_equal(np.stack([r["tokens"] for r in replies]), np.asarray(out.tokens))
    np.testing.assert_array_equal([r["response_len"] for r in replies], np.asarray(out.response_lens))
    for row, reply, pair in zip(rows, replies, pair_records(rows, replies, 48, EOS)):
        p, n, m = row["prompt_len"], row["response_len"], reply["response_len"]
        np.testing.assert_array_equal(pair["chosen"][: p + n], row["tokens"][: p + n])  # chosen: the demonstration
        np.testing.assert_array_equal(pair["rejected"][: p + m], reply["tokens"][: p + m])  # rejected: Q's reply
        assert (pair["chosen"][p + n :] == EOS).all() and (pair["rejected"][p + m :] == EOS).all()
        assert (pair["prompt_len"], pair["chosen_len"], pair["rejected_len"]) == (p, n, m)


def test_a_demonstration_with_a_second_assistant_turn_is_refused():
    tokenizer = byte_chat_tokenizer()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and?"}, {"role": "assistant", "content": "bye"}]
    example = tokenize_sft_row(SftRow(messages, "demos.jsonl:7", True), tokenizer, ChatTokenization(max_len=96)).example
    with pytest.raises(DataError, match="training demonstration 0 continues the conversation.*one assistant turn"):
        single_reply([example], "training")


def test_methods_without_a_text_implementation_are_refused_by_name():
    with pytest.raises(ConfigError, match="one of afd.*'maxent' is an IRL_METHODS entry for enumerable token tasks.*irl_recovery"):
        validate_config(apply_overrides(IRLTextConfig(), ["method=maxent"]))
    with pytest.raises(ConfigError, match="one of afd.*got 'bogus'"):
        validate_config(apply_overrides(IRLTextConfig(), ["method=bogus"]))


def test_jirl_run_irl_end_to_end_on_a_tiny_model(tiny_model, tmp_path):
    # Demonstrations a random tiny model never writes (short GSM8K-style answers; it writes
    # random bytes): a discriminator that prefers them must separate held-out pairs.
    rows = [{"prompt": f"{q} (variant {i})", "completion": a} for i in range(6) for q, a in QUESTIONS]
    data = tmp_path / "demos.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "run"
    beta = 0.5
    code = main(["run", "irl", "--out", str(out), "--set", f"model={tiny_model}", f"data={data}", "columns=",
                 "max_prompt_tokens=48", "max_new_tokens=16", "demonstrations=0", "eval_fraction=0.4", f"beta={beta}",
                 "reward.train.steps=300", "reward.train.batch_size=16", "reward.train.eval_every=100", "iterations=2",
                 "rl.prompts_per_iteration=4", "rl.group_size=2", "accumulation_steps=1", "eval_prompts=4", "sample_batch_size=8"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    rm = results["reward_model"]
    assert results["method"] == "afd" and results["variant"] == "init_demo"
    assert rm["after"]["pairs"] == results["demonstrations"]["eval"] >= 4
    assert rm["after"]["accuracy"] >= 0.8 and rm["after"]["margin"] > 0  # demonstrations preferred
    std = rm["normalization"]["std"]
    assert results["kl_coef"] == pytest.approx(beta / std)  # beta on the raw reward = beta / std on the normalised one
    assert len(results["rl"]["curves"]["reward"]) == 2
    for side in ("before", "after"):
        assert np.isfinite(results["demo_nll"][side]["nll"]) and results["demo_nll"][side]["tokens"] > 0
    assert results["demo_nll"]["change_per_reply"]["replies"] == results["demonstrations"]["eval"]
    assert (out / "irl.png").exists() and any((out / "tensorboard").iterdir())
    _, _, run_config = load_trained(out)  # the RL-improved policy, as `jirl export` and `init=` read it
    assert run_config["method"] == "afd"

    # The learned reward is a `jirl run rm` model: `jirl run rl --set reward=<run>/reward` reads it.
    loaded = load_reward_model(out / "reward")
    assert loaded.info["normalization"]["std"] == pytest.approx(std)
    base = load_pretrained(str(tiny_model))
    score = REWARDS.get("rm")(str(out / "reward"), RewardInputs(base.tokenizer, None, {}, 16, None))
    pairs_score = np.asarray(score(np.full((2, 20), EOS, np.int32), np.array([3, 4]), np.array([1, 2])))
    assert pairs_score.shape == (2,) and np.isfinite(pairs_score).all()
