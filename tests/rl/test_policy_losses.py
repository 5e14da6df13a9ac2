"""Policy losses against hand computations, closed-form gradients and plain-Python loops."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jirl.config import ConfigError
from jirl.rl.policy_losses import (
    POLICY_LOSSES,
    aggregate,
    clipped_value_terms,
    entropy_terms,
    gspo_terms,
    policy_gradient_terms,
    policy_loss_fn,
    ppo_clip_terms,
)
from jirl.train.losses import LossOutput

# ---------------------------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------------------------


def ppo_case(ratios, advantages):
    ratios, advantages = np.asarray(ratios, np.float32), np.asarray(advantages, np.float32)
    old = np.full_like(ratios, -1.3)
    return jnp.asarray(old + np.log(ratios)), jnp.asarray(old), jnp.asarray(advantages)


def ppo_grad(log_probs, old, adv, **kw):
    return jax.grad(lambda lp: ppo_clip_terms(lp, old, adv, **kw)[0].sum())(log_probs)


def test_ppo_symmetric_clip_values_gradients_and_indicator():
    # regimes with eps = 0.2:  in range | above, A>0 | above, A<0 | below, A<0 | below, A>0
    ratios = [1.1, 1.5, 1.5, 0.5, 0.5]
    adv = [2.0, 2.0, -1.0, -1.0, 3.0]
    log_probs, old, a = ppo_case(ratios, adv)
    terms, clipped = ppo_clip_terms(log_probs, old, a)
    expected = [-1.1 * 2.0, -1.2 * 2.0, 1.5, 0.8, -0.5 * 3.0]
    np.testing.assert_allclose(terms, expected, rtol=1e-5)
    np.testing.assert_array_equal(clipped, [0, 1, 0, 1, 0])
    # gradient -A * rho where unclipped, 0 where clipped
    expected_grad = [-2.0 * 1.1, 0.0, 1.0 * 1.5, 0.0, -3.0 * 0.5]
    np.testing.assert_allclose(ppo_grad(log_probs, old, a), expected_grad, rtol=1e-5, atol=1e-7)


def test_ppo_asymmetric_clip_higher_only_acts_on_positive_advantages_above_one():
    ratios = [1.25, 1.3, 1.3, 0.75, 0.85]
    adv = [1.0, 1.0, -1.0, -1.0, -1.0]
    log_probs, old, a = ppo_case(ratios, adv)
    kw = dict(clip_low=0.2, clip_high=0.28)
    terms, clipped = ppo_clip_terms(log_probs, old, a, **kw)
    # 1.25 < 1.28: unclipped (symmetric 0.2 would clip it); 1.3 A>0: clipped at 1.28;
    # 1.3 A<0: unclipped; 0.75 A<0: clipped at 1 - clip_low = 0.8; 0.85 A<0: in range
    np.testing.assert_allclose(terms, [-1.25, -1.28, 1.3, 0.8, 0.85], rtol=1e-5)
    np.testing.assert_array_equal(clipped, [0, 1, 0, 1, 0])
    np.testing.assert_allclose(ppo_grad(log_probs, old, a, **kw), [-1.25, 0, 1.3, 0, 0.85], rtol=1e-5, atol=1e-7)
    symmetric, _ = ppo_clip_terms(log_probs, old, a)
    assert float(symmetric[0]) == pytest.approx(-1.2, rel=1e-5)


def test_dual_clip_caps_the_loss_for_negative_advantages():
    ratios = [5.0, 2.0, 5.0, 0.5]
    adv = [-1.0, -1.0, 1.0, -2.0]
    log_probs, old, a = ppo_case(ratios, adv)
    terms, clipped = ppo_clip_terms(log_probs, old, a, dual_clip=3.0)
    # A=-1, rho=5: PPO loss 5, capped at 3; rho=2: 2 < 3 unchanged; A>0: untouched (clip at 1.2);
    # A=-2, rho=0.5: PPO clip at 0.8 -> 1.6 < cap 6
    np.testing.assert_allclose(terms, [3.0, 2.0, -1.2, 1.6], rtol=1e-5)
    np.testing.assert_array_equal(clipped, [1, 0, 1, 1])
    np.testing.assert_allclose(ppo_grad(log_probs, old, a, dual_clip=3.0), [0, 2.0, 0, 0], rtol=1e-5, atol=1e-7)
    plain, _ = ppo_clip_terms(log_probs, old, a)
    assert float(plain[0]) == pytest.approx(5.0, rel=1e-5)


def test_policy_gradient_terms_and_gradient():
    log_probs = jnp.array([[-0.5, -2.0, -0.1]])
    adv = jnp.array([[1.5, -0.5, 2.0]])
    np.testing.assert_allclose(policy_gradient_terms(log_probs, adv), -np.asarray(adv * log_probs), rtol=1e-6)
    grad = jax.grad(lambda lp: policy_gradient_terms(lp, adv).sum())(log_probs)
    np.testing.assert_allclose(grad, -np.asarray(adv), rtol=1e-6)
    # advantages are constants
    grad_a = jax.grad(lambda a: policy_gradient_terms(log_probs, a).sum())(adv)
    np.testing.assert_array_equal(grad_a, 0.0)


# ---------------------------------------------------------------------------------------------
# GSPO
# ---------------------------------------------------------------------------------------------


def test_gspo_sequence_ratio_values_and_gradients_by_hand():
    old = jnp.full((3, 3), -1.0)
    delta = np.array([[0.3, -0.1, 0.4], [0.02, 0.0, 9.0], [0.0, 0.0, 0.0]], np.float32)
    mask = jnp.array([[1, 1, 1], [1, 1, 0], [0, 0, 0]], bool)
    adv = jnp.array([[2.0, 2.0, 2.0], [-1.0, -3.0, 7.0], [5.0, 5.0, 5.0]])
    log_probs = old + delta
    clip = dict(clip_low=0.2, clip_high=0.2)
    terms, clipped = gspo_terms(log_probs, old, adv, mask, **clip)
    s0 = np.exp((0.3 - 0.1 + 0.4) / 3)  # 1.2214 > 1.2, A = 2 -> clipped
    s1 = np.exp(0.02 / 2)  # padding (9.0, 7.0) ignored; A = mean(-1, -3) = -2 -> unclipped
    np.testing.assert_allclose(terms[0], np.full(3, -1.2 * 2.0), rtol=1e-5)
    np.testing.assert_allclose(terms[1], np.full(3, s1 * 2.0), rtol=1e-5)
    np.testing.assert_allclose(terms[2], 0.0, atol=1e-7)
    np.testing.assert_array_equal(clipped[:, 0], [1, 0, 0])
    assert s0 > 1.2
    # sequence_mean of broadcast terms is (1/|non-empty|) sum_b l_b
    out = aggregate(terms, mask, "sequence_mean")
    assert float(out.count) == 2
    np.testing.assert_allclose(out.value, (-2.4 + 2 * s1) / 2, rtol=1e-5)
    # d l_b / d log pi_bt = -A_b s_b m_bt / |y_b| unclipped, 0 clipped
    grad = jax.grad(lambda lp: aggregate(gspo_terms(lp, old, adv, mask, **clip)[0], mask, "sequence_mean").total)(
        log_probs
    )
    expected = np.zeros((3, 3))
    expected[1, :2] = 2.0 * s1 / 2
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_gspo_uses_the_mean_log_ratio_not_per_token_ratios():
    """Token ratios 1.5 and 1/1.5 would each be clipped by PPO; their geometric mean is 1."""
    old = jnp.zeros((1, 2))
    log_probs = jnp.log(jnp.array([[1.5, 1 / 1.5]]))
    adv = jnp.ones((1, 2))
    terms, clipped = gspo_terms(log_probs, old, adv, jnp.ones((1, 2), bool), clip_low=0.2, clip_high=0.2)
    np.testing.assert_allclose(terms, -1.0, rtol=1e-6)
    assert float(clipped.sum()) == 0
    grad = jax.grad(lambda lp: gspo_terms(lp, old, adv, jnp.ones((1, 2), bool))[0][:, 0].sum())(log_probs)
    np.testing.assert_allclose(grad, [[-0.5, -0.5]], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Value loss and entropy
# ---------------------------------------------------------------------------------------------


def test_clipped_value_terms_by_hand():
    values = jnp.array([1.5, 0.5, 1.1, 3.0])
    old = jnp.array([1.0, 1.0, 1.0, 1.0])
    returns = jnp.array([2.0, 2.0, 2.0, 0.0])
    terms, clipped = clipped_value_terms(values, old, returns, clip=0.2)
    # V=1.5 -> clipped 1.2: max(0.25, 0.64); V=0.5 -> 0.8: max(2.25, 1.44); V=1.1 in range;
    # V=3, R=0 -> clipped 1.2: max(9, 1.44)
    np.testing.assert_allclose(terms, [0.32, 1.125, 0.405, 4.5], rtol=1e-5)
    np.testing.assert_array_equal(clipped, [1, 0, 0, 0])
    grad = jax.grad(lambda v: clipped_value_terms(v, old, returns, clip=0.2)[0].sum())(values)
    np.testing.assert_allclose(grad, [0.0, -1.5, -0.9, 3.0], rtol=1e-5, atol=1e-7)
    plain, _ = clipped_value_terms(values, old, returns, clip=None)
    np.testing.assert_allclose(plain, 0.5 * np.square(np.asarray(values - returns)), rtol=1e-6)


def test_entropy_terms_match_numpy_and_handle_masked_vocabulary():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 5)).astype(np.float32)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(entropy_terms(jnp.asarray(logits)), -(p * np.log(p)).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(entropy_terms(jnp.zeros((1, 1, 7))), [[np.log(7)]], rtol=1e-6)
    masked = jnp.array([[[0.0, 0.0, -jnp.inf, -jnp.inf]]])
    np.testing.assert_allclose(entropy_terms(masked), [[np.log(2)]], rtol=1e-6)
    grad = jax.grad(lambda x: entropy_terms(x).sum())(masked)
    assert np.all(np.isfinite(grad))
    # dH/dz_a = -p_a (log p_a + H): zero at the maximum-entropy point
    np.testing.assert_allclose(grad, 0.0, atol=1e-7)
    grad = jax.grad(lambda x: entropy_terms(x).sum())(jnp.asarray(logits))
    h = -(p * np.log(p)).sum(-1, keepdims=True)
    np.testing.assert_allclose(grad, -p * (np.log(p) + h), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Plain-Python loop references (float64) on random inputs
# ---------------------------------------------------------------------------------------------


def random_batch(seed, b=5, t=7):
    rng = np.random.default_rng(seed)
    old = -rng.uniform(0.1, 3.0, (b, t))
    log_probs = old + rng.normal(0.0, 0.3, (b, t))
    adv = rng.normal(0.0, 1.0, (b, t))
    lengths = rng.integers(0, t + 1, b)
    lengths[0] = t
    mask = np.arange(t)[None, :] < lengths[:, None]
    return log_probs, old, adv, mask


def ppo_loop(log_probs, old, adv, clip_low, clip_high, dual_clip):
    out = np.zeros_like(log_probs)
    for b in range(log_probs.shape[0]):
        for t in range(log_probs.shape[1]):
            r = np.exp(log_probs[b, t] - old[b, t])
            a = adv[b, t]
            loss = -min(r * a, min(max(r, 1 - clip_low), 1 + clip_high) * a)
            if dual_clip is not None and a < 0:
                loss = min(loss, -dual_clip * a)
            out[b, t] = loss
    return out


def gspo_loop(log_probs, old, adv, mask, clip_low, clip_high):
    out = np.zeros_like(log_probs)
    for b in range(log_probs.shape[0]):
        valid = [t for t in range(log_probs.shape[1]) if mask[b, t]]
        if not valid:
            continue
        s = np.exp(sum(log_probs[b, t] - old[b, t] for t in valid) / len(valid))
        a = sum(adv[b, t] for t in valid) / len(valid)
        out[b, :] = -min(s * a, min(max(s, 1 - clip_low), 1 + clip_high) * a)
    return out


def value_loop(values, old, returns, clip):
    out = np.zeros_like(values)
    for i in np.ndindex(values.shape):
        v_clip = old[i] + min(max(values[i] - old[i], -clip), clip)
        out[i] = 0.5 * max((values[i] - returns[i]) ** 2, (v_clip - returns[i]) ** 2)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_gspo_and_value_losses_match_python_loops(seed):
    log_probs, old, adv, mask = random_batch(seed)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    for kw in [dict(clip_low=0.2, clip_high=0.2, dual_clip=None), dict(clip_low=0.1, clip_high=0.28, dual_clip=2.0)]:
        terms, _ = ppo_clip_terms(f32(log_probs), f32(old), f32(adv), **kw)
        np.testing.assert_allclose(terms, ppo_loop(log_probs, old, adv, **kw), rtol=1e-5, atol=1e-6)
    for clip_low, clip_high in [(0.05, 0.08), (3e-4, 4e-4)]:
        terms, _ = gspo_terms(f32(log_probs), f32(old), f32(adv), jnp.asarray(mask), clip_low, clip_high)
        expected = gspo_loop(log_probs, old, adv, mask, clip_low, clip_high)
        np.testing.assert_allclose(terms, expected, rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(seed + 100)
    values, old_values, returns = (rng.normal(size=(4, 6)) for _ in range(3))
    terms, _ = clipped_value_terms(f32(values), f32(old_values), f32(returns), clip=0.3)
    np.testing.assert_allclose(terms, value_loop(values, old_values, returns, 0.3), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


def test_token_mean_and_sequence_mean_differ_on_ragged_masks_as_the_formulas_say():
    terms = jnp.array([[1.0, 2.0, 3.0, 4.0], [10.0, 99.0, 99.0, 99.0], [1e6, 1e6, 1e6, 1e6]])
    mask = jnp.array([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    tm = aggregate(terms, mask, "token_mean")
    sm = aggregate(terms, mask, "sequence_mean")
    ss = aggregate(terms, mask, "sequence_sum")
    assert (float(tm.total), float(tm.count)) == (20.0, 5.0)
    np.testing.assert_allclose(tm.value, 20.0 / 5)
    np.testing.assert_allclose(sm.value, (10.0 / 4 + 10.0) / 2)  # the empty row does not count
    assert float(sm.count) == 2.0
    np.testing.assert_allclose(ss.value, (10.0 + 10.0) / 2)
    assert float(tm.value) != pytest.approx(float(sm.value))
    # non-finite padding contributes nothing either
    nan_terms = terms.at[2].set(jnp.nan).at[1, 1:].set(jnp.inf)
    for mode, ref in [("token_mean", tm), ("sequence_mean", sm), ("sequence_sum", ss)]:
        np.testing.assert_allclose(aggregate(nan_terms, mask, mode).value, ref.value)
    with pytest.raises(ValueError, match="token_mean"):
        aggregate(terms, mask, "mean")


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean", "sequence_sum"])
def test_aggregated_policy_loss_is_invariant_to_micro_batching(mode):
    log_probs, old, adv, mask = (jnp.asarray(x) for x in random_batch(3, b=6))
    loss = POLICY_LOSSES.get("ppo")

    def out(sl):
        terms, _ = loss(log_probs[sl], old[sl], adv[sl], mask[sl])
        return aggregate(terms, mask[sl], mode)

    whole = out(slice(None))
    parts = [out(slice(0, 1)), out(slice(1, 4)), out(slice(4, 6))]
    combined = LossOutput(total=sum(p.total for p in parts), count=sum(p.count for p in parts))
    np.testing.assert_allclose(combined.value, whole.value, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_has_a_common_signature_and_matches_the_term_functions():
    assert set(POLICY_LOSSES.names()) == {"ppo", "pg", "gspo"}
    log_probs, old, adv, mask = (jnp.asarray(x, jnp.float32) for x in random_batch(4))
    mask = mask.astype(bool)
    for name in POLICY_LOSSES:
        terms, metrics = POLICY_LOSSES.get(name)(log_probs, old, adv, mask)
        assert terms.shape == log_probs.shape
        assert {"ratio_mean", "approx_kl"} <= set(metrics)
    terms, metrics = POLICY_LOSSES.get("ppo")(log_probs, old, adv, mask, clip_low=0.1, clip_high=0.1)
    ref, clipped = ppo_clip_terms(log_probs, old, adv, 0.1, 0.1)
    np.testing.assert_allclose(np.where(mask, terms, 0), np.where(mask, ref, 0), rtol=1e-6)
    np.testing.assert_allclose(metrics["clip_fraction"], np.asarray(clipped)[np.asarray(mask)].mean(), rtol=1e-6)
    ratio = np.exp(np.asarray(log_probs - old))[np.asarray(mask)]
    np.testing.assert_allclose(metrics["ratio_mean"], ratio.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["approx_kl"], (ratio - 1 - np.log(ratio)).mean(), rtol=1e-4)
    terms, _ = POLICY_LOSSES.get("pg")(log_probs, old, adv, mask)
    np.testing.assert_allclose(np.where(mask, terms, 0), np.where(mask, -adv * log_probs, 0), rtol=1e-6)
    terms, metrics = POLICY_LOSSES.get("gspo")(log_probs, old, adv, mask, clip_low=0.01, clip_high=0.01)
    ref, clipped = gspo_terms(log_probs, old, adv, mask, 0.01, 0.01)
    np.testing.assert_allclose(terms, ref, rtol=1e-6)
    non_empty = np.asarray(mask).any(-1)
    np.testing.assert_allclose(metrics["clip_fraction"], np.asarray(clipped)[non_empty, 0].mean(), rtol=1e-6)


@pytest.mark.parametrize("name", ["ppo", "pg", "gspo"])
def test_garbage_at_padding_gives_finite_loss_and_zero_gradient_there(name):
    log_probs, old, adv, mask = (jnp.asarray(x, jnp.float32) for x in random_batch(5))
    mask = mask.astype(bool)
    old = jnp.where(mask, old, -1e4)  # exp(log_probs - old) overflows at padding
    adv = jnp.where(mask, adv, jnp.nan)
    loss = POLICY_LOSSES.get(name)

    def total(lp):
        terms, _ = loss(lp, old, adv, mask)
        return aggregate(terms, mask, "token_mean").value

    value, grad = jax.value_and_grad(total)(log_probs)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(np.asarray(grad)[~np.asarray(mask)], 0.0)
    _, metrics = loss(log_probs, old, adv, mask)
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_policy_losses_take_exactly_their_options():
    for name in POLICY_LOSSES:
        params = inspect.signature(POLICY_LOSSES.get(name)).parameters.values()
        assert [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD] == ["log_probs", "old_log_probs", "advantages", "mask"]
        assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in list(params)[4:]), name
    assert POLICY_LOSSES.options("ppo") == {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": None}
    assert POLICY_LOSSES.options("pg") == {}


def test_a_misspelt_policy_loss_option_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"policy loss 'ppo' has no option 'cilp_low'\. Did you mean 'clip_low'\? "
                                          r"Its options are: clip_high, clip_low, dual_clip"):
        policy_loss_fn("ppo", {"cilp_low": 0.1})
    with pytest.raises(ConfigError, match=r"'pg' has no option 'clip_low'\. Its options are: \(none\)"):
        policy_loss_fn("pg", {"clip_low": 0.1})


def test_ppo_options_change_the_loss_as_computed_by_hand():
    """Ratio 1.15 with A = 1: clip_high 0.2 leaves it unclipped (l = -1.15), clip_high 0.1 clips
    it to 1.1 (l = -1.1). Ratio 5 with A = -1: l = 5 unless dual_clip = 3 caps it at 3."""
    log_probs, old, adv = ppo_case([1.15, 5.0], [1.0, -1.0])
    mask = jnp.ones(2, bool)
    default, metrics = policy_loss_fn("ppo")(log_probs, old, adv, mask)
    np.testing.assert_allclose(default, [-1.15, 5.0], rtol=1e-5)
    assert float(metrics["clip_fraction"]) == 0.0
    tight, metrics = policy_loss_fn("ppo", {"clip_high": 0.1, "dual_clip": 3.0})(log_probs, old, adv, mask)
    np.testing.assert_allclose(tight, [-1.1, 3.0], rtol=1e-5)
    assert float(metrics["clip_fraction"]) == 1.0


def test_policy_losses_jit():
    log_probs, old, adv, mask = (jnp.asarray(x, jnp.float32) for x in random_batch(6))
    for name in POLICY_LOSSES:
        fn = jax.jit(lambda *a, _n=name: POLICY_LOSSES.get(_n)(*a))
        terms, _ = fn(log_probs, old, adv, mask)
        ref, _ = POLICY_LOSSES.get(name)(log_probs, old, adv, mask)
        np.testing.assert_allclose(terms, ref, rtol=1e-6)
