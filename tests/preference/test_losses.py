"""DPO-family losses against independent hand computations (values and gradients, float64),
finite differences, defining properties, the registry, and jit."""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jirl.config import ConfigError
from jirl.preference import losses as pl
from jirl.registry import MissingInputError, UnknownNameError

BETA = 0.1
PC, PR = [-3.0, -5.5], [-4.0, -2.0]  # policy log-probs (sums), chosen / rejected
RC, RR = [-3.5, -5.0], [-3.0, -2.5]  # reference log-probs
CL, RL = [3, 5], [2, 4]  # response lengths

PAIRED = ["dpo", "cdpo", "robust_dpo", "ipo", "hinge", "slic", "simpo", "orpo", "spin"]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def softplus(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------------------- hand computations
# Each returns (loss, d loss / d policy_chosen, d loss / d policy_rejected) for pair i.


def margin(i):
    """Log-ratio difference (pc - rc) - (pr - rr) of pair i."""
    return (PC[i] - RC[i]) - (PR[i] - RR[i])


def hand_dpo(i):
    h = BETA * margin(i)
    return softplus(-h), -BETA * sigmoid(-h), BETA * sigmoid(-h)


def hand_cdpo(i, eps=0.2):
    h = BETA * margin(i)
    dh = -(1 - eps) * sigmoid(-h) + eps * sigmoid(h)
    return (1 - eps) * softplus(-h) + eps * softplus(h), BETA * dh, -BETA * dh


def hand_robust(i, eps=0.2):
    h = BETA * margin(i)
    dh = (-(1 - eps) * sigmoid(-h) - eps * sigmoid(h)) / (1 - 2 * eps)
    return ((1 - eps) * softplus(-h) - eps * softplus(h)) / (1 - 2 * eps), BETA * dh, -BETA * dh


def hand_ipo(i):
    residual = margin(i) - 1 / (2 * BETA)
    return residual**2, 2 * residual, -2 * residual


def hand_hinge(i):
    h = BETA * margin(i)
    assert h < 1  # the example sits on the linear part
    return 1 - h, -BETA, BETA


def hand_slic(i, delta=4.0):
    gap = PC[i] - PR[i]
    active = 1.0 if delta - gap > 0 else 0.0
    return max(0.0, delta - gap), -active, active


def hand_simpo(i, gamma=0.3):
    z = BETA * PC[i] / CL[i] - BETA * PR[i] / RL[i] - gamma
    return softplus(-z), -sigmoid(-z) * BETA / CL[i], sigmoid(-z) * BETA / RL[i]


def hand_orpo(i, lam=0.25):
    lc, lr = PC[i] / CL[i], PR[i] / RL[i]
    u = (lc - math.log(1 - math.exp(lc))) - (lr - math.log(1 - math.exp(lr)))
    # d log_odds / d l = 1 / (1 - e^l); d l / d p = 1 / len
    dpc = -lam * sigmoid(-u) / (1 - math.exp(lc)) / CL[i]
    dpr = lam * sigmoid(-u) / (1 - math.exp(lr)) / RL[i]
    return lam * softplus(-u), dpc, dpr


CASES = {
    "dpo": ({}, hand_dpo),
    "cdpo": ({"label_smoothing": 0.2}, hand_cdpo),
    "robust_dpo": ({"label_smoothing": 0.2}, hand_robust),
    "ipo": ({}, hand_ipo),
    "hinge": ({}, hand_hinge),
    "slic": ({"delta": 4.0}, hand_slic),
    "simpo": ({"gamma": 0.3}, hand_simpo),
    "orpo": ({"lam": 0.25}, hand_orpo),
    "spin": ({}, hand_dpo),
}


def arrays(dtype=jnp.float64):
    return [jnp.asarray(v, dtype) for v in (PC, PR, RC, RR)]


def call(name, pc, pr, rc, rr, chosen_nll_per_token=None, **options):
    """The loss through its adapter, given every paired input: it passes each loss only those it
    declares (ORPO's SFT term is 0 unless given)."""
    nll = jnp.zeros_like(pc) if chosen_nll_per_token is None else chosen_nll_per_token
    return pl.preference_loss_fn(name, options)(
        pc, pr, ref_chosen=rc, ref_rejected=rr, beta=BETA, chosen_len=jnp.asarray(CL), rejected_len=jnp.asarray(RL),
        chosen_nll_per_token=nll,
    )


def test_cases_cover_every_paired_loss():
    assert sorted(CASES) == sorted(PAIRED)
    assert sorted(PAIRED + ["kto"]) == pl.PREFERENCE_LOSSES.names()
    assert [name for name in pl.PREFERENCE_LOSSES if not pl.is_paired(pl.PREFERENCE_LOSSES.get(name))] == ["kto"]


@pytest.mark.parametrize("name", PAIRED)
def test_values_and_gradients_match_hand_computation(name, x64):
    options, hand = CASES[name]
    expected = np.array([hand(i) for i in range(2)])  # [pair, (loss, dpc, dpr)]
    pc, pr, rc, rr = arrays()
    loss = call(name, pc, pr, rc, rr, **options)
    assert loss.dtype == jnp.float64 and loss.shape == (2,)
    np.testing.assert_allclose(loss, expected[:, 0], rtol=1e-6)

    def total(pc, pr):
        return jnp.sum(call(name, pc, pr, rc, rr, **options))

    dpc, dpr = jax.grad(total, argnums=(0, 1))(pc, pr)
    np.testing.assert_allclose(dpc, expected[:, 1], rtol=1e-6)
    np.testing.assert_allclose(dpr, expected[:, 2], rtol=1e-6)

    # central finite differences, one coordinate at a time
    step = 1e-6
    for i in range(2):
        e = jnp.zeros(2).at[i].set(step)
        fd_pc = (total(pc + e, pr) - total(pc - e, pr)) / (2 * step)
        fd_pr = (total(pc, pr + e) - total(pc, pr - e)) / (2 * step)
        np.testing.assert_allclose([fd_pc, fd_pr], [dpc[i], dpr[i]], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", PAIRED)
def test_float32_in_float32_out(name):
    loss = call(name, *arrays(jnp.float32), **CASES[name][0])
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, [CASES[name][1](i)[0] for i in range(2)], rtol=1e-5)


def test_helpers(x64):
    pc, pr, rc, rr = arrays()
    np.testing.assert_allclose(pl.logratio_difference(pc, pr, rc, rr), [margin(0), margin(1)], rtol=1e-12)
    np.testing.assert_allclose(pl.implicit_reward(pc, rc, 0.5), [0.5 * (-3.0 + 3.5), 0.5 * (-5.5 + 5.0)], rtol=1e-12)


def test_default_options(x64):
    pc, pr, rc, rr = arrays()
    np.testing.assert_allclose(call("cdpo", pc, pr, rc, rr), [hand_cdpo(i, 0.1)[0] for i in range(2)], rtol=1e-6)
    np.testing.assert_allclose(call("robust_dpo", pc, pr, rc, rr), [hand_robust(i, 0.1)[0] for i in range(2)], rtol=1e-6)
    # slic, delta = 1: pair 0 has pc - pr = 1 (on the kink, loss 0), pair 1 has -3.5
    np.testing.assert_allclose(call("slic", pc, pr, rc, rr), [0.0, 4.5], rtol=1e-6)
    np.testing.assert_allclose(call("simpo", pc, pr, rc, rr), [hand_simpo(i, 0.5)[0] for i in range(2)], rtol=1e-6)
    np.testing.assert_allclose(call("orpo", pc, pr, rc, rr), [hand_orpo(i, 0.1)[0] for i in range(2)], rtol=1e-6)


# ------------------------------------------------------------------------------------ properties


def test_cdpo_without_smoothing_is_dpo(x64):
    pc, pr, rc, rr = arrays()
    np.testing.assert_allclose(call("cdpo", pc, pr, rc, rr, label_smoothing=0.0), call("dpo", pc, pr, rc, rr), rtol=1e-12)


def test_robust_dpo_is_unbiased_under_label_flips(x64):
    pc, pr, rc, rr = arrays()
    eps = 0.3
    kept = call("robust_dpo", pc, pr, rc, rr, label_smoothing=eps)
    flipped = call("robust_dpo", pr, pc, rr, rc, label_smoothing=eps)
    np.testing.assert_allclose((1 - eps) * kept + eps * flipped, call("dpo", pc, pr, rc, rr), rtol=1e-10)


def test_ipo_minimum_at_half_inverse_beta(x64):
    _, pr, rc, rr = arrays()
    pc = rc + (pr - rr) + 1 / (2 * BETA)  # log-ratio difference exactly 1 / (2 beta)
    assert np.allclose(call("ipo", pc, pr, rc, rr), 0.0)
    grads = jax.grad(lambda pc, pr: jnp.sum(call("ipo", pc, pr, rc, rr)), argnums=(0, 1))(pc, pr)
    np.testing.assert_allclose(np.concatenate(grads), 0.0, atol=1e-9)


@pytest.mark.parametrize("name", ["simpo", "orpo", "slic"])
def test_reference_free_losses_ignore_reference(name, x64):
    pc, pr, rc, rr = arrays()
    np.testing.assert_array_equal(call(name, pc, pr, rc, rr), call(name, pc, pr, rc + 7.0, rr - 3.0))


def test_spin_equals_dpo(x64):
    pc, pr, rc, rr = arrays()
    np.testing.assert_array_equal(call("spin", pc, pr, rc, rr), call("dpo", pc, pr, rc, rr))


def test_orpo_adds_chosen_nll():
    pc, pr, rc, rr = arrays(jnp.float32)
    nll = jnp.array([0.7, 1.3])
    with_nll = call("orpo", pc, pr, rc, rr, chosen_nll_per_token=nll)
    np.testing.assert_allclose(with_nll - call("orpo", pc, pr, rc, rr), nll, rtol=1e-5)


def test_orpo_finite_at_zero_log_prob():
    zero = jnp.zeros(2)
    loss, grad = jax.value_and_grad(lambda pc: jnp.sum(call("orpo", pc, jnp.array(PR), zero, zero)))(zero)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_hinge_zero_beyond_unit_margin(x64):
    _, pr, rc, rr = arrays()
    pc = rc + (pr - rr) + jnp.array([1.0, 5.0]) / BETA  # h = 1 and h = 5
    np.testing.assert_allclose(call("hinge", pc, pr, rc, rr), 0.0, atol=1e-12)
    grad = jax.grad(lambda pc: jnp.sum(call("hinge", pc, pr, rc, rr)))(pc + 1e-3)
    np.testing.assert_array_equal(grad, 0.0)


def test_robust_dpo_rejects_half_smoothing():
    with pytest.raises(ValueError, match="label_smoothing < 0.5"):
        call("robust_dpo", *arrays(jnp.float32), label_smoothing=0.5)


# ------------------------------------------------------------------------------------------- KTO


def test_kto_values_and_gradients(x64):
    policy, ref = jnp.array([-3.0, -5.5, -2.0]), jnp.array([-3.5, -5.0, -2.0])
    desirable = jnp.array([True, False, True])
    z0, wd, wu = 0.2, 1.5, 0.8
    loss_fn = pl.PREFERENCE_LOSSES.get("kto")

    def total(policy, kl):
        return jnp.sum(loss_fn(policy, ref, desirable, beta=BETA, kl_reference=kl,
                               desirable_weight=wd, undesirable_weight=wu))

    expected, expected_grad = [], []
    for i, good in enumerate([True, False, True]):
        r = float(policy[i] - ref[i])
        v = sigmoid(BETA * (r - z0)) if good else sigmoid(BETA * (z0 - r))
        w = wd if good else wu
        expected.append(w * (1 - v))
        expected_grad.append((-1 if good else 1) * w * BETA * v * (1 - v))
    loss = loss_fn(policy, ref, desirable, beta=BETA, kl_reference=z0, desirable_weight=wd, undesirable_weight=wu)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)

    d_policy, d_kl = jax.grad(total, argnums=(0, 1))(policy, jnp.asarray(z0))
    np.testing.assert_allclose(d_policy, expected_grad, rtol=1e-6)
    assert d_kl == 0.0  # the reference point is a constant

    # 0/1 labels work like bools; a negative KL estimate is clamped to zero
    as_int = loss_fn(policy, ref, jnp.array([1, 0, 1]), beta=BETA, kl_reference=z0, desirable_weight=wd, undesirable_weight=wu)
    np.testing.assert_array_equal(as_int, loss)
    np.testing.assert_array_equal(loss_fn(policy, ref, desirable, beta=BETA, kl_reference=-1.0),
                                  loss_fn(policy, ref, desirable, beta=BETA, kl_reference=0.0))


