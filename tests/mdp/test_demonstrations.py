import jax
import numpy as np
import pytest
from flax import nnx

from jirl.mdp import demonstrations, oracle
from jirl.mdp.tasks import make_task
from jirl.models.scoring import logits_fn, response_log_probs, response_mask
from jirl.models.transformer import Transformer, gpt2_tiny, llama_tiny

TASK = make_task("bigram", num_chars=3, horizon=4, seed=1)


def test_demonstrations_from_the_optimum_carry_the_exact_expected_reward():
    spec = TASK.tree_spec()
    rewards = oracle.rewards_from_step_fn(spec, TASK.step_reward)
    beta = 0.5
    demos = demonstrations.from_optimum(TASK, jax.random.key(0), 8000, beta)
    exact = float(oracle.expected_reward(spec, oracle.solve(spec, oracle.uniform_log_probs(spec), rewards, beta).log_probs, rewards))
    returns = np.asarray(demos.returns)
    assert abs(returns.mean() - exact) < 4 * returns.std() / np.sqrt(len(returns))
    assert np.all(np.asarray(demos.response_lens) >= 1) and np.all(np.asarray(demos.response_lens) <= TASK.horizon)


def test_the_oracle_reads_a_jirl_model_exactly_as_the_scorer_does():
    """The oracle's per-token tree of a model equals the model's re-scored log-probs."""
    graphdef, params = nnx.split(Transformer(gpt2_tiny(TASK.vocab_size, max_len=16), rngs=nnx.Rngs(3)))
    spec = TASK.tree_spec()
    tree = oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, params))
    samples = oracle.sample(jax.random.key(1), spec, tree, 64)
    from_tree = oracle.step_values(spec, tree, samples)
    scored = response_log_probs(graphdef, params, samples.tokens, samples.prompt_lens, TASK.horizon)
    mask = response_mask(samples.response_lens, TASK.horizon)
    np.testing.assert_allclose(np.where(mask, scored, 0.0), np.where(mask, from_tree, 0.0), atol=1e-5)


def test_demonstrations_from_a_policy_and_a_vocabulary_mismatch():
    graphdef, params = nnx.split(Transformer(llama_tiny(TASK.vocab_size, max_len=16), rngs=nnx.Rngs(0)))
    demos = demonstrations.from_policy(TASK, jax.random.key(2), 32, graphdef, params)
    # Gold rewards recomputed by hand from the bigram table.
    table = TASK.score_table
    for row in range(32):
        p, n = int(demos.prompt_lens[row]), int(demos.response_lens[row])
        seq = np.asarray(demos.tokens[row, : p + n])
        expected = [table[seq[p + t - 1], seq[p + t]] for t in range(n)]
        np.testing.assert_allclose(np.asarray(demos.rewards[row, :n]), expected, rtol=1e-6)
    wrong = nnx.split(Transformer(llama_tiny(TASK.vocab_size + 2, max_len=16), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="vocab_size 6 differs"):
        demonstrations.from_policy(TASK, jax.random.key(2), 4, *wrong)
