"""``jirl run rl`` (experiments/rl.py) on a tiny Llama with a byte-level chat tokenizer: the
reward forms, the GSM8K verifier reward, the full-vocabulary KL, learning a reward a tiny
policy can learn, and the run end to end."""

from __future__ import annotations

import json
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import experiments.rl as rl
from experiments.rl import (
    GPU_PRESET,
    REWARDS,
    PromptSet,
    RecordingReward,
    RewardInputs,
    RLExperimentConfig,
    apply_preset,
    exact_sequence_kl,
    load_run_weights,
    parse_reward,
    prompt_tokenization,
    rows_by_prompt,
    train,
)
from jirl.cli import main
from jirl.config import ConfigError
from jirl.data.chat_tokenize import ChatTokenization, tokenize_prompt_row
from jirl.data.conversations import PromptRow
from jirl.experiment import RunDir
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.models import llama
from jirl.models.loading import save_safetensors
from jirl.models.lora import add_lora, lora_layers
from jirl.models.pretrained import load_pretrained
from jirl.models.scoring import logits_fn
from jirl.models.transformer import Transformer, llama_tiny
from jirl.preference.implicit import implicit_sequence_rewards
from jirl.rewards.verifiable import exact_match_rewards
from jirl.rl.loop import RLConfig
from tests.data.test_chat_tokenize import CHATML, EOS, byte_chat_tokenizer, byte_ids

VOCAB = 259  # ChatML's three special tokens, then the 256 bytes (byte_chat_tokenizer)
QUESTIONS = [("what is two plus two", "2 + 2 = 4\n#### 4"), ("what is ten minus three", "#### 7"),
             ("how many legs has a cat", "#### 4"), ("half of eighteen", "18 / 2 = 9\n#### 9"),
             ("three times five", "#### 15"), ("one plus one", "#### 2"), ("twelve over four", "#### 3"),
             ("eight minus eight", "#### 0")]


def write_tiny_model(folder, seed=0):
    """A random tiny Llama as a Hugging Face folder (config.json, model.safetensors, tokenizer.json
    and tokenizer_config.json with ChatML), loadable with ``load_pretrained``. Its (tied)
    embedding is scaled up so that its next-token distributions are peaked, as a trained model's
    are (at the initial scale the logits are near zero and LoRA adapters barely move them)."""
    config = llama_tiny(VOCAB, d_model=32, num_heads=2, num_kv_heads=1, max_len=256)
    model = Transformer(config, rngs=nnx.Rngs(seed))
    model.embed.embedding[...] = 20.0 * model.embed.embedding[...]
    _, params = nnx.split(model)
    save_safetensors(params, llama.hf_rules(config), llama.config_to_hf(config), folder)
    tokenizer = byte_chat_tokenizer()
    tokenizer.backend.save(str(folder / "tokenizer.json"))
    settings = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHATML}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny_llama"))


def prompt_set(tokenizer, questions, horizon):
    """A ``PromptSet`` of chat-formatted questions, each row's extra holding its answer."""
    settings = ChatTokenization(max_len=128)
    examples = [tokenize_prompt_row(PromptRow([{"role": "user", "content": q}], "test", True, {"answer": a}), tokenizer, settings).example
                for q, a in questions]
    lens = np.array([e["prompt_len"] for e in examples], np.int32)
    tokens = np.stack([e["tokens"][: lens.max()] for e in examples]).astype(np.int32)
    return PromptSet(tokens, lens, [{"answer": a} for _, a in questions], horizon, tokenizer.eos_id)


# --------------------------------------------------------------------------- config and reward forms


def test_unknown_reward_is_an_error_listing_the_forms(tmp_path, capsys):
    for spec in ("bogus", "verifier:math500", "dpo_implicit:", "", str(tmp_path / "missing")):
        with pytest.raises(ConfigError, match="verifier:NAME.*gsm8k.*jirl run rm.*dpo_implicit:MODEL_OR_RUN_FOLDER"):
            parse_reward(spec)
    assert parse_reward("verifier:gsm8k") == ("verifier", "gsm8k")
    assert parse_reward(str(tmp_path)) == ("rm", str(tmp_path))  # a folder: a `jirl run rm` run
    # Through the command line the value is refused before any model or data is loaded.
    assert main(["run", "rl", "--out", str(tmp_path / "run"), "--set", "reward=bogus"]) != 0
    assert "dpo_implicit:MODEL_OR_RUN_FOLDER" in capsys.readouterr().err