def test_kto_kl_reference(x64):
    policy, ref = jnp.array([-1.0, -2.0, -4.0]), jnp.array([-1.5, -2.5, -3.0])
    np.testing.assert_allclose(pl.kto_kl_reference(policy, ref), 0.0)  # mean(0.5, 0.5, -1) = 0 -> 0
    np.testing.assert_allclose(pl.kto_kl_reference(policy + 0.3, ref), 0.3, rtol=1e-12)
    grad = jax.grad(lambda p: pl.kto_kl_reference(p + 0.3, ref))(policy)
    np.testing.assert_array_equal(grad, 0.0)


# ----------------------------------------------------------------------------------- registry, jit


def test_registry_names_and_unknown_name():
    for name in PAIRED + ["kto"]:
        assert name in pl.PREFERENCE_LOSSES
    with pytest.raises(UnknownNameError, match="'dpoo'"):
        pl.PREFERENCE_LOSSES.get("dpoo")


@pytest.mark.parametrize("name", PAIRED)
def test_each_loss_takes_exactly_its_arguments(name):
    """No ``**kwargs``; options are keyword-only with defaults; the adapter gives the uniform
    set of inputs (a zero length included) and each loss takes what it declares."""
    params = inspect.signature(pl.PREFERENCE_LOSSES.get(name)).parameters.values()
    assert not any(p.kind is p.VAR_KEYWORD for p in params), f"{name} must not take **kwargs"
    assert all(default is not inspect.Parameter.empty for default in pl.PREFERENCE_LOSSES.options(name).values())
    batch = 5
    keys = jax.random.split(jax.random.key(0), 4)
    pc, pr, rc, rr = (-jax.random.uniform(k, (batch,), minval=1.0, maxval=10.0) for k in keys)
    lengths = jnp.arange(batch)  # includes a zero length
    loss = pl.preference_loss_fn(name)(pc, pr, ref_chosen=rc, ref_rejected=rr, beta=0.5, chosen_len=lengths,
                                       rejected_len=lengths + 1, chosen_nll_per_token=jnp.ones(batch))
    assert loss.shape == (batch,) and np.all(np.isfinite(loss))


