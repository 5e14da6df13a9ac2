import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jirl.mdp import env
from jirl.mdp.tasks import TASKS, make_task
from jirl.mdp.tokenizer import CharTokenizer
from jirl.registry import UnknownNameError

BIGRAM = make_task("bigram", num_chars=4, horizon=6, seed=3)
SORT = make_task("sort", num_digits=3, num_symbols=4)


def python_rollout(task, prompt, actions):
    """Reference: a plain Python loop over the MDP's rules with the bigram table."""
    table = task.score_table
    seq, rewards = list(prompt), []
    for a in actions:
        rewards.append(float(table[seq[-1], a]))
        seq.append(a)
        if a == task.eos_id or len(rewards) == task.horizon:
            break
    return seq, rewards


@settings(max_examples=40, deadline=None)
@given(
    prompt_char=st.integers(1, 4),
    actions=st.lists(st.integers(0, 4), min_size=6, max_size=6),
)
def test_step_matches_a_python_reference_on_random_action_sequences(prompt_char, actions):
    state = env.reset(jnp.array([[prompt_char]]), jnp.array([1]), BIGRAM.horizon, BIGRAM.eos_id)
    final, rewards, dones = jax.jit(functools.partial(env.rollout, BIGRAM))(state, jnp.array([actions]))
    seq, expected = python_rollout(BIGRAM, [prompt_char], actions)
    n = len(expected)
    np.testing.assert_allclose(rewards[0, :n], expected, rtol=1e-6)
    assert np.all(rewards[0, n:] == 0)  # no reward after termination
    assert int(final.lengths[0]) == len(seq) and bool(final.done[0])
    np.testing.assert_array_equal(final.tokens[0, : len(seq)], seq)
    np.testing.assert_array_equal(dones[0], np.arange(6) >= n - 1)


@settings(max_examples=30, deadline=None)
@given(
    digits=st.lists(st.integers(1, 4), min_size=3, max_size=3),
    actions=st.lists(st.integers(0, 4), min_size=4, max_size=4),
)
def test_sparse_reward_lands_on_the_last_valid_action(digits, actions):
    state = env.reset(jnp.array([digits]), jnp.array([3]), SORT.horizon, SORT.eos_id)
    final, rewards, _ = env.rollout(SORT, state, jnp.array([actions]))
    n = int(final.response_steps[0])
    response = actions[:n]
    correct = response == sorted(digits) + [SORT.eos_id]
    assert np.all(rewards[0, : n - 1] == 0) and np.all(rewards[0, n:] == 0)
    assert float(rewards[0, n - 1]) == float(correct)
    # The dense whole-sequence form hands out the same rewards.
    dense = env.sequence_rewards(SORT, final.tokens, final.prompt_lens, final.response_steps)
    np.testing.assert_array_equal(dense, rewards)


def test_the_correct_sort_answer_is_rewarded_and_near_misses_are_not():
    prompt, lens = SORT.tokenizer.encode_batch(["302"])
    answer = SORT.tokenizer.encode("023") + [SORT.eos_id]
    state = env.reset(prompt, lens, SORT.horizon, SORT.eos_id)
    _, rewards, _ = env.rollout(SORT, state, jnp.array([answer]))
    assert rewards.tolist() == [[0.0, 0.0, 0.0, 1.0]]
    for wrong in (SORT.tokenizer.encode("032") + [0], SORT.tokenizer.encode("0230"), SORT.tokenizer.encode("02") + [0, 0]):
        _, rewards, _ = env.rollout(SORT, state, jnp.array([wrong]))
        assert float(rewards.sum()) == 0.0, wrong


def test_eos_and_the_length_limit_terminate_and_done_rows_are_frozen():
    state = env.reset(jnp.array([[1], [2]]), jnp.array([1, 1]), BIGRAM.horizon, BIGRAM.eos_id)
    step = jax.jit(functools.partial(env.step, BIGRAM))
    state, _, done = step(state, jnp.array([BIGRAM.eos_id, 3]))
    assert done.tolist() == [True, False]
    frozen = state.tokens[0]
    for _ in range(BIGRAM.horizon - 1):
        state, reward, done = step(state, jnp.array([2, 3]))
        assert float(reward[0]) == 0.0
    np.testing.assert_array_equal(state.tokens[0], frozen)
    assert done.tolist() == [True, True]  # row 1 hit the horizon without EOS
    assert state.response_steps.tolist() == [1, BIGRAM.horizon]


def test_reset_and_step_vmap_over_independent_environments():
    seeds, batch = 3, 4
    prompts = jax.random.randint(jax.random.key(0), (seeds, batch, 1), 1, 5)
    actions = jax.random.randint(jax.random.key(1), (seeds, batch, BIGRAM.horizon), 0, 5)

    def run(prompt, acts):
        state = env.reset(prompt, jnp.ones(batch, jnp.int32), BIGRAM.horizon, BIGRAM.eos_id)
        return env.rollout(BIGRAM, state, acts)[1]

    batched = jax.jit(jax.vmap(run))(prompts, actions)
    for s in range(seeds):
        np.testing.assert_allclose(batched[s], run(prompts[s], actions[s]), rtol=1e-6)


def test_gold_reward_model_task_is_deterministic_and_pays_at_the_end():
    a = make_task("gold_rm", seed=1)
    b = make_task("gold_rm", seed=1)
    c = make_task("gold_rm", seed=2)
    tokens = jax.random.randint(jax.random.key(0), (32, a.prompt_width + a.horizon), 1, a.vocab_size)
    lens = jnp.full((32,), a.prompt_width + a.horizon)
    np.testing.assert_array_equal(a.gold_score(tokens, lens), b.gold_score(tokens, lens))
    assert not np.allclose(a.gold_score(tokens, lens), c.gold_score(tokens, lens))
    scores = a.gold_score(tokens, lens)
    assert 0.3 < float(jnp.std(scores)) < 3.0  # standardised, not collapsed to a constant
    rewards = env.sequence_rewards(a, tokens, jnp.ones(32, jnp.int32), jnp.full((32,), 3))
    assert np.all(rewards[:, [0, 1, 3, 4, 5]] == 0)
    np.testing.assert_allclose(rewards[:, 2], a.gold_score(tokens, jnp.full((32,), 4)), rtol=1e-5, atol=1e-5)


def test_task_registry_and_parameter_errors():
    assert {"bigram", "sort", "gold_rm"} <= set(TASKS.names())
    with pytest.raises(UnknownNameError, match="unknown task 'bigarm'. Did you mean 'bigram'"):
        make_task("bigarm")
    with pytest.raises(ValueError, match="no parameter"):
        make_task("sort", horizon=3)


def test_char_tokenizer_round_trip_and_errors():
    tok = CharTokenizer("abc")
    assert tok.vocab_size == 4 and tok.encode("cab") == [3, 1, 2]
    assert tok.decode([3, 1, 0, 2]) == "ca"
    tokens, lens = tok.encode_batch(["ab", "c"])
    assert tokens.tolist() == [[1, 2], [3, 0]] and lens.tolist() == [2, 1]
    with pytest.raises(ValueError, match=r"\['z'\] are not in the tokenizer alphabet"):
        tok.encode("az")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([7])


def test_byte_tokenizer_round_trips_any_text():
    from jirl.mdp.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    text = "Human: héllo ✓\n\nAssistant:"
    ids = tok.encode(text)
    assert min(ids) >= 1 and max(ids) < tok.vocab_size and len(ids) == len(text.encode())
    assert tok.decode(ids + [0, 5]) == text
