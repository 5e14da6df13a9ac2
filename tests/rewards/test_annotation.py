import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jirl.registry import UnknownNameError
from jirl.rewards import annotation as ann


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------------------------
# Bradley-Terry annotator


def test_preference_probability_values_and_infinite_beta():
    r_a = jnp.array([1.0, 0.0, 2.0, 3.0])
    r_b = jnp.array([0.0, 1.0, 2.0, 1.0])
    np.testing.assert_allclose(ann.preference_probability(r_a, r_b, 2.0), sigmoid(2.0 * np.array([1, -1, 0, 2])), rtol=1e-6)
    np.testing.assert_array_equal(ann.preference_probability(r_a, r_b, jnp.inf), [1.0, 0.0, 0.5, 1.0])


def test_annotate_preference_rate_matches_bradley_terry():
    diffs = np.array([-2.0, -0.5, 0.0, 0.3, 1.0, 3.0])
    draws = 20_000
    r_a = jnp.repeat(jnp.asarray(diffs), draws)
    r_b = jnp.zeros_like(r_a)
    for beta, flip in [(1.5, 0.0), (0.7, 0.2)]:
        labels = np.asarray(ann.annotate(jax.random.key(0), r_a, r_b, beta, flip_rate=flip)).reshape(len(diffs), draws)
        assert set(np.unique(labels)) <= {0.0, 1.0}
        p = sigmoid(beta * diffs)
        expected = (1 - flip) * p + flip * (1 - p)
        np.testing.assert_allclose(ann.label_probability(diffs, 0.0, beta, flip), expected, rtol=1e-6)
        stderr = np.sqrt(expected * (1 - expected) / draws)
        assert np.all(np.abs(labels.mean(axis=1) - expected) < 3 * stderr), (labels.mean(axis=1), expected)


def test_flip_rate_flips_deterministic_labels():
    n = 40_000
    key_r, key_l = jax.random.split(jax.random.key(1))
    r_a = jax.random.normal(key_r, (n,))
    r_b = -r_a  # never tied
    truth = np.asarray(r_a > r_b, dtype=np.float32)
    clean = np.asarray(ann.annotate(key_l, r_a, r_b, 1.0, deterministic=True))
    np.testing.assert_array_equal(clean, truth)
    np.testing.assert_array_equal(ann.annotate(key_l, r_a, r_b, jnp.inf), truth)
    noisy = np.asarray(ann.annotate(key_l, r_a, r_b, jnp.inf, flip_rate=0.3))
    flipped = np.mean(noisy != truth)
    assert abs(flipped - 0.3) < 3 * np.sqrt(0.3 * 0.7 / n), flipped


def test_deterministic_annotator_breaks_ties_at_random():
    n = 10_000
    r = jnp.ones(n)
    labels = np.asarray(ann.annotate(jax.random.key(2), r, r, 0.0, deterministic=True))
    assert abs(labels.mean() - 0.5) < 3 * np.sqrt(0.25 / n)


def test_to_chosen_rejected():
    idx_a = jnp.array([0, 1, 2, 3])
    idx_b = jnp.array([4, 5, 6, 7])
    chosen, rejected = ann.to_chosen_rejected(idx_a, idx_b, jnp.array([1.0, 0.0, 0.0, 1.0]))
    np.testing.assert_array_equal(chosen, [0, 5, 6, 3])
    np.testing.assert_array_equal(rejected, [4, 1, 2, 7])


# ----------------------------------------------------------------------------------------------
# Pairing strategies

# Prompt ids deliberately unsorted, non-contiguous, with a singleton prompt (9).
PROMPT_IDS = jnp.array([3, 7, 3, 9, 7, 3, 12, 12, 7, 3])


def test_registry_names_and_unknown_name():
    assert ann.PAIRINGS.names() == ["cross_prompt", "random", "within_prompt"]
    with pytest.raises(UnknownNameError, match="within_prompt"):
        ann.PAIRINGS.get("within-prompt")