def test_registration_declares_what_a_loss_needs():
    assert [n for n in PAIRED if pl.needs_reference(n)] == ["dpo", "cdpo", "robust_dpo", "ipo", "hinge", "spin"]
    assert pl.needs_reference("kto")
    assert pl.preference_loss_fn("orpo").inputs == {"chosen_len", "rejected_len", "chosen_nll_per_token"}
    assert pl.preference_loss_fn("slic").inputs == frozenset()
    pc, pr = (jnp.asarray(v) for v in (PC, PR))
    with pytest.raises(MissingInputError, match="'simpo' needs chosen_len=..., rejected_len=..."):
        pl.preference_loss_fn("simpo")(pc, pr, beta=BETA)
    with pytest.raises(ValueError, match="'kto' is unpaired"):
        pl.preference_loss_fn("kto")


def test_a_misspelt_option_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"preference loss 'cdpo' has no option 'label_smoothin'\. Did you mean "
                                          r"'label_smoothing'\? Its options are: label_smoothing"):
        pl.preference_loss_fn("cdpo", {"label_smoothin": 0.2})
    with pytest.raises(ConfigError, match=r"'dpo' has no option 'beta' \(an input its caller supplies"):
        pl.preference_loss_fn("dpo", {"beta": 0.2})
    with pytest.raises(ConfigError, match=r"'kto' has no option 'desirable_wieght'\. Did you mean 'desirable_weight'"):
        pl.PREFERENCE_LOSSES.bind("kto", {"desirable_wieght": 2.0})


def test_an_option_changes_the_loss(x64):
    """SimPO's gamma against the hand value (``hand_simpo``) at two settings."""
    pc, pr, rc, rr = arrays()
    for gamma in (0.5, 2.0):
        np.testing.assert_allclose(call("simpo", pc, pr, rc, rr, gamma=gamma), [hand_simpo(i, gamma)[0] for i in range(2)], rtol=1e-9)
    assert not np.allclose(call("simpo", pc, pr, rc, rr, gamma=0.5), call("simpo", pc, pr, rc, rr, gamma=2.0))


@pytest.mark.parametrize("name", PAIRED)
def test_jit_matches_eager(name):
    options = CASES[name][0]
    jitted = jax.jit(lambda *a: call(name, *a, **options))
    np.testing.assert_allclose(jitted(*arrays(jnp.float32)), call(name, *arrays(jnp.float32), **options), rtol=1e-6)
