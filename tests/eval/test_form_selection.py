"""Model selection among over-optimisation forms: it recovers known forms, and fails where it must
(the true form mislabelled or left out of the candidates)."""

import math

import numpy as np
import pytest
from scipy import stats

from jirl.eval import form_selection as fs
from jirl.eval import scaling

D = np.linspace(0.0, 4.0, 40)
D_FIT = 4.0 * 2.0 / 3.0  # fit on d <= 2.67, hold out 2.67 < d <= 4 (15 points)
# One curve of each form, all rising from 0 to about 1-1.5 on 0 <= d <= 4; the Gao forms peak
# inside the range (at d = 2 and d = e), the saturating ones flatten.
TRUTH = {
    "gao_bon": {"alpha": 1.0, "beta": 0.25},
    "gao_rl": {"alpha": 1.0, "beta": 0.5},
    "exp_saturation": {"alpha": 1.5, "beta": 0.8},
    "log_saturation": {"alpha": 0.8, "beta": 2.0},
}


def curve(form, noise=0.0, seed=0):
    clean = fs.FORMS[form].predict(D, TRUTH[form])
    return D, clean + noise * np.random.default_rng(seed).standard_normal(D.shape)


def seeds(form, noise, num=5):
    return [curve(form, noise, seed) for seed in range(num)]


def test_registry_has_gao_forms_and_two_saturating_forms_through_the_origin():
    assert {"gao_bon", "gao_rl", "exp_saturation", "log_saturation"} <= set(fs.FORMS)
    for name, form in fs.FORMS.items():
        assert form.name == name and form.num_params == 2 and form.equation
        assert form.predict(np.array([0.0]), TRUTH[name])[0] == 0.0


@pytest.mark.parametrize("form", sorted(TRUTH))
def test_an_exact_curve_is_fitted_exactly_by_its_own_form(form):
    d, r = curve(form)
    scores = fs.fit_and_score(d, r, D_FIT)[form]
    assert scores["params"] == pytest.approx(TRUTH[form], rel=1e-6)
    assert scores["params_all"] == pytest.approx(TRUTH[form], rel=1e-6)
    assert scores["held_out_rmse"] < 1e-7 and scores["fit_rmse"] < 1e-7 and scores["r2"] == pytest.approx(1.0)


@pytest.mark.parametrize("form", sorted(TRUTH))
@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_the_known_form_wins_by_held_out_error_and_by_bic(form, noise):
    chosen = fs.select_over_seeds(seeds(form, noise), D_FIT)
    assert chosen["winner"] == form, chosen["held_out_rmse"]
    assert chosen["seed_winners"] == [form] * 5
    assert chosen["bic_winners"] == [form] * 5 and chosen["aic_winners"] == [form] * 5
    assert chosen["bic_winner_counts"][form] == 5 and sum(chosen["bic_winner_counts"].values()) == 5
    paired = chosen["paired"]
    assert paired["winner"] == form and paired["runner_up"] != form
    assert paired["decided"] and 0.0 < paired["low"] <= paired["mean"] <= paired["high"]
    # Exact curves are the same on every seed: a zero-width interval.
    if noise == 0.0:
        assert paired["low"] == pytest.approx(paired["high"])
    assert chosen["num_seeds"] == 5 and chosen["extrapolation"] == pytest.approx([1.5] * 5)


def test_r2_cannot_tell_the_forms_apart_but_held_out_error_can():
    """The reviewer's example: log(1 + d) is fitted by d (alpha - beta d) at R^2 > 0.99, yet the
    Gao best-of-n form extrapolates it worse than log_saturation, whose form it is."""
    d = np.linspace(0.0, 3.0, 50)
    scores = fs.fit_and_score(d, np.log1p(d), 2.0)
    assert scores["gao_bon"]["r2"] > 0.99
    assert scores["log_saturation"]["held_out_rmse"] < 1e-6
    assert scores["gao_bon"]["held_out_rmse"] > 0.1