@pytest.mark.parametrize("name", ["random", "within_prompt", "cross_prompt"])
def test_pairings_respect_their_constraints(name):
    idx_a, idx_b = ann.PAIRINGS.get(name)(jax.random.key(3), 5_000, PROMPT_IDS)
    idx_a, idx_b = np.asarray(idx_a), np.asarray(idx_b)
    n = PROMPT_IDS.shape[0]
    assert idx_a.shape == idx_b.shape == (5_000,)
    assert np.all((0 <= idx_a) & (idx_a < n) & (0 <= idx_b) & (idx_b < n))
    assert np.all(idx_a != idx_b)
    same = np.asarray(PROMPT_IDS)[idx_a] == np.asarray(PROMPT_IDS)[idx_b]
    if name == "within_prompt":
        assert same.all()
    elif name == "cross_prompt":
        assert not same.any()
    else:
        assert same.any() and not same.all()


@pytest.mark.parametrize("name", ["random", "within_prompt", "cross_prompt"])
def test_pairings_are_uniform_over_valid_ordered_pairs(name):
    ids = np.asarray(PROMPT_IDS)
    n = ids.size
    valid = ~np.eye(n, dtype=bool)
    if name == "within_prompt":
        valid &= ids[:, None] == ids[None, :]
    elif name == "cross_prompt":
        valid &= ids[:, None] != ids[None, :]
    draws = 200_000
    idx_a, idx_b = jax.jit(ann.PAIRINGS.get(name), static_argnums=1)(jax.random.key(4), draws, PROMPT_IDS)
    counts = np.zeros((n, n))
    np.add.at(counts, (np.asarray(idx_a), np.asarray(idx_b)), 1)
    assert counts[~valid].sum() == 0
    p = 1.0 / valid.sum()
    stderr = np.sqrt(draws * p * (1 - p))
    assert np.all(np.abs(counts[valid] - draws * p) < 5 * stderr)


def test_pairing_errors_name_the_problem():
    with pytest.raises(ValueError, match="no prompt has 2 or more responses"):
        ann.pair_within_prompt(jax.random.key(0), 3, jnp.arange(5))
    with pytest.raises(ValueError, match="same prompt id"):
        ann.pair_cross_prompt(jax.random.key(0), 3, jnp.zeros(5, jnp.int32))
    with pytest.raises(ValueError, match="at least 2 responses"):
        ann.pair_random(jax.random.key(0), 3, jnp.zeros(1, jnp.int32))


def test_simulate_preferences():
    rewards = jnp.arange(10, dtype=jnp.float32)
    chosen, rejected, prob = ann.simulate_preferences(jax.random.key(5), rewards, PROMPT_IDS, 500, jnp.inf, 0.0)
    ids = np.asarray(PROMPT_IDS)
    assert np.all(ids[np.asarray(chosen)] == ids[np.asarray(rejected)])
    assert np.all(np.asarray(rewards)[np.asarray(chosen)] > np.asarray(rewards)[np.asarray(rejected)])
    np.testing.assert_array_equal(prob, 1.0)

    chosen, rejected, prob = ann.simulate_preferences(
        jax.random.key(6), rewards, PROMPT_IDS, 500, 0.5, 0.1, pairing="cross_prompt"
    )
    assert not np.any(ids[np.asarray(chosen)] == ids[np.asarray(rejected)])
    expected = sigmoid(0.5 * (np.asarray(rewards)[np.asarray(chosen)] - np.asarray(rewards)[np.asarray(rejected)]))
    np.testing.assert_allclose(prob, expected, rtol=1e-5)
    assert np.any(prob < 0.5)  # noisy annotators sometimes prefer the worse response


# ----------------------------------------------------------------------------------------------
# Active selection


