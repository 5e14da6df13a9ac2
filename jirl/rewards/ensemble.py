"""Aggregating an ensemble of reward models (Coste et al. 2024, "Reward model ensembles help
mitigate overoptimization"): ``rewards [members, N] -> [N]``."""

from __future__ import annotations

import jax.numpy as jnp


def aggregate_ensemble(rewards, mode: str = "mean", k: float = 1.0):
    """``mean``: mean over members; ``min``: worst case over members; ``mean_minus_std``:
    uncertainty-weighted ``mean - k * std`` (population std over members)."""
    if mode == "mean":
        return jnp.mean(rewards, axis=0)
    if mode == "min":
        return jnp.min(rewards, axis=0)
    if mode == "mean_minus_std":
        return jnp.mean(rewards, axis=0) - k * jnp.std(rewards, axis=0)
    raise ValueError(f"unknown ensemble aggregation {mode!r}; use 'mean', 'min' or 'mean_minus_std'")
