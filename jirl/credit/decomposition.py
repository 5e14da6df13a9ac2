"""Randomised return decomposition (Ren et al. 2022, "Learning long-term reward redistribution
via randomized return decomposition").

A token reward model ``r_hat`` learns from sequence returns only: the return of a response is
regressed on a rescaled sum of the predicted rewards of a random subset ``I`` of its steps,

    L = E_b E_I [ (R_b - (T_b / |I|) sum_{t in I} r_hat_{b,t})^2 ],   |I| = min(K, T_b),

which is a Monte-Carlo estimate of the full return-decomposition loss (RUDDER, Arjona-Medina et
al. 2019, regresses on every prefix instead) that scales to long horizons. The learned token
rewards become dense credit through ``jirl.credit.schemes.return_decomposition``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jirl.credit.models import token_rewards
from jirl.models.scoring import response_mask
from jirl.train.losses import LossOutput


def random_step_subsets(key, mask, subset_size: int):
    """``[B, T]`` bool: a uniformly random subset of ``min(subset_size, T_b)`` valid steps per row."""
    noise = jax.random.uniform(key, mask.shape)
    noise = jnp.where(mask, noise, 2.0)  # invalid steps sort last
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return (ranks < subset_size) & mask


def randomized_decomposition_loss(predicted, mask, returns, key, subset_size: int) -> LossOutput:
    """The loss above over a batch (sum and count of sequences). ``predicted [B, T]``, ``mask
    [B, T]``, ``returns [B]``."""
    mask = mask > 0
    subset = random_step_subsets(key, mask, subset_size)
    lengths = jnp.sum(mask, axis=1)
    scale = lengths / jnp.maximum(jnp.minimum(lengths, subset_size), 1)
    estimate = scale * jnp.sum(jnp.where(subset, predicted, 0.0), axis=1)
    per_sequence = jnp.where(lengths > 0, (returns - estimate) ** 2, 0.0)
    return LossOutput(total=jnp.sum(per_sequence), count=jnp.sum(lengths > 0).astype(per_sequence.dtype))


def decomposition_loss(graphdef, horizon: int, subset_size: int = 8):
    """``loss_fn(params, batch, key)`` for a ``TokenRewardModel``; ``batch``: ``tokens``,
    ``prompt_len``, ``response_len``, ``returns [B]``."""

    def loss_fn(params, batch, key):
        predicted = token_rewards(graphdef, params, batch["tokens"], batch["prompt_len"], horizon)
        mask = response_mask(batch["response_len"], horizon)
        return randomized_decomposition_loss(predicted, mask, batch["returns"], key, subset_size), {}

    return loss_fn