def test_uncertainty_scores_hand_example():
    phi = jnp.array([[0.0], [1.0], [3.0], [0.5]])
    w = jnp.array([2.0])
    pairs = jnp.array([[1, 0], [3, 0], [2, 0], [0, 3], [1, 1]])
    # w . dphi = 2, 1, 6, -1, 0  ->  p(1-p) is symmetric in sign, largest at 0.
    p = sigmoid(np.array([2.0, 1.0, 6.0, -1.0, 0.0]))
    scores = ann.uncertainty_scores(phi, w, pairs)
    np.testing.assert_allclose(scores, p * (1 - p), rtol=1e-6)
    assert scores[4] == pytest.approx(0.25)
    np.testing.assert_array_equal(ann.uncertainty_select(phi, w, pairs, 3), [4, 1, 3])


def brute_force_greedy_d_optimal(phi, w, candidates, k, prior):
    """Greedy that recomputes log det(A + g dphi dphi^T) from scratch for every candidate."""
    phi, w = np.asarray(phi, np.float64), np.asarray(w, np.float64)
    dphi = phi[candidates[:, 0]] - phi[candidates[:, 1]]
    p = sigmoid(dphi @ w)
    g = p * (1 - p)
    a = prior * np.eye(phi.shape[1])
    chosen, margins = [], []
    for _ in range(k):
        logdets = np.full(len(candidates), -np.inf)
        for i in range(len(candidates)):
            if i not in chosen:
                logdets[i] = np.linalg.slogdet(a + g[i] * np.outer(dphi[i], dphi[i]))[1]
        best = int(np.argmax(logdets))
        margins.append(logdets[best] - np.sort(logdets)[-2])
        chosen.append(best)
        a = a + g[best] * np.outer(dphi[best], dphi[best])
    return chosen, min(margins)


@pytest.mark.parametrize("seed", range(6))
def test_d_optimal_select_matches_brute_force_greedy(seed):
    rng = np.random.default_rng(seed)
    n, d, m, k = 12, 4, 15, 7
    phi = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    # Distinct unordered pairs, so that no two candidates carry the same information.
    all_pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n)])
    candidates = all_pairs[rng.choice(len(all_pairs), size=m, replace=False)]
    candidates = np.where(rng.random((m, 1)) < 0.5, candidates, candidates[:, ::-1])
    expected, margin = brute_force_greedy_d_optimal(phi, w, candidates, k, prior=1e-2)
    assert margin > 1e-4  # the problem has no near-ties that float32 could flip
    got = ann.d_optimal_select(jnp.asarray(phi, jnp.float32), jnp.asarray(w, jnp.float32), candidates, k, prior=1e-2)
    assert got.dtype == jnp.int32
    assert list(np.asarray(got)) == expected
    assert len(set(np.asarray(got).tolist())) == k


def test_d_optimal_select_all_candidates_distinct_and_jittable():
    rng = np.random.default_rng(0)
    phi = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    candidates = jnp.array([[0, 1], [2, 3], [4, 5], [0, 5], [1, 4]])
    select = jax.jit(ann.d_optimal_select, static_argnums=3)
    got = np.asarray(select(phi, jnp.zeros(3), candidates, 5))
    assert sorted(got.tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="k=6 distinct pairs from 5 candidates"):
        ann.d_optimal_select(phi, jnp.zeros(3), candidates, 6)
    with pytest.raises(ValueError, match="prior > 0"):
        ann.d_optimal_select(phi, jnp.zeros(3), candidates, 2, prior=0.0)


def test_d_optimal_skips_duplicate_that_uncertainty_sampling_repeats():
    # Candidates 0 and 1 are the same pair along e1 (the most uncertain one); candidate 2
    # points along e2 and is a bit less uncertain. Uncertainty sampling takes the duplicate
    # twice; D-optimal design sees that e1 is already known and explores e2 instead.
    phi = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    w = jnp.array([0.0, 1.0])
    candidates = jnp.array([[1, 0], [1, 0], [2, 0]])
    assert sorted(ann.uncertainty_select(phi, w, candidates, 2).tolist()) == [0, 1]
    np.testing.assert_array_equal(ann.d_optimal_select(phi, w, candidates, 2), [0, 2])
    # With nothing else informative left, the duplicate is taken again (its copy still adds
    # information), rather than an uninformative zero-difference pair.
    candidates = jnp.array([[1, 0], [1, 0], [0, 0]])
    np.testing.assert_array_equal(ann.d_optimal_select(phi, w, candidates, 2), [0, 1])


