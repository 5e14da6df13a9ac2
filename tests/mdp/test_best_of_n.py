import itertools

import jax
import numpy as np
import pytest

from jirl.mdp import oracle
from jirl.mdp.best_of_n import best_of_n_kl_bound, best_of_n_probabilities, best_of_n_stats, complete_sequences


def spec_and_rewards(vocab=5, horizon=5, seed=0):
    spec = oracle.TreeSpec.from_prompts(vocab, 0, horizon, [[1], [2]])
    keys = jax.random.split(jax.random.key(seed), horizon)
    rewards = [jax.random.normal(k, spec.tree_shape(t)) for t, k in enumerate(keys)]
    return spec, rewards


def test_best_of_n_probabilities_match_a_brute_force_over_all_n_tuples():
    probs = np.array([0.1, 0.3, 0.2, 0.4])
    returns = np.array([1.0, -1.0, 1.0, 2.0])  # a tie between responses 0 and 2
    n = 3
    brute = np.zeros(4)
    for draw in itertools.product(range(4), repeat=n):
        weight = np.prod(probs[list(draw)])
        best = max(returns[list(draw)])
        winners = [i for i in draw if returns[i] == best]
        for i in winners:  # ties: a uniformly random one of the best draws
            brute[i] += weight / len(winners)
    np.testing.assert_allclose(best_of_n_probabilities(probs, returns, n), brute, rtol=1e-12)


def test_exact_best_of_n_kl_approaches_log_n_minus_and_reward_rises():
    spec, rewards = spec_and_rewards()
    base = oracle.uniform_log_probs(spec)
    log_p, returns = complete_sequences(spec, base, rewards)
    np.testing.assert_allclose(np.exp(log_p).sum(axis=1), 1.0, rtol=1e-5)
    assert np.exp(log_p).max() < 0.25  # EOS-first responses are the heaviest
    previous = -np.inf
    for n in (1, 2, 4, 8, 16):
        stats = best_of_n_stats(spec, base, rewards, n)
        bound = best_of_n_kl_bound(n)
        assert stats["kl_to_base"] <= bound + 1e-6
        assert stats["kl_to_base"] == pytest.approx(bound, abs=0.06, rel=0.1)
        assert stats["expected_reward"] > previous
        previous = stats["expected_reward"]
    assert best_of_n_stats(spec, base, rewards, 1)["expected_reward"] == pytest.approx(
        float(oracle.expected_reward(spec, base, rewards)), rel=1e-5
    )


def test_with_many_light_responses_the_kl_is_close_to_the_formula():
    # Uniform over 4 letters for 5 steps with EOS made rare: ~1,365 responses of similar weight.
    spec, rewards = spec_and_rewards(vocab=5, horizon=5, seed=3)
    base = [lp.at[..., 0].set(-12.0) for lp in oracle.uniform_log_probs(spec)]
    base = [lp - jax.nn.logsumexp(lp, axis=-1, keepdims=True) for lp in base]
    for n in (2, 8, 32):
        kl = best_of_n_stats(spec, base, rewards, n)["kl_to_base"]
        assert kl == pytest.approx(best_of_n_kl_bound(n), rel=0.02)