def test_gpu_preset_changes_only_keys_left_at_their_defaults():
    config = apply_preset(RLExperimentConfig(preset="gpu", iterations=7))
    assert config.iterations == 7 and config.rl.group_size == GPU_PRESET["rl.group_size"]
    assert config.max_new_tokens == GPU_PRESET["max_new_tokens"] and config.rl.advantage == "rloo"
    assert apply_preset(RLExperimentConfig()) == RLExperimentConfig()


# --------------------------------------------------------------------------- rewards


def test_gsm8k_verifier_reward_is_the_exact_match_of_the_decoded_reply_paid_at_its_last_token():
    tokenizer = byte_chat_tokenizer()
    horizon = 16
    prompts = prompt_set(tokenizer, QUESTIONS[:2], horizon)  # answers 4 and 7
    config = RLExperimentConfig()
    inputs = RewardInputs(tokenizer, None, rows_by_prompt(prompts), horizon, config)
    reward_fn = RecordingReward(REWARDS.get("verifier")("gsm8k", inputs), horizon)
    # (prompt row, reply text, EOS?): right, right with commas and "$", wrong, right but cut off before EOS.
    replies = [(0, "so 4.", True), (1, "it is $7.00", True), (1, "#### 4", True), (0, "x 4", False)]
    width = prompts.tokens.shape[1] + horizon
    tokens = np.full((len(replies), width), EOS, np.int32)
    prompt_lens, response_lens = [], []
    for b, (row, text, eos) in enumerate(replies):
        ids = list(prompts.tokens[row, : prompts.lens[row]]) + byte_ids(text) + ([EOS] if eos else [])
        tokens[b, : len(ids)] = ids
        prompt_lens.append(prompts.lens[row])
        response_lens.append(len(ids) - prompts.lens[row])
    rewards = np.asarray(reward_fn(tokens, np.array(prompt_lens), np.array(response_lens)))
    # Independent path: the verifier on the reply texts themselves (not decoded from tokens).
    expected = exact_match_rewards([text for _, text, _ in replies], [QUESTIONS[row][1] for row, _, _ in replies])
    np.testing.assert_array_equal(expected, [1, 1, 0, 1])
    dense = np.zeros((len(replies), horizon), np.float32)
    dense[np.arange(len(replies)), np.array(response_lens) - 1] = expected
    np.testing.assert_array_equal(rewards, dense)
    assert len(reward_fn.calls) == 1  # the batch is kept for the exact KL


def test_verifier_reward_needs_the_answer_field():
    tokenizer = byte_chat_tokenizer()
    prompts = prompt_set(tokenizer, QUESTIONS[:2], 4)
    config = RLExperimentConfig(answer_field="solution")
    with pytest.raises(Exception, match="'solution'.*answer_field"):
        REWARDS.get("verifier")("gsm8k", RewardInputs(tokenizer, None, rows_by_prompt(prompts), 4, config))


def test_reward_model_folder_scores_with_experiments_rm_load_reward_model(tmp_path, monkeypatch):
    """What rl reads of ``experiments.rm.load_reward_model(run_folder)``: ``score_fn(tokens,
    prompt_lens, response_lens) -> [B]`` (paid at the last token) and the ``tokenizer``, which
    must be the policy's."""
    seen = []

    def load_reward_model(folder):
        seen.append(folder)
        score_fn = lambda tokens, prompt_lens, response_lens: np.asarray(response_lens, np.float32) * 10  # noqa: E731
        return types.SimpleNamespace(score_fn=score_fn, tokenizer=byte_chat_tokenizer())

    monkeypatch.setitem(sys.modules, "experiments.rm", types.SimpleNamespace(load_reward_model=load_reward_model))
    kind, folder = parse_reward(str(tmp_path))
    inputs = RewardInputs(byte_chat_tokenizer(), None, {}, 3, RLExperimentConfig())
    reward_fn = RecordingReward(REWARDS.get(kind)(folder, inputs), horizon=3)
    rewards = np.asarray(reward_fn(np.zeros((2, 5), np.int32), np.array([2, 2]), np.array([1, 3])))
    assert seen == [str(tmp_path)]
    np.testing.assert_array_equal(rewards, [[10, 0, 0], [0, 0, 30]])
    other = RewardInputs(byte_chat_tokenizer(template=None), None, {}, 3, RLExperimentConfig())
    with pytest.raises(ConfigError, match="policy's model"):
        REWARDS.get(kind)(folder, other)


