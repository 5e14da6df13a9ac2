"""Which functional form does an over-optimisation curve follow? Model selection that can fail.

Gao, Schulman & Hilton (2022) report that the gold reward ``R`` of a policy optimised against a
proxy reward model, as a function of ``d = sqrt(KL(pi || pi_init))`` (``R(0) = 0``), follows

    best-of-n:  R(d) = d (alpha - beta d)          (``gao_bon``, their eq. 1)
    RL:         R(d) = d (alpha - beta log d)      (``gao_rl``,  their eq. 2).

A high R^2 of either fit does not show that claim: smooth rising-then-flattening curves are fitted
almost equally well by many two-parameter forms (``log(1 + d)`` is fitted by ``d (alpha - beta d)``
at R^2 ~ 0.998 on ``0 <= d <= 3``). Here the forms compete instead:

1. Every candidate of ``FORMS`` (the two forms of Gao et al. and generic saturating curves through
   the origin) is fitted by least squares on the points with ``d <= d_fit`` only, and scored by
   its **held-out extrapolation error**, the root-mean-square error on the points with
   ``d > d_fit`` (``fit_and_score``):

       RMSE_out = sqrt( mean_{i: d_i > d_fit} (r_i - f(d_i; theta_fit))^2 ).

2. Information criteria (Akaike 1974; Schwarz 1978) of each form refitted on **all** ``n``
   points, with Gaussian residuals whose variance is estimated by maximum likelihood,
   ``sigma^2 = RSS / n``, and counted as a parameter (``k = p + 1`` for a form of ``p``
   parameters):

       -2 log L = n log(2 pi RSS / n) + n
       AIC      = -2 log L + 2 k
       BIC      = -2 log L + k log n.

   Every form in ``FORMS`` has ``p = 2``, so on one curve AIC and BIC order the forms exactly as
   the in-sample RSS does; they part ways only for candidates with different parameter counts.
   R^2 (of the all-points fit) is reported as information only.

3. Over several seeds' curves of one optimiser and proxy (``select_over_seeds``): each form's
   mean held-out RMSE with a Student-t interval over seeds, the winner (lowest mean), and a
   paired comparison of the winner with the runner-up: the per-seed differences

       delta_s = RMSE_out(runner-up, s) - RMSE_out(winner, s)

   with their mean and t-interval; the choice is ``decided`` only when that interval excludes 0.

The selection is only as good as its candidates: it names the best of ``forms``, never a form
that is not among them (``tests/eval/test_form_selection.py`` checks both that known forms are
recovered and that excluding or mislabelling the true form makes the procedure fail).

Plain NumPy (and ``scipy`` for the bounded 1-D searches and t quantiles) on small 1-D arrays;
nothing is jitted.

Public API: ``Form``, ``FORMS``, ``DEFAULT_FIT_FRACTION``, ``information_criteria``,
``t_interval``, ``fit_and_score``, ``select_over_seeds``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import optimize, stats

from jirl.eval import scaling

# Fit on d <= DEFAULT_FIT_FRACTION * max(d): the forms must extrapolate by a factor 1.5 in d.
DEFAULT_FIT_FRACTION = 2.0 / 3.0
MIN_FIT_POINTS = 3  # a two-parameter fit needs 3 points (and 2 distinct positive d) to leave a residual
MIN_HELD_OUT_POINTS = 2


@dataclasses.dataclass(frozen=True)
class Form:
    """A candidate curve ``R(d)`` through the origin: ``fit(d, r) -> params`` (least squares) and
    ``predict(d, params) -> R``; ``num_params`` counts the curve's parameters (not the noise)."""

    name: str
    equation: str
    num_params: int
    fit: Callable[[np.ndarray, np.ndarray], dict]
    predict: Callable[[np.ndarray, dict], np.ndarray]


# --- Gao et al.'s forms: linear least squares through the origin (``jirl.eval.scaling``) --------


def _fit_gao(kind: str):
    fit = scaling.fit_bon if kind == "bon" else scaling.fit_rl

    def fit_fn(d, r):
        result = fit(d, r)
        return {"alpha": result["alpha"], "beta": result["beta"]}

    return fit_fn


def _predict_gao(kind: str):
    return lambda d, p: scaling.predict(kind, d, p["alpha"], p["beta"])