def test_pair_by_rank_same_prompt_uses_the_named_gold_ranks():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(30, 10))
    ranks = np.argsort(np.argsort(gold, axis=1), axis=1)  # [prompt, response] -> gold rank
    for candidates, allowed in (("similar", {4, 5}), ("diverse", {0, 9}), ("random", set(range(10)))):
        a, b = ann.pair_by_rank(jax.random.key(1), gold, 20, candidates)
        assert np.array_equal(a // 10, np.arange(20)) and np.array_equal(b // 10, np.arange(20))  # same prompt
        pair_ranks = {(ranks.flat[i], ranks.flat[j]) for i, j in zip(a, b)}
        assert all(r in allowed and s in allowed and r != s for r, s in pair_ranks)
        if candidates != "random":
            assert {frozenset(p) for p in pair_ranks} == {frozenset(allowed)}
    # Random candidates cover many rank pairs (uniform over the 90 ordered pairs).
    a, b = ann.pair_by_rank(jax.random.key(2), np.tile(np.arange(10.0), (3000, 1)), 3000, "random")
    assert len({(x % 10, y % 10) for x, y in zip(a, b)}) == 90


def test_pair_by_rank_cross_prompt_pairs_other_prompts_uniformly():
    gold = np.tile(np.arange(10.0), (50, 1))
    a, b = ann.pair_by_rank(jax.random.key(3), gold, 40, "similar", cross_prompt=True)
    assert np.array_equal(a // 10, np.arange(40))
    assert np.all(b // 10 != a // 10) and np.all(b // 10 < 40)  # another of the first 40 prompts
    assert set(a % 10) | set(b % 10) <= {4, 5}
    # With 3 prompts, each prompt's partner is one of the other two, half the time each.
    offsets = []
    for seed in range(400):
        a, b = ann.pair_by_rank(jax.random.key(seed), gold[:3], 3, cross_prompt=True)
        offsets += list((b // 10 - a // 10) % 3)
    counts = np.bincount(offsets, minlength=3)
    assert counts[0] == 0 and abs(counts[1] - counts[2]) < 0.1 * len(offsets)


def test_pair_by_rank_refuses_bad_grids():
    with pytest.raises(ValueError, match="grid"):
        ann.pair_by_rank(jax.random.key(0), np.zeros(10), 5)
    with pytest.raises(ValueError, match="num_prompts"):
        ann.pair_by_rank(jax.random.key(0), np.zeros((5, 10)), 6)
    with pytest.raises(ValueError, match="unknown rank candidates"):
        ann.pair_by_rank(jax.random.key(0), np.zeros((5, 10)), 5, "closest")


def test_annotator_quality_error_rate_matches_its_expectation():
    # Sun et al.'s annotator P(a > b) = sigma(q (r_a - r_b) / s): the realised error rate of many
    # pairs is the mean of sigma(-q |dr| / s).
    rng = np.random.default_rng(5)
    r_a, r_b = rng.normal(size=20000), rng.normal(size=20000)
    scale = 1.0
    for quality in (10.0, 1.0, 0.2):
        labels = np.asarray(ann.annotate(jax.random.key(6), r_a, r_b, quality / scale))
        chosen, rejected = np.where(labels > 0.5, r_a, r_b), np.where(labels > 0.5, r_b, r_a)
        expected = np.mean(1.0 / (1.0 + np.exp(quality * np.abs(r_a - r_b) / scale)))
        assert ann.label_error_rate(chosen, rejected) == pytest.approx(expected, abs=0.01)
    assert ann.label_error_rate([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == pytest.approx(0.5)
