"""KL estimators against exact KL of categorical pairs, penalised rewards and controllers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jirl.rl.kl import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    KLControllerState,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_loss_terms,
    kl_penalized_rewards,
    kl_terms,
    sequence_kl,
)


def test_estimator_formulas_and_registry():
    x = jnp.array([-2.0, -0.3, 0.0, 0.5, 3.0])
    xn = np.asarray(x, np.float64)
    np.testing.assert_allclose(kl_k1(x), xn)
    np.testing.assert_allclose(kl_k2(x), 0.5 * xn**2, rtol=1e-6)
    np.testing.assert_allclose(kl_k3(x), np.exp(-xn) - 1 + xn, rtol=1e-5)
    assert set(KL_ESTIMATORS.names()) == {"k1", "k2", "k3"}
    assert KL_ESTIMATORS.get("k3") is kl_k3
    np.testing.assert_allclose(kl_terms(x + 1.0, jnp.ones_like(x), "k3"), kl_k3(x), rtol=1e-6)


def test_k3_is_non_negative_and_accurate_near_zero():
    x = jnp.concatenate([jnp.linspace(-20.0, 20.0, 4001), jnp.array([1e-6, -1e-6, 1e-4, -1e-4])])
    assert bool(jnp.all(kl_k3(x) >= 0))
    # second-order expansion x^2/2 - x^3/6 near 0: expm1 keeps the relative accuracy
    small = jnp.array([1e-3, -1e-3, 1e-4])
    sn = np.asarray(small, np.float64)
    np.testing.assert_allclose(kl_k3(small), sn**2 / 2 - sn**3 / 6, rtol=1e-3)


def categorical_pair(k, scale, seed):
    rng = np.random.default_rng(seed)
    p = np.exp(rng.normal(size=k))
    q = p * np.exp(scale * rng.normal(size=k))
    return p / p.sum(), q / q.sum()


def mc_log_ratios(p, q, n, seed):
    a = np.random.default_rng(seed).choice(len(p), size=n, p=p)
    return np.log(p[a]) - np.log(q[a])


@pytest.mark.parametrize("scale", [0.1, 1.0])
def test_k1_and_k3_monte_carlo_means_approach_exact_kl(scale):
    p, q = categorical_pair(6, scale, seed=0)
    exact = float(np.sum(p * np.log(p / q)))
    log_ratio = mc_log_ratios(p, q, 100_000, seed=1)
    for name in ["k1", "k3"]:
        k = np.asarray(KL_ESTIMATORS.get(name)(jnp.asarray(log_ratio, jnp.float32)), np.float64)
        se = k.std(ddof=1) / np.sqrt(len(k))
        assert abs(k.mean() - exact) < 4 * se, (name, k.mean(), exact, se)
    k3 = np.asarray(kl_k3(jnp.asarray(log_ratio, jnp.float32)))
    assert np.all(k3 >= 0)
    if scale == 0.1:  # close distributions: the control variate cuts the variance (Schulman 2020)
        assert k3.std() < 0.2 * log_ratio.std()


def test_k2_approximates_kl_for_close_distributions_only():
    close_p, close_q = categorical_pair(6, 0.05, seed=2)
    far_p, far_q = categorical_pair(6, 1.5, seed=2)
    exact = np.sum(close_p * np.log(close_p / close_q))
    log_ratio = mc_log_ratios(close_p, close_q, 100_000, seed=3)
    k2 = np.asarray(kl_k2(jnp.asarray(log_ratio, jnp.float32)), np.float64)
    assert abs(k2.mean() - exact) < 0.05 * exact  # Monte Carlo
    assert abs(np.sum(close_p * 0.5 * np.log(close_p / close_q) ** 2) - exact) < 0.05 * exact  # exact E[k2]
    # far apart the bias is large: the exact expectation of k2 is off by more than 20 %
    exact = np.sum(far_p * np.log(far_p / far_q))
    assert abs(np.sum(far_p * 0.5 * np.log(far_p / far_q) ** 2) - exact) > 0.2 * exact


def test_kl_loss_terms_gradient_is_one_minus_reference_ratio():
    log_probs = jnp.array([[-1.0, -0.2, -3.0]])
    ref = jnp.array([[-1.5, -0.1, -1.0]])
    terms = kl_loss_terms(log_probs, ref)
    lr = np.asarray(log_probs - ref, np.float64)
    np.testing.assert_allclose(terms, np.exp(-lr) - 1 + lr, rtol=1e-5)
    g_lp, g_ref = jax.grad(lambda a, b: kl_loss_terms(a, b).sum(), argnums=(0, 1))(log_probs, ref)
    np.testing.assert_allclose(g_lp, 1 - np.exp(-lr), rtol=1e-5)
    np.testing.assert_array_equal(g_ref, 0.0)
    np.testing.assert_allclose(kl_loss_terms(log_probs, ref, "k1"), lr, rtol=1e-6)


def test_kl_penalized_rewards_change_only_valid_tokens():
    rewards = jnp.array([[0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0]])  # sparse: last valid token
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    log_probs = jnp.array([[-1.0, -0.5, -2.0, 50.0], [-0.3, -0.4, jnp.nan, -7.0]])
    ref = jnp.array([[-1.2, -0.1, -2.5, -50.0], [-0.3, -1.0, 0.0, jnp.inf]])
    for estimator in ["k1", "k2", "k3"]:
        out = kl_penalized_rewards(rewards, log_probs, ref, mask, coef=0.1, estimator=estimator)
        m = np.asarray(mask)
        np.testing.assert_array_equal(np.asarray(out)[~m], np.asarray(rewards)[~m])
        k = np.asarray(KL_ESTIMATORS.get(estimator)(log_probs - ref))
        np.testing.assert_allclose(np.asarray(out)[m], np.asarray(rewards)[m] - 0.1 * k[m], rtol=1e-6)
    out = kl_penalized_rewards(rewards, log_probs, ref, mask, coef=0.1)
    np.testing.assert_allclose(out[0, :3], [-0.02, 0.04, 1.0 - 0.05], rtol=1e-5)
    # the penalty is data, not a gradient path
    grad = jax.grad(lambda lp: kl_penalized_rewards(rewards, lp, ref, mask, 0.1).sum())(log_probs)
    np.testing.assert_array_equal(grad, 0.0)
    # a coefficient from a controller state works under jit
    state = AdaptiveKLController(0.1, target=1.0).init()
    jitted = jax.jit(lambda c: kl_penalized_rewards(rewards, log_probs, ref, mask, c))(state.coef)
    np.testing.assert_allclose(jitted, out, rtol=1e-6)


def test_sequence_kl_sums_valid_tokens():
    log_probs = jnp.array([[-1.0, -0.5, 9.0], [-0.2, jnp.nan, 3.0]])
    ref = jnp.array([[-1.5, -0.7, 0.0], [-0.1, 0.0, 1.0]])
    mask = jnp.array([[1, 1, 0], [1, 0, 0]], bool)
    np.testing.assert_allclose(sequence_kl(log_probs, ref, mask), [0.7, -0.1], rtol=1e-5)
    k3 = lambda x: np.exp(-x) - 1 + x  # noqa: E731
    np.testing.assert_allclose(sequence_kl(log_probs, ref, mask, "k3"), [k3(0.5) + k3(0.2), k3(-0.1)], rtol=1e-5)


def test_adaptive_controller_moves_towards_the_target_with_clipped_error():
    ctrl = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=100.0)
    state = ctrl.init()
    up = ctrl.update(state, observed_kl=6.6, n_steps=10)  # error 0.1
    np.testing.assert_allclose(up.coef, 0.2 * (1 + 0.1 * 10 / 100), rtol=1e-6)
    down = ctrl.update(state, observed_kl=5.4, n_steps=10)  # error -0.1
    np.testing.assert_allclose(down.coef, 0.2 * (1 - 0.1 * 10 / 100), rtol=1e-6)
    huge = ctrl.update(state, observed_kl=600.0, n_steps=10)  # error clipped to 0.2
    np.testing.assert_allclose(huge.coef, 0.2 * (1 + 0.2 * 10 / 100), rtol=1e-6)
    zero = ctrl.update(state, observed_kl=0.0, n_steps=10)  # error clipped to -0.2
    np.testing.assert_allclose(zero.coef, 0.2 * (1 - 0.2 * 10 / 100), rtol=1e-6)
    same = ctrl.update(state, observed_kl=6.0, n_steps=10)
    np.testing.assert_allclose(same.coef, 0.2, rtol=1e-6)
    assert float(up.coef) > 0.2 > float(down.coef)

    # pure and jittable: a scan of updates equals the Python recurrence
    kls = jnp.array([10.0, 7.0, 6.0, 3.0, 0.5, 6.3])

    def body(s, kl):
        s = ctrl.update(s, kl, 32)
        return s, s.coef

    final, coefs = jax.jit(lambda s: jax.lax.scan(body, s, kls))(state)
    coef, expected = 0.2, []
    for kl in np.asarray(kls, np.float64):
        coef *= 1 + np.clip(kl / 6.0 - 1, -0.2, 0.2) * 32 / 100
        expected.append(coef)
    np.testing.assert_allclose(coefs, expected, rtol=1e-5)
    np.testing.assert_allclose(final.coef, expected[-1], rtol=1e-5)


def test_fixed_controller_stays_fixed_and_registry():
    ctrl = FixedKLController(coef=0.05)
    state = ctrl.init()
    assert isinstance(state, KLControllerState)
    for kl in [0.0, 1.0, 1e6]:
        state = jax.jit(ctrl.update)(state, kl, 100)
    np.testing.assert_allclose(state.coef, 0.05, rtol=1e-7)
    assert set(KL_CONTROLLERS.names()) == {"fixed", "adaptive"}
    assert KL_CONTROLLERS.get("adaptive") is AdaptiveKLController
    assert KL_CONTROLLERS.get("fixed")(coef=0.1).init().coef == pytest.approx(0.1)


def test_full_kl_terms_sum_to_the_exact_sequence_kl_by_the_chain_rule():
    from jirl.rl.kl import full_kl_terms

    # Two-step sequences over 3 tokens: pi(a1) pi(a2 | a1) against pi_ref, enumerated.
    rng = np.random.default_rng(0)
    logits1, ref1 = rng.normal(size=(2, 3))
    logits2, ref2 = rng.normal(size=(2, 3, 3))  # [a1, a2]

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p1, q1, p2, q2 = softmax(logits1), softmax(ref1), softmax(logits2), softmax(ref2)
    exact = sum(p1[a] * p2[a, b] * np.log(p1[a] * p2[a, b] / (q1[a] * q2[a, b])) for a in range(3) for b in range(3))
    # Per-step KLs along each first token a1 ([3 trajectories, 2 steps]), weighted by pi(a1).
    logits = jnp.asarray(np.stack([np.broadcast_to(logits1, (3, 3)), logits2], axis=1), jnp.float32)
    ref_logits = jnp.asarray(np.stack([np.broadcast_to(ref1, (3, 3)), ref2], axis=1), jnp.float32)
    per_step = np.asarray(full_kl_terms(logits, ref_logits))
    assert per_step.shape == (3, 2) and np.all(per_step >= 0)
    np.testing.assert_allclose(np.sum(p1 * per_step.sum(1)), exact, rtol=1e-5)
    np.testing.assert_allclose(full_kl_terms(logits, logits), 0.0, atol=1e-6)
