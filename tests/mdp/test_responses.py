"""``sample_responses``, ``sample_groups`` and ``gold_returns``: one row per requested prompt, in order, across
chunks, with the bigram table's return of each response."""

import jax
import numpy as np
import pytest
from flax import nnx

from jirl.mdp.responses import gold_returns, sample_groups, sample_responses
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.mdp.tasks import make_task
from jirl.models.transformer import ModelSize, Transformer


def table_return(task, row, prompt_len, response_len) -> float:
    """``sum_t score[y_{t-1}, y_t]`` over the response, read from the table by hand."""
    sequence = [int(x) for x in row[: prompt_len + response_len]]
    return float(sum(task.score_table[a, b] for a, b in zip(sequence[prompt_len - 1 : -1], sequence[prompt_len:])))


@pytest.fixture(scope="module")
def policy():
    task = make_task("bigram", num_chars=3, horizon=4, seed=2)
    config = ModelSize(family="gpt2", d_model=16).build(task.vocab_size, task.prompt_width + task.horizon)
    graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    return task, graphdef, params


def test_sample_responses_answers_each_prompt_in_order_across_chunks(policy):
    task, graphdef, params = policy
    prompt_ids = np.array([2, 0, 0, 1, 2, 1, 0, 2, 2, 1])  # 10 rows in chunks of 4: the last one filled up
    pool = sample_responses(task, graphdef, params, jax.random.key(0), prompt_ids, chunk=4)
    tokens, lens, _ = task.prompts
    assert {k: len(v) for k, v in pool.items()} == dict.fromkeys(("tokens", "prompt_len", "response_len", "gold", "length", "prompt_id"), 10)
    assert np.array_equal(pool["prompt_id"], prompt_ids)
    assert np.array_equal(pool["prompt_len"], lens[prompt_ids])
    for row, pid, plen in zip(pool["tokens"], prompt_ids, pool["prompt_len"]):
        assert np.array_equal(row[:plen], tokens[pid, :plen])
    assert np.array_equal(pool["length"], pool["prompt_len"] + pool["response_len"])
    assert np.all((pool["response_len"] >= 1) & (pool["response_len"] <= task.horizon))
    expected = [table_return(task, *row) for row in zip(pool["tokens"], pool["prompt_len"], pool["response_len"])]
    np.testing.assert_allclose(pool["gold"], expected, rtol=1e-5, atol=1e-6)
    # The same key gives the same pool; chunks draw different noise (not one chunk repeated).
    again = sample_responses(task, graphdef, params, jax.random.key(0), prompt_ids, chunk=4)
    assert np.array_equal(again["tokens"], pool["tokens"])
    repeated = sample_responses(task, graphdef, params, jax.random.key(0), np.zeros(64, int), chunk=8)
    chunks = repeated["tokens"].reshape(8, 8, -1)
    assert any(not np.array_equal(chunks[0], c) for c in chunks[1:])


def test_gold_returns_sum_the_table_scores_of_each_response():
    task = make_task("bigram", num_chars=3, horizon=3, seed=5)
    tokens = np.array([[1, 2, 3, 0], [2, 0, 0, 0], [3, 3, 1, 2]], np.int32)
    prompt_lens, response_lens = np.array([1, 1, 1]), np.array([3, 1, 3])
    expected = [table_return(task, row, 1, n) for row, n in zip(tokens, response_lens)]
    np.testing.assert_allclose(np.asarray(gold_returns(task, tokens, prompt_lens, response_lens)), expected, rtol=1e-6)


def test_sample_groups_answers_each_drawn_prompt_group_size_times(policy):
    """Rows come in consecutive groups that share their prompt; the prompts are the task's draw
    from split(key)[0] and the responses equal a direct ``generate`` from split(key)[1]."""
    task, graphdef, params = policy
    key = jax.random.key(4)
    group = sample_groups(task, graphdef, params, key, num_prompts=3, group_size=4)
    prompt_key, sample_key = jax.random.split(key)
    prompts, lens = task.sample_prompts(prompt_key, 3)
    np.testing.assert_array_equal(group.prompts, prompts)
    np.testing.assert_array_equal(group.prompt_lens, lens)
    rows = np.asarray(group.responses.tokens)
    for i in range(12):
        width = int(lens[i // 4])
        np.testing.assert_array_equal(rows[i, :width], np.asarray(prompts)[i // 4, :width])
    direct = generate(
        graphdef, params, np.repeat(np.asarray(prompts), 4, axis=0), np.repeat(np.asarray(lens), 4), sample_key,
        SamplingConfig(max_new_tokens=task.horizon, eos_id=task.eos_id),
    )
    np.testing.assert_array_equal(rows, np.asarray(direct.tokens))
    assert len(set(map(tuple, rows[:4].tolist()))) > 1  # a group's responses are drawn independently
