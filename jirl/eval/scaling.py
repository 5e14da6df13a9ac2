"""Functional forms of reward-model over-optimisation, and their least-squares fits.

Gao, Schulman & Hilton (2022), "Scaling laws for reward model overoptimization", measure the
gold reward ``R`` of a policy optimised against a proxy reward model as a function of

    d = sqrt(KL(pi || pi_init)),

with ``R`` taken relative to the initial policy (``R(0) = 0``), and find two forms:

    best-of-n:  R_bon(d) = d (alpha_bon - beta_bon d)          (their eq. 1)
    RL:         R_RL(d)  = d (alpha_RL  - beta_RL  log d)       (their eq. 2)

Both are linear in (alpha, beta), so each fit is an ordinary least-squares problem without an
intercept. Everything here is plain NumPy on small 1-D arrays (curves of tens to thousands of
points); nothing is jitted.

Public API: ``fit_bon``, ``fit_rl``, ``r_squared``, ``predict``, ``peak``, ``observed_peak``, ``check_curve``.
"""

from __future__ import annotations

import math

import numpy as np

FORMS = ("bon", "rl")


def check_curve(d, r) -> tuple[np.ndarray, np.ndarray]:
    """``d, r`` as float64 arrays, or a ValueError naming what makes them no over-optimisation
    curve: not 1-D, unequal lengths, fewer than 3 points, non-finite values, ``d < 0``, or fewer
    than 2 distinct positive ``d``."""
    d = np.asarray(d, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    if d.ndim != 1 or r.ndim != 1:
        raise ValueError(f"d and r must be 1-D arrays, got shapes {d.shape} and {r.shape}")
    if d.shape != r.shape:
        raise ValueError(f"d and r must have the same length, got {d.shape[0]} and {r.shape[0]}")
    if d.shape[0] < 3:
        raise ValueError(f"a two-parameter fit needs at least 3 points, got {d.shape[0]}")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(r))):
        raise ValueError("d and r must be finite (no nan or inf)")
    if np.any(d < 0):
        raise ValueError(f"d = sqrt(KL) must be >= 0, got min {d.min():g}")
    if np.unique(d[d > 0]).size < 2:
        raise ValueError("need at least 2 distinct positive values of d to identify alpha and beta")
    return d, r


def _d_log_d(d: np.ndarray) -> np.ndarray:
    """``d log d`` with its limit 0 at ``d = 0``."""
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * np.log(safe), 0.0)


def _features(form: str, d: np.ndarray) -> np.ndarray:
    """Columns multiplying (alpha, beta): ``[d, -d^2]`` (bon) or ``[d, -d log d]`` (rl)."""
    if form == "bon":
        return np.stack([d, -d * d], axis=1)
    if form == "rl":
        return np.stack([d, -_d_log_d(d)], axis=1)
    raise ValueError(f"unknown functional form {form!r}; use one of {FORMS}")


def r_squared(y, y_hat) -> float:
    """Coefficient of determination ``R^2 = 1 - SS_res / SS_tot`` with
    ``SS_res = sum (y - y_hat)^2`` and ``SS_tot = sum (y - mean(y))^2``. 1 for a perfect fit, 0
    for the constant mean, negative for a fit worse than the mean; nan when ``y`` is constant."""
    y = np.asarray(y, dtype=np.float64)
    y_hat = np.asarray(y_hat, dtype=np.float64)
    if y.shape != y_hat.shape:
        raise ValueError(f"y and y_hat must have the same shape, got {y.shape} and {y_hat.shape}")
    if y.size == 0:
        raise ValueError("r_squared of an empty array")
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum((y - y_hat) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan


def predict(form: str, d, alpha: float, beta: float) -> np.ndarray:
    """The fitted curve ``d (alpha - beta d)`` (bon) or ``d (alpha - beta log d)`` (rl)."""
    d = np.asarray(d, dtype=np.float64)
    return _features(form, d) @ np.array([alpha, beta])


def _fit(form: str, d, r) -> dict[str, float]:
    d, r = check_curve(d, r)
    features = _features(form, d)
    (alpha, beta), *_ = np.linalg.lstsq(features, r, rcond=None)
    return {"alpha": float(alpha), "beta": float(beta), "r2": r_squared(r, features @ np.array([alpha, beta]))}


def fit_bon(d, r) -> dict[str, float]:
    """Least-squares fit of the best-of-n form of Gao et al. (2022, eq. 1),

        R_bon(d) = d (alpha - beta d) = alpha d - beta d^2,

    i.e. linear regression of ``r`` on the features ``d`` and ``-d^2`` without an intercept.
    Returns ``{"alpha", "beta", "r2"}``."""
    return _fit("bon", d, r)


def fit_rl(d, r) -> dict[str, float]:
    """Least-squares fit of the RL form of Gao et al. (2022, eq. 2),

        R_RL(d) = d (alpha - beta log d) = alpha d - beta d log d,

    i.e. linear regression of ``r`` on the features ``d`` and ``-d log d`` (0 at ``d = 0``)
    without an intercept. Returns ``{"alpha", "beta", "r2"}``."""
    return _fit("rl", d, r)


def peak(form: str, alpha: float, beta: float) -> float:
    """The ``d`` at which a fitted curve peaks (Gao et al. 2022), from ``dR/dd = 0``:

        bon: alpha - 2 beta d = 0          ->  d* = alpha / (2 beta)
        rl:  alpha - beta (log d + 1) = 0  ->  d* = exp(alpha / beta - 1)

    ``math.inf`` when ``beta <= 0`` (the curve never turns over). For ``bon`` with
    ``alpha <= 0 < beta`` the curve only falls on ``d >= 0`` and the peak is at ``d = 0``."""
    if form not in FORMS:
        raise ValueError(f"unknown functional form {form!r}; use one of {FORMS}")
    if beta <= 0:
        return math.inf
    if form == "bon":
        return max(alpha / (2.0 * beta), 0.0)
    return math.exp(alpha / beta - 1.0)


def observed_peak(d, r) -> tuple[float, float]:
    """``(d, r)`` at the maximum of an observed curve (the first one on ties)."""
    d = np.asarray(d, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    if d.shape != r.shape or d.ndim != 1 or d.size == 0:
        raise ValueError(f"d and r must be non-empty 1-D arrays of one length, got {d.shape} and {r.shape}")
    i = int(np.argmax(r))
    return float(d[i]), float(r[i])