# --- Generic saturating forms alpha g(d; beta), beta > 0: variable projection -------------------


def _exp_basis(d, beta):
    return -np.expm1(-beta * d)  # 1 - exp(-beta d)


def _log_basis(d, beta):
    return np.log1p(beta * d)  # log(1 + beta d)


def _fit_saturating(basis):
    """Least squares of ``r ~ alpha g(d; beta)`` with ``beta > 0``. For a fixed ``beta`` the best
    ``alpha`` is ``<g, r> / <g, g>`` and ``RSS(beta) = <r, r> - <g, r>^2 / <g, g>``, so only
    ``log beta`` is searched: a log-spaced grid over ``beta max(d)`` in ``[1e-3, 1e3]`` and a
    bounded scalar refinement around the grid's best point. Never raises on a finite curve with
    some ``d > 0``; ``beta`` may end at a bound (a curve linear or a step on the data's range)."""

    def alpha_and_rss(d, r, log_beta):
        g = basis(d, math.exp(log_beta))
        gg = float(g @ g)
        if not gg > 0.0:
            return 0.0, float(r @ r)
        alpha = float(g @ r) / gg
        return alpha, float(np.sum((r - alpha * g) ** 2))

    def fit(d, r):
        scale = float(np.max(d))
        if not scale > 0.0:
            raise ValueError("a saturating fit needs some d > 0")
        grid = np.linspace(math.log(1e-3 / scale), math.log(1e3 / scale), 121)
        rss = [alpha_and_rss(d, r, lb)[1] for lb in grid]
        i = int(np.argmin(rss))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        best = optimize.minimize_scalar(lambda lb: alpha_and_rss(d, r, lb)[1], bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
        log_beta = float(best.x) if best.success and best.fun <= rss[i] else float(grid[i])
        alpha, _ = alpha_and_rss(d, r, log_beta)
        return {"alpha": alpha, "beta": math.exp(log_beta)}

    return fit


FORMS: dict[str, Form] = {
    form.name: form
    for form in (
        Form("gao_bon", "d (alpha - beta d)", 2, _fit_gao("bon"), _predict_gao("bon")),
        Form("gao_rl", "d (alpha - beta log d)", 2, _fit_gao("rl"), _predict_gao("rl")),
        Form("exp_saturation", "alpha (1 - exp(-beta d)), beta > 0", 2, _fit_saturating(_exp_basis), lambda d, p: p["alpha"] * _exp_basis(d, p["beta"])),
        Form("log_saturation", "alpha log(1 + beta d), beta > 0", 2, _fit_saturating(_log_basis), lambda d, p: p["alpha"] * _log_basis(d, p["beta"])),
    )
}


# ---------------------------------------------------------------------------------------------
# Scores


def information_criteria(residuals, num_params: int) -> dict[str, float]:
    """AIC and BIC of a least-squares fit with Gaussian residuals, the noise variance estimated by
    maximum likelihood (``RSS / n``) and counted as a parameter, ``k = num_params + 1``:

        -2 log L = n log(2 pi RSS / n) + n,   AIC = -2 log L + 2 k,   BIC = -2 log L + k log n.

    ``RSS / n`` is floored at the smallest normal float, so an exact fit scores about
    ``-708 n`` rather than ``-inf``."""
    residuals = np.asarray(residuals, dtype=np.float64)
    n = residuals.size
    if residuals.ndim != 1 or n == 0:
        raise ValueError(f"residuals must be a non-empty 1-D array, got shape {residuals.shape}")
    variance = max(float(np.sum(residuals**2)) / n, np.finfo(np.float64).tiny)
    minus_2_log_l = n * math.log(2.0 * math.pi * variance) + n
    k = num_params + 1
    return {"aic": minus_2_log_l + 2.0 * k, "bic": minus_2_log_l + k * math.log(n)}


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its Student-t interval
    ``mean -/+ t_{(1+level)/2, m-1} s / sqrt(m)`` (``s`` the sample standard deviation of the
    ``m`` values). With one value the interval is ``(nan, nan)``; with none everything is nan."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(x))
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2.0, x.size - 1)) * float(np.std(x, ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def _forms(forms) -> dict[str, Form]:
    if forms is None:
        return dict(FORMS)
    if isinstance(forms, Mapping):
        chosen = dict(forms)
    else:
        unknown = [f for f in forms if not isinstance(f, Form) and f not in FORMS]
        if unknown:
            raise ValueError(f"unknown forms {unknown}; use some of {sorted(FORMS)} or Form objects")
        chosen = {(f.name if isinstance(f, Form) else f): (f if isinstance(f, Form) else FORMS[f]) for f in forms}
    if not chosen:
        raise ValueError("need at least one candidate form")
    return chosen


def _check_curve(d, r, d_fit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d, r = scaling.check_curve(d, r)
    if not (isinstance(d_fit, (int, float, np.floating, np.integer)) and math.isfinite(d_fit) and d_fit > 0):
        raise ValueError(f"d_fit must be a finite number > 0, got {d_fit!r}")
    inside = d <= d_fit
    n_fit, n_out = int(inside.sum()), int((~inside).sum())
    if n_fit < MIN_FIT_POINTS or np.unique(d[inside & (d > 0)]).size < 2:
        raise ValueError(
            f"too few points to fit on d <= d_fit = {d_fit:g}: {n_fit} points, "
            f"{np.unique(d[inside & (d > 0)]).size} distinct d > 0 (need {MIN_FIT_POINTS} and 2)"
        )
    if n_out < MIN_HELD_OUT_POINTS:
        raise ValueError(f"too few held-out points with d > d_fit = {d_fit:g}: {n_out} (need {MIN_HELD_OUT_POINTS})")
    return d, r, inside


def fit_and_score(d, r, d_fit: float, forms=None) -> dict[str, dict]:
    """Fit every candidate form on the points with ``d <= d_fit``, and score it (module docstring):

    - ``params``: fitted on ``d <= d_fit``; ``fit_rmse``: its RMSE there;
    - ``held_out_rmse``: its RMSE on ``d > d_fit`` (the extrapolation error, the selection score);
    - ``params_all``, ``aic``, ``bic``, ``r2``: of the form refitted on all points (``r2`` is
      information only).

    ``forms``: names in ``FORMS``, ``Form`` objects, or a ``{name: Form}`` mapping (default all of
    ``FORMS``). A fit that fails (raises, or predicts non-finite values) gives nan scores rather
    than an error. Raises ``ValueError`` for curves of a bad shape or values, with fewer than
    ``MIN_FIT_POINTS`` points (or 2 distinct positive ``d``) at ``d <= d_fit``, or fewer than
    ``MIN_HELD_OUT_POINTS`` beyond it."""
    d, r, inside = _check_curve(d, r, d_fit)
    out = {}
    for name, form in _forms(forms).items():
        nan = {"params": None, "fit_rmse": math.nan, "held_out_rmse": math.nan, "params_all": None, "aic": math.nan, "bic": math.nan, "r2": math.nan}
        try:
            params = form.fit(d[inside], r[inside])
            pred = np.asarray(form.predict(d, params), dtype=np.float64)
            params_all = form.fit(d, r)
            pred_all = np.asarray(form.predict(d, params_all), dtype=np.float64)
        except (ValueError, ArithmeticError, RuntimeError, np.linalg.LinAlgError):
            out[name] = nan
            continue
        if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(pred_all))):
            out[name] = nan
            continue
        out[name] = {
            "params": params,
            "fit_rmse": float(np.sqrt(np.mean((r[inside] - pred[inside]) ** 2))),
            "held_out_rmse": float(np.sqrt(np.mean((r[~inside] - pred[~inside]) ** 2))),
            "params_all": params_all,
            **information_criteria(r - pred_all, form.num_params),
            "r2": scaling.r_squared(r, pred_all),
        }
    return out


def _argmin(scores: Mapping[str, float]) -> str | None:
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    return min(finite, key=finite.get) if finite else None


def select_over_seeds(curves: Sequence, d_fit, forms=None, level: float = 0.95, skip_invalid: bool = False) -> dict:
    """Model selection over several seeds' curves ``[(d, r), ...]`` of one optimiser and proxy.

    ``d_fit``: one number for all curves or one per curve. Every curve is scored by
    ``fit_and_score`` (``forms`` as there). A curve it refuses raises its ``ValueError``, or with
    ``skip_invalid`` is left out and listed in ``skipped`` (a ``ValueError`` still when no curve
    is left). Returns

    - ``held_out_rmse``: per form ``{"mean", "low", "high", "per_seed"}`` (``t_interval`` at
      ``level`` over seeds); ``fit_rmse``, ``aic``, ``bic``, ``r2``: per form the mean and
      ``per_seed`` (``r2`` is information only);
    - ``winner`` / ``runner_up``: the forms with the lowest / second-lowest mean held-out RMSE
      (a form whose fit failed on some seed has a nan mean and cannot place);
    - ``paired``: ``{"winner", "runner_up", "mean", "low", "high", "decided"}`` of the per-seed
      differences ``RMSE_out(runner_up) - RMSE_out(winner)``; ``decided`` when ``low > 0``;
    - ``seed_winners``, ``aic_winners``, ``bic_winners``: per seed the form with the lowest
      held-out RMSE / AIC / BIC; ``seed_winner_counts``, ``aic_winner_counts``,
      ``bic_winner_counts``: how often each form is that;
    - ``num_seeds`` (curves scored), ``kept`` (their indices in ``curves``), ``skipped``
      (``[(index, reason)]``), ``level``, ``d_fit`` and ``extrapolation`` (``max d / d_fit``)
      per scored curve."""
    curves = list(curves)
    if not curves:
        raise ValueError("need at least one curve")
    d_fits = [d_fit] * len(curves) if np.ndim(d_fit) == 0 else list(d_fit)
    if len(d_fits) != len(curves):
        raise ValueError(f"d_fit must be one number or one per curve, got {len(d_fits)} for {len(curves)} curves")
    candidates = _forms(forms)
    scores, kept, skipped = [], [], []
    for i, ((d, r), df) in enumerate(zip(curves, d_fits)):
        try:
            scores.append(fit_and_score(d, r, df, candidates))
            kept.append(i)
        except ValueError as error:
            if not skip_invalid:
                raise
            skipped.append((i, str(error)))
    if not scores:
        raise ValueError(f"no curve could be scored: {skipped[0][1]}")
    curves, d_fits = [curves[i] for i in kept], [d_fits[i] for i in kept]
    per_seed = {key: {f: [s[f][key] for s in scores] for f in candidates} for key in ("held_out_rmse", "fit_rmse", "aic", "bic", "r2")}

    held_out = {}
    for f, values in per_seed["held_out_rmse"].items():
        mean, low, high = t_interval(values, level)
        held_out[f] = {"mean": mean, "low": low, "high": high, "per_seed": values}
    ranked = sorted((f for f in candidates if math.isfinite(held_out[f]["mean"])), key=lambda f: held_out[f]["mean"])
    winner = ranked[0] if ranked else None
    runner_up = ranked[1] if len(ranked) > 1 else None
    paired = {"winner": winner, "runner_up": runner_up, "mean": math.nan, "low": math.nan, "high": math.nan, "decided": False}
    if runner_up is not None:
        diff = np.asarray(per_seed["held_out_rmse"][runner_up]) - np.asarray(per_seed["held_out_rmse"][winner])
        mean, low, high = t_interval(diff, level)
        paired.update(mean=mean, low=low, high=high, decided=bool(math.isfinite(low) and low > 0.0))

    def winners(key):
        return [_argmin({f: per_seed[key][f][s] for f in candidates}) for s in range(len(curves))]

    def counts(names):
        return {f: sum(n == f for n in names) for f in candidates}

    seed_winners, aic_winners, bic_winners = winners("held_out_rmse"), winners("aic"), winners("bic")
    return {
        "num_seeds": len(curves),
        "kept": kept,
        "skipped": skipped,
        "level": level,
        "d_fit": [float(x) for x in d_fits],
        "extrapolation": [float(np.max(np.asarray(d, dtype=np.float64))) / float(x) for (d, _), x in zip(curves, d_fits)],
        "held_out_rmse": held_out,
        **{key: {f: {"mean": float(np.mean(v)), "per_seed": v} for f, v in per_seed[key].items()} for key in ("fit_rmse", "aic", "bic", "r2")},
        "winner": winner,
        "runner_up": runner_up,
        "paired": paired,
        "seed_winners": seed_winners,
        "seed_winner_counts": counts(seed_winners),
        "aic_winners": aic_winners,
        "aic_winner_counts": counts(aic_winners),
        "bic_winners": bic_winners,
        "bic_winner_counts": counts(bic_winners),
    }
