"""The offline real model, SmolLM2-135M-Instruct from its Q4_1 GGUF, against the PyTorch
reference (transformers dequantising the same file; ``scripts/make_model_fixtures.py``):
last-position logits, greedy chat replies, tokenizer ids, and ``jirl run chat``."""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jirl.cli import main
from jirl.config import JirlError
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.models.pretrained import load_pretrained
from jirl.models.tokenizers import check_vocab_matches

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "smollm2_reference.json").read_text())["records"]
pytestmark = pytest.mark.slow


@functools.cache
def smollm2():
    return load_pretrained("smollm2-135m-instruct", max_len=512)


def test_config_and_tokenizer_agree():
    model = smollm2()
    c = model.config
    assert (c.num_layers, c.d_model, c.num_heads, c.kv_heads, c.vocab_size, c.rope_base) == (30, 576, 9, 3, 49152, 1e5)
    check_vocab_matches(model.tokenizer, c.vocab_size)
    with pytest.raises(JirlError, match="has 49152 tokens but the model's vocab_size is 50000"):
        check_vocab_matches(model.tokenizer, 50000)


def test_chat_prompts_tokenize_like_the_reference():
    tokenizer = smollm2().tokenizer
    for record in REFERENCE:
        messages = [{"role": "user", "content": record["question"]}]
        assert tokenizer.apply_chat_template(messages) == record["chat_text"]
        assert tokenizer.encode_chat(messages) == record["prompt_ids"]


def test_last_position_logits_match_the_reference():
    model = smollm2()
    logits_of = jax.jit(lambda params, ids: nnx.merge(model.graphdef, params)(ids).logits[0, -1])
    for record in REFERENCE:
        logits = np.asarray(logits_of(model.params, jnp.asarray([record["prompt_ids"]])), np.float64)
        top = np.asarray(record["top_logits"])
        assert np.max(np.abs(logits[record["top_ids"]] - top)) / np.max(np.abs(top)) <= 1e-4
        assert float(jax.nn.logsumexp(logits)) == pytest.approx(record["logsumexp"], rel=1e-5)


def test_greedy_replies_are_the_reference_tokens():
    model = smollm2()
    records = REFERENCE
    width = max(len(r["prompt_ids"]) for r in records)
    prompts = np.full((len(records), width), model.tokenizer.eos_id, np.int32)
    for i, r in enumerate(records):
        prompts[i, : len(r["prompt_ids"])] = r["prompt_ids"]
    lens = np.array([len(r["prompt_ids"]) for r in records])
    new = max(len(r["greedy_ids"]) for r in records)
    out = generate(model.graphdef, model.params, prompts, lens, jax.random.key(0),
                   SamplingConfig(max_new_tokens=new, eos_id=model.tokenizer.eos_id, greedy=True))
    for i, r in enumerate(records):
        assert [int(t) for t in out.response_tokens[i, : len(r["greedy_ids"])]] == r["greedy_ids"], r["question"]
    assert "Paris" in model.tokenizer.decode(records[0]["greedy_ids"])


def test_jirl_run_chat_answers(tmp_path, capsys):
    out = tmp_path / "chat"
    assert main(["run", "chat", "--out", str(out), "--set", "max_new_tokens=16"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert "Paris" in result["reply"] and "Paris" in capsys.readouterr().out
    assert main(["run", "chat", "--out", str(tmp_path / "x"), "--set", "model=no-such-model"]) == 2
    assert "model must be a known model (smollm2-135m-instruct)" in capsys.readouterr().err