@pytest.mark.parametrize("true, wrong", [("gao_bon", "gao_rl"), ("gao_rl", "gao_bon")])
def test_the_swapped_gao_form_does_not_win(true, wrong):
    chosen = fs.select_over_seeds(seeds(true, 0.01), D_FIT)
    assert chosen["winner"] != wrong and wrong not in chosen["seed_winners"] and wrong not in chosen["bic_winners"]
    assert chosen["held_out_rmse"][wrong]["mean"] > 5 * chosen["held_out_rmse"][true]["mean"]
    # Between the two Gao forms alone, the true one wins, decided.
    gao = fs.select_over_seeds(seeds(true, 0.01), D_FIT, forms=["gao_bon", "gao_rl"])
    assert gao["winner"] == true and gao["runner_up"] == wrong and gao["paired"]["decided"]


@pytest.mark.parametrize("true, wrong", [("gao_bon", "gao_rl"), ("gao_rl", "gao_bon")])
def test_mislabelled_forms_make_the_procedure_name_the_wrong_form(true, wrong):
    """The names are only labels: swap the two Gao forms' labels and the procedure names the
    wrong form, so a test that only checked 'some form wins' could not catch this."""
    swapped = {"gao_bon": fs.FORMS["gao_rl"], "gao_rl": fs.FORMS["gao_bon"]}
    chosen = fs.select_over_seeds(seeds(true, 0.01), D_FIT, forms=swapped)
    assert chosen["winner"] == wrong


@pytest.mark.parametrize("true", sorted(TRUTH))
def test_without_the_true_form_the_winner_extrapolates_clearly_worse(true):
    """The selection is only as good as its candidates: without the true form it names another,
    whose held-out error is several times the true form's (and the noise's)."""
    curves = seeds(true, 0.01)
    full = fs.select_over_seeds(curves, D_FIT)
    rest = fs.select_over_seeds(curves, D_FIT, forms=[f for f in fs.FORMS if f != true])
    assert rest["winner"] != true and true not in rest["held_out_rmse"]
    assert rest["held_out_rmse"][rest["winner"]]["mean"] > 2 * full["held_out_rmse"][true]["mean"]
    assert rest["held_out_rmse"][rest["winner"]]["mean"] > 0.02  # twice the noise


def test_information_criteria_against_a_hand_computation():
    residuals = np.array([0.1, -0.2, 0.3, 0.0, -0.1])
    n, rss = 5, 0.15
    minus_2_log_l = n * math.log(2 * math.pi * rss / n) + n
    got = fs.information_criteria(residuals, num_params=2)  # k = 3 with the noise variance
    assert got["aic"] == pytest.approx(minus_2_log_l + 2 * 3)
    assert got["bic"] == pytest.approx(minus_2_log_l + 3 * math.log(5))
    # The same log-likelihood from the Gaussian density at the ML variance.
    log_l = float(np.sum(stats.norm.logpdf(residuals, scale=math.sqrt(rss / n))))
    assert got["aic"] == pytest.approx(-2 * log_l + 6)
    # An exact fit scores finitely (the variance is floored), below any inexact one.
    exact = fs.information_criteria(np.zeros(5), 2)
    assert math.isfinite(exact["aic"]) and exact["aic"] < got["aic"]


def test_fit_and_score_uses_all_points_for_the_criteria_and_the_fit_points_for_the_params():
    d, r = curve("gao_rl", 0.05, seed=3)
    scores = fs.fit_and_score(d, r, D_FIT)["gao_bon"]
    inside = d <= D_FIT
    on_fit = scaling.fit_bon(d[inside], r[inside])
    on_all = scaling.fit_bon(d, r)
    assert scores["params"] == pytest.approx({"alpha": on_fit["alpha"], "beta": on_fit["beta"]})
    assert scores["params_all"] == pytest.approx({"alpha": on_all["alpha"], "beta": on_all["beta"]})
    residuals = r - scaling.predict("bon", d, on_all["alpha"], on_all["beta"])
    rss, n = float(np.sum(residuals**2)), d.size
    assert scores["aic"] == pytest.approx(n * math.log(2 * math.pi * rss / n) + n + 6)
    assert scores["bic"] == pytest.approx(n * math.log(2 * math.pi * rss / n) + n + 3 * math.log(n))
    assert scores["r2"] == pytest.approx(on_all["r2"])
    held = scaling.predict("bon", d[~inside], on_fit["alpha"], on_fit["beta"]) - r[~inside]
    assert scores["held_out_rmse"] == pytest.approx(math.sqrt(np.mean(held**2)))


