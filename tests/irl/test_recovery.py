"""Reward-recovery metrics against independent computations.

The brute-force references never use the vectorised recursion: they walk the tree one
(prompt, depth, state, action) at a time in Python, find children from the documented layout
(continuing index c = a - [a > eos] leads from state i to i*C + c), and compute Pearson
correlations with NumPy's weighted covariance in float64.
"""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from jirl.eval.metrics import pearson
from jirl.irl import recovery
from jirl.mdp import oracle
from jirl.mdp.best_of_n import complete_sequences
from jirl.mdp.tasks import make_task

# ----------------------------------------------------------------------------------------------
# Instances


@functools.cache
def tiny_spec():
    """V = 3 (EOS = 1, in the middle, to exercise the column layout), C = 2, H = 3, 2 prompts."""
    return oracle.TreeSpec.from_prompts(3, 1, 3, [[0], [2, 0]], [0.3, 0.7])


@functools.cache
def bigram():
    task = make_task("bigram", num_chars=3, horizon=3)
    spec = task.tree_spec()
    return spec, oracle.rewards_from_step_fn(spec, task.step_reward)


def random_tree(seed, spec, scale=1.0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(scale * rng.standard_normal(spec.tree_shape(t)), jnp.float32) for t in range(spec.horizon)]


def random_potential(seed, spec, scale=3.0):
    rng = np.random.default_rng(seed)
    shapes = [(spec.num_prompts, spec.num_states(t)) for t in range(spec.horizon)]
    return [jnp.asarray(scale * rng.standard_normal(shape), jnp.float32) for shape in shapes]


def random_policy(seed, spec, dropped=None):
    """Log-softmax of Gaussian logits; never takes action ``dropped`` when given."""
    policy = []
    for logits in random_tree(seed, spec):
        logits = np.asarray(logits, np.float64)
        if dropped is not None:
            logits[..., dropped] = -np.inf
        top = logits.max(axis=-1, keepdims=True)
        log_norm = np.log(np.sum(np.exp(logits - top), axis=-1, keepdims=True)) + top
        policy.append(jnp.asarray(logits - log_norm, jnp.float32))
    return policy


def root_only_potential(spec, values):
    """Phi(x) = values[x] at the roots, 0 deeper: adds -Phi(x) to every return of prompt x."""
    potential = [jnp.zeros((spec.num_prompts, spec.num_states(t))) for t in range(spec.horizon)]
    potential[0] = jnp.asarray(values, jnp.float32)[:, None]
    return potential


def assert_trees_close(a, b, rtol=1e-5, atol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------
# Brute force


def child_index(spec, state, action):
    return state * spec.num_continuing + action - int(action > spec.eos_id)


def is_terminal(spec, depth, action):
    return action == spec.eos_id or depth == spec.horizon - 1


def brute_shaping(spec, rewards, potential):
    r = [np.array(x, np.float64) for x in rewards]
    phi = [np.asarray(x, np.float64) for x in potential]
    for t in range(spec.horizon):
        for p in range(spec.num_prompts):
            for s in range(spec.num_states(t)):
                for a in range(spec.vocab_size):
                    nxt = 0.0 if is_terminal(spec, t, a) else phi[t + 1][p, child_index(spec, s, a)]
                    r[t][p, s, a] += nxt - phi[t][p, s]
    return r


def brute_canonical(spec, rewards, action_log_probs=None):
    """C(r)(s,a) = Q(s,a) - V(s) by memoised recursion, one (s, a) at a time."""
    r = [np.asarray(x, np.float64) for x in rewards]
    if action_log_probs is None:
        probs = [np.full(spec.tree_shape(t), 1.0 / spec.vocab_size) for t in range(spec.horizon)]
    else:
        probs = [np.exp(np.asarray(x, np.float64)) for x in action_log_probs]

    @functools.cache
    def q(p, t, s, a):
        rest = 0.0 if is_terminal(spec, t, a) else v(p, t + 1, child_index(spec, s, a))
        return r[t][p, s, a] + rest

    @functools.cache
    def v(p, t, s):
        return sum(probs[t][p, s, a] * q(p, t, s, a) for a in range(spec.vocab_size) if probs[t][p, s, a] > 0)

    out = [np.zeros(spec.tree_shape(t)) for t in range(spec.horizon)]
    for t in range(spec.horizon):
        for p in range(spec.num_prompts):
            for s in range(spec.num_states(t)):
                for a in range(spec.vocab_size):
                    out[t][p, s, a] = q(p, t, s, a) - v(p, t, s)
    return out


def np_weighted_pearson(x, y, w):
    cov = np.cov(np.asarray(x, np.float64), np.asarray(y, np.float64), aweights=np.asarray(w, np.float64))
    return cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])


def flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in tree])


