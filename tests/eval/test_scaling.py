"""The over-optimisation functional forms of Gao et al. (2022) and their least-squares fits."""

import math

import numpy as np
import pytest

from jirl.eval import scaling


def noisy(curve, scale, seed=0):
    return curve + scale * np.random.default_rng(seed).standard_normal(curve.shape)


def test_fit_bon_recovers_alpha_and_beta_from_a_noisy_curve():
    d = np.linspace(0.0, 3.0, 60)
    r = noisy(d * (1.2 - 0.3 * d), 0.01)
    fit = scaling.fit_bon(d, r)
    # Noise 0.01 on a curve of range ~1.2: the estimates are within 0.02 of the truth.
    assert fit["alpha"] == pytest.approx(1.2, abs=0.02)
    assert fit["beta"] == pytest.approx(0.3, abs=0.02)
    assert fit["r2"] > 0.99


def test_fit_rl_recovers_alpha_and_beta_from_a_noisy_curve():
    d = np.linspace(0.0, 4.0, 60)
    r = noisy(scaling.predict("rl", d, 0.8, 0.5), 0.01, seed=1)
    fit = scaling.fit_rl(d, r)
    assert fit["alpha"] == pytest.approx(0.8, abs=0.02)
    assert fit["beta"] == pytest.approx(0.5, abs=0.02)
    assert fit["r2"] > 0.99


def test_rl_form_is_zero_at_zero_and_fits_include_d_zero():
    assert scaling.predict("rl", [0.0], 3.0, 2.0)[0] == 0.0
    d = np.array([0.0, 0.5, 1.0, 2.0])
    fit = scaling.fit_rl(d, scaling.predict("rl", d, 1.0, 0.4))
    assert np.isfinite([fit["alpha"], fit["beta"], fit["r2"]]).all()
    assert fit["alpha"] == pytest.approx(1.0, abs=1e-9) and fit["beta"] == pytest.approx(0.4, abs=1e-9)


def test_exact_curves_give_r2_one_and_the_wrong_form_clearly_less():
    d = np.linspace(0.0, 4.0, 40)
    bon_curve = scaling.predict("bon", d, 1.0, 0.3)
    rl_curve = scaling.predict("rl", d, 1.0, 0.6)
    assert scaling.fit_bon(d, bon_curve)["r2"] == pytest.approx(1.0, abs=1e-12)
    assert scaling.fit_rl(d, rl_curve)["r2"] == pytest.approx(1.0, abs=1e-12)
    # A curve of neither form (a saturating one with an intercept-like jump) fits worse.
    wrong = np.tanh(5 * d) + np.where(d > 2, -1.0, 0.0)
    assert scaling.fit_bon(d, wrong)["r2"] < 0.8
    assert scaling.fit_rl(d, wrong)["r2"] < 0.8


@pytest.mark.parametrize("form, alpha, beta", [("bon", 1.0, 0.3), ("bon", 0.2, 2.0), ("rl", 1.0, 0.6), ("rl", 2.0, 1.5)])
def test_peak_matches_a_brute_force_argmax(form, alpha, beta):
    grid = np.linspace(0.0, 20.0, 400_001)
    brute = grid[np.argmax(scaling.predict(form, grid, alpha, beta))]
    assert scaling.peak(form, alpha, beta) == pytest.approx(brute, abs=1e-4)


def test_peak_is_infinite_when_the_curve_never_turns_over():
    assert scaling.peak("bon", 1.0, 0.0) == math.inf
    assert scaling.peak("rl", 1.0, -0.1) == math.inf
    assert scaling.peak("bon", -1.0, 0.5) == 0.0  # falls from the start
    with pytest.raises(ValueError, match="unknown functional form"):
        scaling.peak("ppo", 1.0, 1.0)


def test_observed_peak():
    assert scaling.observed_peak([0, 1, 2, 3], [0.0, 0.5, 0.7, 0.2]) == (2.0, 0.7)
    with pytest.raises(ValueError):
        scaling.observed_peak([0, 1], [0.0])


@pytest.mark.parametrize("fit", [scaling.fit_bon, scaling.fit_rl])
def test_bad_inputs_raise_clear_errors(fit):
    with pytest.raises(ValueError, match="same length"):
        fit([0.0, 1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="at least 3 points"):
        fit([0.0, 1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        fit([0.0, 1.0, np.nan], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        fit([-1.0, 1.0, 2.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="distinct positive"):
        fit([0.0, 1.0, 1.0], [0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="1-D"):
        fit(np.zeros((3, 2)), np.zeros((3, 2)))


def test_r_squared():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert scaling.r_squared(y, y) == 1.0
    assert scaling.r_squared(y, np.full(4, y.mean())) == 0.0
    assert scaling.r_squared(y, y[::-1]) < 0
    assert math.isnan(scaling.r_squared(np.ones(3), np.ones(3)))
    with pytest.raises(ValueError, match="same shape"):
        scaling.r_squared(y, y[:3])