def test_dpo_implicit_reward_is_beta_times_the_log_ratio_to_the_base_model(tiny_model, tmp_path):
    base = load_pretrained(str(tiny_model))
    dpo = load_pretrained(str(write_tiny_model(tmp_path / "dpo", seed=1)))
    prompts = prompt_set(base.tokenizer, QUESTIONS[:2], 4)
    out = generate(base.graphdef, base.params, prompts.tokens, prompts.lens, jax.random.key(0), SamplingConfig(4, EOS))
    scores = {}
    for source in (str(tiny_model), str(tmp_path / "dpo")):
        inputs = RewardInputs(base.tokenizer, (base.graphdef, base.params), {}, 4, RLExperimentConfig(dpo_beta=0.5))
        scores[source] = REWARDS.get("dpo_implicit")(source, inputs)(out.tokens, out.prompt_lens, out.response_lens)
    np.testing.assert_allclose(scores[str(tiny_model)], 0.0, atol=1e-6)  # the reference itself
    # Independent path: log-softmax of each model's logits at the response tokens.
    logits = [np.asarray(logits_fn(m.graphdef, m.params)(out.tokens), np.float64) for m in (dpo, base)]
    for b in range(2):
        p, ratio = int(out.prompt_lens[b]), 0.0
        for t in range(int(out.response_lens[b])):
            token = int(out.tokens[b, p + t])
            dpo_lp, base_lp = (l[b, p + t - 1, token] - np.logaddexp.reduce(l[b, p + t - 1]) for l in logits)
            ratio += dpo_lp - base_lp
        assert scores[str(tmp_path / "dpo")][b] == pytest.approx(0.5 * ratio, rel=1e-4, abs=1e-6)


def save_lora_run(folder, model: str, seed=3):
    """A `jirl run sft`-like run folder (text_common.save_weights) with random adapters; returns
    the trained policy's (graphdef, params)."""
    from experiments.text_common import TextConfig, load_policy, save_weights

    config = TextConfig(model=model)
    policy = load_policy(config)
    model_ = nnx.merge(policy.graphdef, policy.params)
    for i, layer in enumerate(lora_layers(model_)):
        layer.lora_b[...] = 0.3 * jax.random.normal(jax.random.key(seed + i), layer.lora_b[...].shape)
    graphdef, params = nnx.split(model_)
    folder.mkdir()
    save_weights(RunDir(folder), config, policy, params)
    (folder / "config.json").write_text(json.dumps({"experiment": "dpo", "config": {"model": model, "beta": 0.25}}))
    return graphdef, params


