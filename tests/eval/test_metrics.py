import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jirl.eval import metrics


def test_pairwise_accuracy_counts_ties_as_half():
    r_chosen = jnp.array([3.0, 1.0, 2.0, 0.0])
    r_rejected = jnp.array([1.0, 1.0, 5.0, -1.0])
    assert float(metrics.pairwise_accuracy(r_chosen, r_rejected)) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert float(metrics.pairwise_accuracy(jnp.zeros(7), jnp.zeros(7))) == 0.5


def test_expected_calibration_error_hand_example():
    probs = jnp.array([0.05, 0.15, 0.12, 0.95, 0.85, 0.5])
    labels = jnp.array([0, 1, 0, 1, 0, 1])
    # bin 0: {0.05 -> 0}: |0 - 0.05| * 1/6;   bin 1: {0.15 -> 1, 0.12 -> 0}: |0.5 - 0.135| * 2/6
    # bin 5: {0.5 -> 1}: 0.5 * 1/6;   bin 8: {0.85 -> 0}: 0.85 * 1/6;   bin 9: {0.95 -> 1}: 0.05 * 1/6
    expected = (0.05 + 2 * 0.365 + 0.5 + 0.85 + 0.05) / 6
    assert float(metrics.expected_calibration_error(probs, labels)) == pytest.approx(expected, rel=1e-5)
    # Two bins [0, .5) and [.5, 1]: {.05,.15,.12 -> 1/3 vs .10667}, {.95,.85,.5 -> 2/3 vs .76667}
    expected_2 = 0.5 * abs(1 / 3 - 0.32 / 3) + 0.5 * abs(2 / 3 - 2.3 / 3)
    assert float(metrics.expected_calibration_error(probs, labels, num_bins=2)) == pytest.approx(expected_2, rel=1e-5)


def test_expected_calibration_error_edges():
    # p = 1 falls in the last bin; perfectly calibrated bins give 0.
    probs = jnp.array([1.0, 1.0, 0.0, 0.25, 0.25, 0.25, 0.25])
    labels = jnp.array([1, 1, 0, 1, 0, 0, 0])
    assert float(metrics.expected_calibration_error(probs, labels, num_bins=4)) == pytest.approx(0.0, abs=1e-7)
    # Always-confident and always-wrong: ECE = 1.
    assert float(metrics.expected_calibration_error(jnp.array([1.0, 0.0]), jnp.array([0, 1]))) == pytest.approx(1.0)


def test_pearson_matches_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    y = y + x
    assert float(metrics.pearson(x, y)) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-5)


def test_spearman_per_prompt_matches_scipy():
    rng = np.random.default_rng(1)
    sizes = [5, 2, 1, 8, 3, 4, 6]
    prompt_ids = np.repeat(np.array([40, 2, 17, 9, 30, 5, 11]), sizes)
    n = prompt_ids.size
    perm = rng.permutation(n)  # responses of a prompt are not contiguous
    prompt_ids = prompt_ids[perm]
    gold = np.round(rng.normal(size=n), 0)  # rounded: many ties
    pred = np.round(gold + rng.normal(size=n), 0)
    pred[prompt_ids == 5] = 1.5  # constant pred: left out
    gold[prompt_ids == 30] = -2.0  # constant gold: left out
    rhos = []
    for p in np.unique(prompt_ids):
        m = prompt_ids == p
        if m.sum() >= 2 and np.ptp(pred[m]) > 0 and np.ptp(gold[m]) > 0:
            rhos.append(stats.spearmanr(pred[m], gold[m]).statistic)
    assert len(rhos) == 4
    got = metrics.spearman_per_prompt(pred, gold, prompt_ids)
    assert float(got) == pytest.approx(np.mean(rhos), abs=1e-5)
    assert float(jax.jit(metrics.spearman_per_prompt)(pred, gold, prompt_ids)) == pytest.approx(np.mean(rhos), abs=1e-5)


def test_spearman_per_prompt_extremes():
    prompt_ids = jnp.array([0, 0, 0, 1, 1, 1])
    gold = jnp.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    assert float(metrics.spearman_per_prompt(gold ** 3, gold, prompt_ids)) == pytest.approx(1.0)
    # Perfect within prompt 0, reversed within prompt 1: mean 0.
    pred = jnp.array([1.0, 2.0, 3.0, 3.0, 2.0, 1.0])
    assert float(metrics.spearman_per_prompt(pred, gold, prompt_ids)) == pytest.approx(0.0, abs=1e-6)
    # No prompt with a defined correlation: NaN.
    assert np.isnan(metrics.spearman_per_prompt(jnp.zeros(3), jnp.arange(3.0), jnp.arange(3)))


# ----------------------------------------------------------------------------------------------
# Best-of-n


def test_best_of_n_exact_two_responses_and_ties():
    # m = 2: the best (index 1) is missed only if both draws hit index 0: P = (1/2)^n.
    n = np.arange(1, 6)
    got = metrics.best_of_n_exact(jnp.array([0.0, 1.0]), jnp.array([3.0, 5.0]), 5)
    np.testing.assert_allclose(got, 3 * 0.5 ** n + 5 * (1 - 0.5 ** n), rtol=1e-6)
    # Proxy tie: the lower pool index wins (like argmax), so index 0 (gold 3) is the "best".
    got = metrics.best_of_n_exact(jnp.array([1.0, 1.0]), jnp.array([3.0, 5.0]), 5)
    np.testing.assert_allclose(got, 5 * 0.5 ** n + 3 * (1 - 0.5 ** n), rtol=1e-6)