def default_weights(spec):
    return flat([np.broadcast_to(spec.prompt_weights[:, None, None], spec.tree_shape(t)) for t in range(spec.horizon)])


def brute_epic(spec, r1, r2, w=None, action_log_probs=None):
    w = default_weights(spec) if w is None else w
    c1, c2 = brute_canonical(spec, r1, action_log_probs), brute_canonical(spec, r2, action_log_probs)
    rho = np_weighted_pearson(flat(c1), flat(c2), w)
    return rho, np.sqrt((1 - rho) / 2)


# ----------------------------------------------------------------------------------------------
# Shaping and canonicalisation


def test_apply_potential_shaping_matches_brute_force_and_shifts_returns_by_root_potential():
    spec = tiny_spec()
    r = random_tree(0, spec)
    phi = random_potential(1, spec)
    shaped = recovery.apply_potential_shaping(spec, r, phi)
    assert_trees_close(shaped, brute_shaping(spec, r, phi))
    uniform = oracle.uniform_log_probs(spec)
    _, returns = complete_sequences(spec, uniform, r)
    _, shaped_returns = complete_sequences(spec, uniform, shaped)
    expected = np.broadcast_to(-np.asarray(phi[0]), returns.shape)  # -Phi(x) on every response of x
    np.testing.assert_allclose(shaped_returns - returns, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["uniform", "random", "dropped_action"])
def test_canonicalize_matches_brute_force(policy):
    spec = tiny_spec()
    r = random_tree(2, spec)
    pi = {
        "uniform": None,
        "random": random_policy(3, spec),
        "dropped_action": random_policy(4, spec, dropped=2),
    }[policy]
    canonical = recovery.canonicalize_tree(spec, r, pi)
    assert all(np.all(np.isfinite(np.asarray(c))) for c in canonical)
    assert_trees_close(canonical, brute_canonical(spec, r, pi))


@pytest.mark.parametrize("policy", ["uniform", "random", "dropped_action"])
def test_canonicalize_removes_random_potential_shaping(policy):
    spec = tiny_spec()
    r = random_tree(5, spec)
    pi = {
        "uniform": None,
        "random": random_policy(6, spec),
        "dropped_action": random_policy(7, spec, dropped=spec.eos_id),
    }[policy]
    base = recovery.canonicalize_tree(spec, r, pi)
    for seed in range(3):
        phi = random_potential(100 + seed, spec)
        shaped = recovery.apply_potential_shaping(spec, r, phi)
        assert not np.allclose(flat(shaped), flat(r))
        assert_trees_close(recovery.canonicalize_tree(spec, shaped, pi), base, atol=1e-4)
    # Shaping alone canonicalises to zero.
    pure = recovery.apply_potential_shaping(spec, [jnp.zeros_like(x) for x in r], phi)
    assert_trees_close(recovery.canonicalize_tree(spec, pure, pi), [jnp.zeros_like(x) for x in r], atol=1e-4)


def test_canonicalize_removes_per_prompt_constant_but_not_per_token_bonus():
    spec = tiny_spec()
    r = random_tree(8, spec)
    base = recovery.canonicalize_tree(spec, r)
    # Per-prompt constant on every return: a shaping by a root-only potential.
    root = recovery.apply_potential_shaping(spec, r, root_only_potential(spec, [5.0, -2.0]))
    assert_trees_close(recovery.canonicalize_tree(spec, root, None), base)
    # A constant paid at every terminal action is the shaping Phi = -c: removed.
    terminal_bonus = [x + 3.0 * oracle.terminal_mask(spec, t) for t, x in enumerate(r)]
    assert_trees_close(recovery.canonicalize_tree(spec, terminal_bonus), base)
    # A constant per *token* rewards length: not a shaping, not removed.
    per_token = [x + 1.0 for x in r]
    assert not np.allclose(flat(recovery.canonicalize_tree(spec, per_token)), flat(base), atol=1e-2)


def test_canonical_is_in_the_shaping_class_idempotent_and_centred():
    spec = tiny_spec()
    r = random_tree(9, spec)
    canonical = recovery.canonicalize_tree(spec, r)
    assert_trees_close(recovery.canonicalize_tree(spec, canonical), canonical)
    for c in canonical:  # E_{A ~ uniform}[C(r)(s, A)] = 0
        np.testing.assert_allclose(np.asarray(c).mean(axis=-1), 0.0, atol=1e-5)
    # Returns of C(r) = per-prompt-centred returns of r under the uniform policy.
    uniform = oracle.uniform_log_probs(spec)
    log_p, returns = complete_sequences(spec, uniform, r)
    _, canonical_returns = complete_sequences(spec, uniform, canonical)
    centred = returns - np.sum(np.exp(log_p) * returns, axis=1, keepdims=True)
    np.testing.assert_allclose(canonical_returns, centred, rtol=1e-5, atol=1e-5)