def test_init_loads_a_text_runs_trained_weights_with_the_adapters_merged(tiny_model, tmp_path):
    graphdef, params = save_lora_run(tmp_path / "sft", str(tiny_model))
    base, start, run_config = load_run_weights(str(tmp_path / "sft"))
    tokens = jnp.asarray([[5, 6, 7, 8, 9]])
    np.testing.assert_allclose(logits_fn(base.graphdef, start)(tokens), logits_fn(graphdef, params)(tokens), atol=1e-5)
    assert not np.allclose(logits_fn(base.graphdef, base.params)(tokens), logits_fn(graphdef, params)(tokens), atol=1e-3)
    assert run_config["beta"] == 0.25 and parse_reward(f"dpo_implicit:{tmp_path / 'sft'}")[0] == "dpo_implicit"
    # As a DPO policy: its implicit reward is beta (the run's) times its log-ratio to its base model.
    inputs = RewardInputs(base.tokenizer, (base.graphdef, base.params), {}, 3, RLExperimentConfig())
    score = REWARDS.get("dpo_implicit")(str(tmp_path / "sft"), inputs)
    buffer = jnp.asarray([[5, 6, 7, 8, 9, 2], [5, 6, 7, 8, 9, 2]])
    ratio = (implicit_sequence_rewards(graphdef, params, base.params, buffer, jnp.asarray([3, 4]), jnp.asarray([3, 2]), 3, 1.0,
                                       reference_graphdef=base.graphdef))
    np.testing.assert_allclose(score(buffer, np.array([3, 4]), np.array([3, 2])), 0.25 * np.asarray(ratio), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- the exact KL


def test_exact_kl_equals_a_brute_force_loop_over_states_and_vocabulary():
    config = llama_tiny(17, d_model=16, num_heads=2, num_kv_heads=1, max_len=32)
    model = add_lora(Transformer(config, rngs=nnx.Rngs(0)), rank=2)
    graphdef, ref_params = nnx.split(model)
    ref_params = jax.tree_util.tree_map(jnp.copy, ref_params)  # the adapters at zero
    for i, layer in enumerate(lora_layers(model)):  # move the policy away from the reference
        layer.lora_b[...] = 0.5 * jax.random.normal(jax.random.key(i), layer.lora_b[...].shape)
    params = nnx.state(model)
    prompts, prompt_lens = np.array([[3, 4, 5], [6, 7, 0]], np.int32), np.array([3, 2], np.int32)
    horizon, temperature = 5, 0.7
    out = generate(graphdef, params, prompts, prompt_lens, jax.random.key(1), SamplingConfig(horizon, 0, temperature))
    kl = np.asarray(exact_sequence_kl(graphdef, params, ref_params, out.tokens, out.prompt_lens, out.response_lens, horizon, temperature))
    # Brute force: softmax of each model's logits at every response state, summed over the vocabulary.
    logits = [np.asarray(logits_fn(graphdef, p)(out.tokens), np.float64) / temperature for p in (params, ref_params)]
    for b in range(2):
        total, p = 0.0, int(out.prompt_lens[b])
        for t in range(int(out.response_lens[b])):
            pi, ref = (np.exp(l[b, p + t - 1] - np.logaddexp.reduce(l[b, p + t - 1])) for l in logits)
            total += sum(pi[v] * (np.log(pi[v]) - np.log(ref[v])) for v in range(config.vocab_size))
        assert kl[b] == pytest.approx(total, rel=1e-4, abs=1e-6)
    assert np.all(kl > 1e-3)
    same = exact_sequence_kl(graphdef, ref_params, ref_params, out.tokens, out.prompt_lens, out.response_lens, horizon, temperature)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


# --------------------------------------------------------------------------- learning


def first_token_reward(target_bytes: set[int]):
    """1 when the reply's first token is one of ``target_bytes`` (as byte tokens), else 0."""
    targets = np.array(sorted(3 + b for b in target_bytes))

    def score(tokens, prompt_lens, response_lens):
        tokens, prompt_lens = np.asarray(tokens), np.asarray(prompt_lens)
        return np.isin(tokens[np.arange(len(tokens)), prompt_lens], targets).astype(np.float32)

    return score


@pytest.mark.slow
def test_rloo_learns_a_reward_a_tiny_policy_can_learn(tiny_model, tmp_path):
    """Reward 1 when the first reply token is an ASCII letter or digit (about a quarter of the
    bytes): the mean reward rises well above its start, and the KL to the reference grows."""
    base = load_pretrained(str(tiny_model))
    prompts = prompt_set(base.tokenizer, QUESTIONS, horizon=2)
    score = first_token_reward(set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    rl = RLConfig(advantage="rloo", policy_loss="pg", group_size=8, prompts_per_iteration=4, kl_coef=0.0)
    config = RLExperimentConfig(rl=rl, iterations=8, learning_rate=3e-2, max_new_tokens=2, eval_prompts=8, show_samples=1)
    graphdef, ref_params = nnx.split(add_lora(nnx.merge(base.graphdef, base.params), 4, 8.0))
    results, _ = train(config, RunDir(tmp_path), graphdef, ref_params, base.tokenizer, prompts, prompts, score)
    curve = np.asarray(results["curves"]["reward"])  # measured: 0.25 0.41 0.97 0.97 1 ... (an earlier lm-head scale)
    assert curve[0] < 0.6 and curve[-3:].mean() > curve[0] + 0.3, curve
    assert results["after"]["reward"] > results["before"]["reward"] + 0.3
    assert results["before"]["kl"] == pytest.approx(0.0, abs=1e-5) and results["after"]["kl"] > 0.05
    exact = np.asarray(results["curves"]["exact_kl_to_reference"])
    assert exact[0] == pytest.approx(0.0, abs=1e-5) and np.all(exact >= -1e-6) and exact[-1] > 0.05
    assert any((tmp_path / "adapters").iterdir())


def test_an_rl_run_loads_back_on_top_of_the_run_it_started_from(tiny_model, tmp_path):
    """RL from an SFT run (``init=``): ``load_trained`` of the RL run rebuilds that run's policy,
    then the RL adapters on it -- the trained policy's logits, not the SFT run's or the base's."""
    save_lora_run(tmp_path / "sft", str(tiny_model))
    base, start, _ = load_run_weights(str(tmp_path / "sft"))
    prompts = prompt_set(base.tokenizer, QUESTIONS, horizon=2)
    score = first_token_reward(set(b"abcdefghijklmnopqrstuvwxyz"))
    rl = RLConfig(advantage="rloo", policy_loss="pg", group_size=4, prompts_per_iteration=2, kl_coef=0.0)
    config = RLExperimentConfig(init=str(tmp_path / "sft"), model=str(tiny_model), rl=rl, iterations=2, learning_rate=3e-2,
                                max_new_tokens=2, eval_prompts=2, accumulation_steps=1, exact_kl=False)
    graphdef, ref_params = nnx.split(add_lora(nnx.merge(base.graphdef, start), config.lora.rank, config.lora.alpha))
    run_dir = tmp_path / "rl"
    run_dir.mkdir()
    _, params = train(config, RunDir(run_dir), graphdef, ref_params, base.tokenizer, prompts, prompts, score)
    (run_dir / "config.json").write_text(json.dumps({"experiment": "rl", "config": {"model": str(tiny_model)}}))
    loaded_base, loaded, _ = load_run_weights(str(run_dir))
    tokens = jnp.asarray([[5, 6, 7, 8, 9, 10]])
    trained = logits_fn(graphdef, params)(tokens)
    np.testing.assert_allclose(logits_fn(loaded_base.graphdef, loaded)(tokens), trained, rtol=1e-5, atol=1e-4)  # merged: float rounding
    assert not np.allclose(logits_fn(base.graphdef, start)(tokens), trained, atol=1e-2)  # the RL adapters moved it


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_jirl_run_rl_end_to_end_on_a_tiny_model(tiny_model, tmp_path):
    data = tmp_path / "gsm8k_like.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS * 3))
    out = tmp_path / "run"
    args = ["run", "rl", "--out", str(out), "--set", f"model={tiny_model}", f"data={data}", "eval_fraction=0.4",
            "iterations=2", "max_new_tokens=6", "eval_prompts=3", "eval_every=1", "rl.prompts_per_iteration=2",
            "rl.group_size=2", "max_prompt_tokens=64", "dtype=bfloat16"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["train_prompts"] + results["data"]["eval_prompts"] == len(QUESTIONS) * 3
    assert [e["iteration"] for e in results["evaluations"]] == [0, 1, 2]
    assert results["before"]["kl"] == pytest.approx(0.0, abs=1e-5) and 0 <= results["after"]["greedy_reward"] <= 1
    assert len(results["before"]["samples"]) == 3 and results["before"]["samples"][0]["prompt"].startswith("user")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals, iterations = [line for line in lines if "eval/reward" in line], [line for line in lines if "reward" in line]
    assert [line["step"] for line in evals] == [0, 1, 2] and [line["step"] for line in iterations] == [1, 2]
    for key in ("reward", "kl_to_reference", "exact_kl_to_reference", "response_length", "truncated_fraction"):
        assert all(np.isfinite(line[key]) for line in iterations), key
    assert (out / "rl.png").exists() and any((out / "adapters").iterdir())
    assert any((out / "tensorboard").iterdir())  # the TensorBoard writer, on by default
    assert json.loads((out / "config.json").read_text())["config"]["dtype"] == "bfloat16"


def test_a_prompt_over_max_prompt_tokens_is_left_out_not_cut():
    """Records are built by prompt_tokenization: a prompt of exactly the limit is kept whole, one
    token longer is left out (if it were cut to the limit, its chat header would be lost silently)."""
    tokenizer = byte_chat_tokenizer(template=None)  # plain text: prompt ids = the user text's bytes
    config = RLExperimentConfig(max_prompt_tokens=6, chat_template="none")
    rows = [PromptRow([{"role": "user", "content": "a" * n}], f"f.jsonl:{n}", False, {"n": n}) for n in (5, 6, 7, 40)]
    examples = [tokenize_prompt_row(row, tokenizer, prompt_tokenization(config)).example for row in rows]
    kept = rl.prompt_set(examples, [row.extra for row in rows], config.max_prompt_tokens, 4, EOS)
    assert [row["n"] for row in kept.rows] == [5, 6]
    np.testing.assert_array_equal(kept.tokens[1, :6], byte_ids("a" * 6))


def test_dpo_implicit_refuses_a_run_without_beta(tiny_model, tmp_path):
    save_lora_run(tmp_path / "sft", str(tiny_model))
    config_file = tmp_path / "sft" / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["config"]["beta"]
    config_file.write_text(json.dumps(saved))
    base = load_pretrained(str(tiny_model))
    inputs = RewardInputs(base.tokenizer, (base.graphdef, base.params), {}, 3, RLExperimentConfig())
    with pytest.raises(ConfigError, match="no beta"):
        REWARDS.get("dpo_implicit")(str(tmp_path / "sft"), inputs)
