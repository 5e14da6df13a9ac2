"""Run an optimiser to a tolerance, not a step count.

A test that asserts "after 200 steps the loss equals its minimum" passes on the machine it was
tuned on and fails on another whose float rounding takes a slower path. These helpers iterate
until the objective stops improving (a stated tolerance over a stated window) and fail loudly
when that does not happen within a generous budget, so a convergence test checks the optimum,
not the speed of one trajectory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class NotConverged(AssertionError):
    """The optimiser was still improving when the step budget ran out."""


def iterate_to_convergence(
    step: Callable[[Any], tuple[Any, float]],
    state: Any,
    *,
    tol: float,
    window: int = 100,
    max_steps: int = 20_000,
) -> tuple[Any, float, int]:
    """Call ``state, loss = step(state)`` until the best loss has improved by less than ``tol``
    over the last ``window`` calls; return ``(state, last loss, steps taken)``.

    Raises ``NotConverged`` (an AssertionError, so the test fails with the numbers) when
    ``max_steps`` pass first.
    """
    best_at_window_start = float("inf")
    best = float("inf")
    for count in range(1, max_steps + 1):
        state, loss = step(state)
        best = min(best, float(loss))
        if count % window == 0:
            if best_at_window_start - best < tol:
                return state, float(loss), count
            best_at_window_start = best
    raise NotConverged(
        f"still improving after {max_steps} steps (best loss {best:.6g}, improvement over the last {window} "
        f"steps {best_at_window_start - best:.3g} >= tol {tol:g})"
    )