def test_naive_one_step_form_is_not_shaping_invariant():
    """Why (2) is multi-step: the one-step EPIC analogue r + E_A r(s',A) - E_A r(s,A) keeps a
    residue of a shaping on a deterministic tree."""
    spec = tiny_spec()
    phi = random_potential(10, spec)
    pure = recovery.apply_potential_shaping(spec, [jnp.zeros(spec.tree_shape(t)) for t in range(spec.horizon)], phi)

    def one_step(r):
        out = []
        for t in range(spec.horizon):
            mean_here = jnp.mean(r[t], axis=-1, keepdims=True)
            nxt = 0.0 if t == spec.horizon - 1 else oracle._from_children(spec, jnp.mean(r[t + 1], axis=-1))
            out.append(r[t] + nxt - mean_here)
        return out

    assert np.max(np.abs(flat(one_step(pure)))) > 0.1
    assert np.max(np.abs(flat(recovery.canonicalize_tree(spec, pure)))) < 1e-4


# ----------------------------------------------------------------------------------------------
# EPIC distance


def test_epic_matches_brute_force_and_metrics_pearson():
    spec = tiny_spec()
    r1, r2 = random_tree(11, spec), random_tree(12, spec)
    rho, distance = brute_epic(spec, r1, r2)
    np.testing.assert_allclose(recovery.epic_distance(spec, r1, r2), distance, rtol=1e-5)
    np.testing.assert_allclose(recovery.shaping_removed_token_correlation(spec, r1, r2), rho, rtol=1e-5, atol=1e-6)
    # Uniform prompt weights: the unweighted Pearson of jirl.eval.metrics over all (s, a).
    even = oracle.TreeSpec.from_prompts(3, 1, 3, [[0], [2, 0]])
    c1, c2 = recovery.canonicalize_tree(even, r1), recovery.canonicalize_tree(even, r2)
    np.testing.assert_allclose(
        recovery.shaping_removed_token_correlation(even, r1, r2), pearson(flat(c1), flat(c2)), rtol=1e-5
    )


def test_epic_occupancy_weights_match_brute_force():
    spec = tiny_spec()
    r1, r2 = random_tree(13, spec), random_tree(14, spec)
    pi = random_policy(15, spec, dropped=0)
    occupancy = oracle.state_occupancy(spec, pi)
    w_tree = [occ[..., None] * jnp.exp(lp) for occ, lp in zip(occupancy, pi)]
    rho, distance = brute_epic(spec, r1, r2, w=flat(w_tree))
    np.testing.assert_allclose(recovery.epic_distance(spec, r1, r2, log_probs=pi), distance, rtol=1e-5)
    np.testing.assert_allclose(recovery.epic_distance(spec, r1, r2, weights=w_tree), distance, rtol=1e-5)
    np.testing.assert_allclose(
        recovery.shaping_removed_token_correlation(spec, r1, r2, log_probs=pi), rho, rtol=1e-5, atol=1e-6
    )
    # A D_A other than uniform changes the canonical form, and is followed.
    d_a = random_policy(16, spec)
    _, distance_da = brute_epic(spec, r1, r2, action_log_probs=d_a)
    np.testing.assert_allclose(recovery.epic_distance(spec, r1, r2, action_log_probs=d_a), distance_da, rtol=1e-5)
    with pytest.raises(ValueError, match="at most one"):
        recovery.epic_distance(spec, r1, r2, weights=w_tree, log_probs=pi)


def test_epic_zero_for_scaled_shaped_reward_one_for_negation():
    spec = tiny_spec()
    r = random_tree(17, spec)
    other = random_tree(18, spec)
    phi = random_potential(19, spec)
    shaped = [2.5 * x for x in recovery.apply_potential_shaping(spec, r, phi)]
    pi = random_policy(20, spec)
    assert float(recovery.epic_distance(spec, r, shaped)) < 1e-4
    assert float(recovery.epic_distance(spec, r, shaped, log_probs=pi)) < 1e-4
    np.testing.assert_allclose(recovery.epic_distance(spec, r, [-x for x in r]), 1.0, rtol=1e-5)
    # Positive scaling of either argument leaves the distance unchanged.
    d = recovery.epic_distance(spec, r, other)
    np.testing.assert_allclose(recovery.epic_distance(spec, [0.1 * x for x in r], other), d, rtol=1e-5)
    np.testing.assert_allclose(recovery.epic_distance(spec, r, [7.0 * x for x in other]), d, rtol=1e-5)
    np.testing.assert_allclose(recovery.epic_distance(spec, shaped, other), d, rtol=1e-4)