def test_best_of_n_exact_properties():
    rng = np.random.default_rng(2)
    gold = rng.normal(size=9)
    proxy = gold + rng.normal(size=9)
    curve = np.asarray(metrics.best_of_n_exact(proxy, gold, 64))
    assert curve.shape == (64,)
    assert curve[0] == pytest.approx(gold.mean(), abs=1e-6)
    oracle = np.asarray(metrics.best_of_n_exact(gold, gold, 64))
    assert np.all(np.diff(oracle) > 0)
    assert oracle[-1] == pytest.approx(gold.max(), abs=0.02)
    # Proxy = -gold picks the worst response.
    assert metrics.best_of_n_exact(-gold, gold, 64)[-1] == pytest.approx(gold.min(), abs=0.02)


def test_best_of_n_exact_averages_prompts():
    rng = np.random.default_rng(3)
    prompt_ids = np.array([5, 1, 5, 5, 1, 8, 1, 5])
    proxy, gold = rng.normal(size=8), rng.normal(size=8)
    per_prompt = [metrics.best_of_n_exact(proxy[prompt_ids == p], gold[prompt_ids == p], 6) for p in (1, 5, 8)]
    got = metrics.best_of_n_exact(proxy, gold, 6, prompt_ids=prompt_ids)
    np.testing.assert_allclose(got, np.mean(per_prompt, axis=0), rtol=1e-5)


def test_best_of_n_curve_monte_carlo_matches_exact():
    rng = np.random.default_rng(4)
    sizes = [1, 3, 6, 10]
    prompt_ids = rng.permutation(np.repeat(np.array([7, 0, 3, 12]), sizes))
    gold = rng.normal(size=prompt_ids.size)
    proxy = np.round(gold + rng.normal(size=prompt_ids.size), 0)  # proxy ties
    max_n, trials = 12, 4000
    mc = np.asarray(metrics.best_of_n_curve(jax.random.key(0), proxy, gold, prompt_ids, max_n, num_trials=trials))
    exact = np.asarray(metrics.best_of_n_exact(proxy, gold, max_n, prompt_ids=prompt_ids))
    assert mc.shape == (max_n,)
    # Each prompt's estimate has stderr <= std(gold of the prompt) / sqrt(trials).
    stderr = np.sqrt(sum(np.var(gold[prompt_ids == p]) for p in np.unique(prompt_ids)) / trials) / 4
    assert np.all(np.abs(mc - exact) < 4 * stderr + 1e-6), (mc, exact, stderr)


def test_best_of_n_kl():
    assert float(metrics.best_of_n_kl(1)) == 0.0
    assert float(metrics.best_of_n_kl(2)) == pytest.approx(np.log(2) - 0.5)
    kl = np.asarray(metrics.best_of_n_kl(jnp.arange(1, 100)))
    assert np.all(np.diff(kl) > 0)


def brute_force_subsets(proxy, gold, prompt_ids, n):
    """Mean over prompts of the mean over every n-subset of the gold reward of its proxy argmax
    (ties: the lower pool index wins, as ``best_of_n_exact``)."""
    import itertools

    per_prompt = []
    for prompt in np.unique(prompt_ids):
        members = np.flatnonzero(prompt_ids == prompt)
        picks = [gold[max(subset, key=lambda j: (proxy[j], -j))] for subset in itertools.combinations(members, n)]
        per_prompt.append(np.mean(picks))
    return np.mean(per_prompt)


def test_best_of_n_subsets_matches_enumeration_with_ties_and_uneven_prompts():
    rng = np.random.default_rng(3)
    prompt_ids = np.array([0] * 7 + [5] * 9 + [2] * 6)
    rng.shuffle(prompt_ids)
    proxy = rng.integers(0, 4, size=prompt_ids.size).astype(float)  # many ties
    gold = rng.normal(size=prompt_ids.size)
    ns = [1, 2, 3, 5, 6]
    got = metrics.best_of_n_subsets(proxy, gold, ns, prompt_ids)
    want = [brute_force_subsets(proxy, gold, prompt_ids, n) for n in ns]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # n = 1 is the mean gold reward; n = m (one prompt) is the gold reward of the proxy's argmax.
    single = metrics.best_of_n_subsets(proxy[:7], gold[:7], [1, 7])
    assert single[0] == pytest.approx(gold[:7].mean())
    assert single[1] == pytest.approx(gold[:7][np.argmax(proxy[:7])])


def test_best_of_n_subsets_refuses_n_above_a_prompts_pool():
    with pytest.raises(ValueError, match="needs 5 responses per prompt"):
        metrics.best_of_n_subsets(np.zeros(8), np.zeros(8), [1, 5], np.repeat([0, 1], 4))


def test_within_prompt_accuracy_matches_a_loop():
    rng = np.random.default_rng(4)
    prompt_ids = rng.integers(0, 5, size=60)
    gold = rng.integers(0, 6, size=60).astype(float)
    pred = gold + rng.normal(scale=2.0, size=60)
    pred[:10] = np.round(pred[:10])  # some ties in pred
    right = total = 0.0
    for a in range(60):
        for b in range(60):
            if prompt_ids[a] == prompt_ids[b] and gold[a] > gold[b]:
                total += 1
                right += 1.0 if pred[a] > pred[b] else 0.5 if pred[a] == pred[b] else 0.0
    assert metrics.within_prompt_accuracy(pred, gold, prompt_ids) == pytest.approx(right / total)
    assert metrics.within_prompt_accuracy(gold, gold, prompt_ids) == 1.0