def test_t_interval_by_hand():
    mean, low, high = fs.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(3), s = 1
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    one = fs.t_interval([1.5])
    assert one[0] == 1.5 and math.isnan(one[1]) and math.isnan(one[2])


def test_one_seed_has_no_interval_and_is_never_decided():
    chosen = fs.select_over_seeds([curve("gao_bon", 0.01)], D_FIT)
    assert chosen["winner"] == "gao_bon"
    assert math.isnan(chosen["held_out_rmse"]["gao_bon"]["low"]) and not chosen["paired"]["decided"]


def test_a_failing_form_scores_nan_and_cannot_win():
    def broken_fit(d, r):
        raise ValueError("no")

    nan_form = fs.Form("nan_form", "nan", 2, lambda d, r: {}, lambda d, p: np.full_like(d, np.nan))
    forms = {"gao_bon": fs.FORMS["gao_bon"], "broken": fs.Form("broken", "x", 2, broken_fit, lambda d, p: d), "nan_form": nan_form}
    scores = fs.fit_and_score(*curve("gao_bon"), D_FIT, forms=forms)
    assert math.isnan(scores["broken"]["held_out_rmse"]) and math.isnan(scores["nan_form"]["aic"])
    chosen = fs.select_over_seeds(seeds("gao_bon", 0.01, 3), D_FIT, forms=forms)
    assert chosen["winner"] == "gao_bon" and chosen["runner_up"] is None and not chosen["paired"]["decided"]
    assert chosen["bic_winners"] == ["gao_bon"] * 3


@pytest.mark.parametrize(
    "d, r, d_fit, message",
    [
        (np.zeros((2, 3)), np.zeros((2, 3)), 1.0, "must be 1-D"),
        (np.arange(5.0), np.arange(4.0), 1.0, "same length"),
        (np.arange(5.0), np.array([0, 1, np.nan, 3, 4]), 1.0, "finite"),
        (np.array([0.0, -1.0, 2.0, 3.0, 4.0]), np.arange(5.0), 2.5, ">= 0"),
        (np.arange(6.0), np.arange(6.0), float("nan"), "d_fit must be a finite number > 0"),
        (np.arange(6.0), np.arange(6.0), 0.0, "d_fit must be a finite number > 0"),
        (np.arange(6.0), np.arange(6.0), 1.0, "too few points to fit"),
        (np.arange(6.0), np.arange(6.0), 4.5, "too few held-out points"),
    ],
)
def test_bad_curves_are_clear_errors(d, r, d_fit, message):
    with pytest.raises(ValueError, match=message):
        fs.fit_and_score(d, r, d_fit)


def test_bad_selection_arguments_are_clear_errors():
    good = curve("gao_bon")
    with pytest.raises(ValueError, match="unknown forms"):
        fs.fit_and_score(*good, D_FIT, forms=["gao_bon", "cubic"])
    with pytest.raises(ValueError, match="at least one candidate form"):
        fs.fit_and_score(*good, D_FIT, forms=[])
    with pytest.raises(ValueError, match="at least one curve"):
        fs.select_over_seeds([], D_FIT)
    with pytest.raises(ValueError, match="one per curve"):
        fs.select_over_seeds([good, good], [D_FIT])
    short = (np.arange(4.0), np.arange(4.0))
    with pytest.raises(ValueError, match="too few"):
        fs.select_over_seeds([good, short], D_FIT)
    chosen = fs.select_over_seeds([good, short, good], D_FIT, skip_invalid=True)
    assert chosen["kept"] == [0, 2] and chosen["num_seeds"] == 2 and chosen["skipped"][0][0] == 1
    with pytest.raises(ValueError, match="no curve could be scored"):
        fs.select_over_seeds([short], D_FIT, skip_invalid=True)
    with pytest.raises(ValueError, match="level"):
        fs.t_interval([1.0, 2.0], level=1.0)