def test_epic_is_a_pseudometric_on_random_rewards():
    spec = tiny_spec()
    rewards = [random_tree(30 + i, spec, scale=0.5 + i) for i in range(5)]
    # Include a shaped copy, so some distances are (pseudo-)zero between distinct rewards.
    rewards.append(recovery.apply_potential_shaping(spec, rewards[0], random_potential(40, spec)))
    n = len(rewards)
    d = np.array([[float(recovery.epic_distance(spec, a, b)) for b in rewards] for a in rewards])
    assert np.all((d >= 0) & (d <= 1 + 1e-6))
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-4)
    np.testing.assert_allclose(d, d.T, atol=1e-6)
    assert d[0, n - 1] < 1e-4
    for i in range(n):
        for j in range(n):
            for k in range(n):
                assert d[i, k] <= d[i, j] + d[j, k] + 1e-5, (i, j, k)


def test_epic_is_nan_for_a_constant_canonical_reward():
    """Pearson is undefined when one canonical reward is constant (here: r = 0)."""
    spec = tiny_spec()
    zeros = [jnp.zeros(spec.tree_shape(t)) for t in range(spec.horizon)]
    assert np.isnan(float(recovery.epic_distance(spec, random_tree(42, spec), zeros)))
    assert np.isnan(float(recovery.shaping_removed_token_correlation(spec, zeros, zeros)))


# ----------------------------------------------------------------------------------------------
# Token and return correlations on the bigram task


def test_bigram_token_correlation_after_shaping():
    spec, true = bigram()
    phi = random_potential(50, spec)
    shaped = recovery.apply_potential_shaping(spec, true, phi)
    # Raw per-token rewards no longer line up ...
    assert float(pearson(flat(shaped), flat(true))) < 0.9
    # ... but with shaping removed they are the same reward.
    assert float(recovery.shaping_removed_token_correlation(spec, shaped, true)) >= 0.999
    scaled = [0.3 * x for x in shaped]
    np.testing.assert_allclose(recovery.shaping_removed_token_correlation(spec, scaled, true), 1.0, atol=1e-5)
    uniform = oracle.uniform_log_probs(spec)
    np.testing.assert_allclose(
        recovery.shaping_removed_token_correlation(spec, scaled, true, log_probs=uniform), 1.0, atol=1e-5
    )
    np.testing.assert_allclose(recovery.epic_distance(spec, scaled, true), 0.0, atol=1e-3)


def test_bigram_random_reward_is_uncorrelated():
    spec, true = bigram()
    rhos = [
        float(recovery.shaping_removed_token_correlation(spec, random_tree(60 + i, spec), true))
        for i in range(4)
    ]
    assert all(abs(rho) < 0.2 for rho in rhos), rhos
    assert abs(np.mean(rhos)) < 0.1, rhos
    d = float(recovery.epic_distance(spec, random_tree(60, spec), true))
    assert 0.6 < d < 0.8  # sqrt(1/2) for rho = 0


def test_returns_correlation():
    spec, true = bigram()
    phi = random_potential(70, spec)
    shaped = [0.5 * x for x in recovery.apply_potential_shaping(spec, true, phi)]
    np.testing.assert_allclose(recovery.returns_correlation(spec, shaped, true), 1.0, atol=1e-5)
    np.testing.assert_allclose(recovery.returns_correlation(spec, [-x for x in true], true), -1.0, atol=1e-5)
    # Against a float64 NumPy reference, under the uniform and a random policy.
    noisy = [x + 0.7 * n for x, n in zip(true, random_tree(71, spec))]
    pi = random_policy(72, spec)
    for policy in (None, pi):
        enumerated = oracle.uniform_log_probs(spec) if policy is None else policy
        log_p, learned_returns = complete_sequences(spec, enumerated, noisy)
        _, true_returns = complete_sequences(spec, enumerated, true)
        p = np.exp(log_p)
        learned_centred = learned_returns - np.sum(p * learned_returns, axis=1, keepdims=True)
        true_centred = true_returns - np.sum(p * true_returns, axis=1, keepdims=True)
        w = spec.prompt_weights[:, None] * p
        expected = np_weighted_pearson(learned_centred.ravel(), true_centred.ravel(), w.ravel())
        got = recovery.returns_correlation(spec, noisy, true, log_probs=policy)
        np.testing.assert_allclose(got, expected, rtol=1e-4)
        assert 0.3 < float(got) < 0.99
    # Under the uniform policy it equals the (uniform-policy-weighted) correlation of canonical returns.
    uniform = oracle.uniform_log_probs(spec)
    log_p, a = complete_sequences(spec, uniform, recovery.canonicalize_tree(spec, noisy))
    _, b = complete_sequences(spec, uniform, recovery.canonicalize_tree(spec, true))
    w = spec.prompt_weights[:, None] * np.exp(log_p)
    np.testing.assert_allclose(
        recovery.returns_correlation(spec, noisy, true), np_weighted_pearson(a.ravel(), b.ravel(), w.ravel()), rtol=1e-4
    )
