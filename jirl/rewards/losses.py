"""Reward-model objectives: learning a reward from preferences is inverse RL (Sun & van der
Schaar 2025). Each pairwise loss maps rewards of the chosen and rejected responses ``[B]`` to a
per-pair loss ``[B]``; ``preference_objective`` turns one into a ``loss_fn`` for the update step.

Registered by name in ``PAIRWISE_LOSSES`` (``bt``, ``classification``, ``hinge``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jirl.registry import Registry
from jirl.train.losses import LossOutput, token_mean

PairwiseLoss = Callable[..., jax.Array]
PAIRWISE_LOSSES: Registry[PairwiseLoss] = Registry("pairwise reward loss")


@PAIRWISE_LOSSES.register("bt")
def bradley_terry_loss(r_chosen, r_rejected, margin=0.0):
    """Bradley-Terry negative log-likelihood (Bradley & Terry 1952; Ouyang et al. 2022):

        l = -log sigma(r(x, y+) - r(x, y-) - m) = softplus(-(r+ - r- - m))

    with an optional per-pair margin ``m`` (Llama 2 style). Only reward differences are
    identified, so the fitted rewards are defined up to a per-prompt constant.
    """
    return jax.nn.softplus(-(r_chosen - r_rejected - margin))


@PAIRWISE_LOSSES.register("classification")
def classification_loss(r_chosen, r_rejected, margin=0.0):
    """Order-consistent classification reward model (Sun et al., ICLR 2025, "Rethinking
    Bradley-Terry models in preference-based reward modeling"): binary cross-entropy that
    labels every chosen response 1 and every rejected one 0, with sigma(r) as the probability:

        l = -log sigma(r(x, y+)) - log(1 - sigma(r(x, y-))) = softplus(-r+) + softplus(r-)

    ``margin`` is accepted for a uniform signature and ignored.
    """
    del margin
    return jax.nn.softplus(-r_chosen) + jax.nn.softplus(r_rejected)


@PAIRWISE_LOSSES.register("hinge")
def hinge_loss(r_chosen, r_rejected, margin=1.0):
    """Pairwise hinge (ranking SVM; SLiC, Zhao et al. 2023): l = max(0, m - (r+ - r-))."""
    return jnp.maximum(0.0, margin - (r_chosen - r_rejected))


def centering_penalty(r_chosen, r_rejected, coefficient: float):
    """Reward centring (Eisenstein et al. 2023): ``c (r+ + r-)^2`` pins the free constant of the
    BT reward near zero without changing which pair wins."""
    return coefficient * (r_chosen + r_rejected) ** 2


def preference_objective(
    reward_fn: Callable, loss: str = "bt", centering: float = 0.0, margin_key: str | None = "margin"
):
    """``loss_fn(params, batch, key)`` for a sequence reward model on preference pairs.

    ``reward_fn(params, tokens [B, L], lengths [B]) -> [B]``. Batch: ``chosen``/``rejected``
    buffers ``[B, L]``, ``prompt_len``, ``chosen_len``, ``rejected_len`` (and ``margin``). The
    loss is the mean over pairs of ``PAIRWISE_LOSSES[loss]`` plus the optional centring term.
    """
    pairwise = PAIRWISE_LOSSES.get(loss)

    def loss_fn(params, batch, key):
        del key
        r_chosen = reward_fn(params, batch["chosen"], batch["prompt_len"] + batch["chosen_len"])
        r_rejected = reward_fn(params, batch["rejected"], batch["prompt_len"] + batch["rejected_len"])
        margin = batch[margin_key] if margin_key and margin_key in batch else 0.0
        per_pair = pairwise(r_chosen, r_rejected, margin)
        if centering:
            per_pair = per_pair + centering_penalty(r_chosen, r_rejected, centering)
        accuracy = jnp.mean((r_chosen > r_rejected) + 0.5 * (r_chosen == r_rejected))
        return LossOutput(total=jnp.sum(per_pair), count=jnp.asarray(per_pair.shape[0], per_pair.dtype)), {
            "accuracy": accuracy,
            "reward_gap": jnp.mean(r_chosen - r_rejected),
        }

    return loss_fn


# ---------------------------------------------------------------------------- process rewards


def step_label_loss(token_rewards, step_labels, mask):
    """Process reward model from per-step labels (Lightman et al. 2023, "Let's verify step by
    step"): each labelled step t is a binary classification with P(step good) = sigma(r_t),

        L = sum_{b,t} m_bt BCE(sigma(r_bt), z_bt) / sum_{b,t} m_bt.
    """
    per_token = jax.nn.softplus(-token_rewards) * step_labels + jax.nn.softplus(token_rewards) * (1 - step_labels)
    return token_mean(per_token, mask)


def outcome_decomposition_loss(token_rewards, mask, outcome, kind: str = "mse"):
    """Token-level rewards from outcome labels only: the sequence score is the sum of the
    per-token rewards, R_hat_b = sum_t m_bt r_bt, fitted to the outcome (return decomposition,
    Arjona-Medina et al. 2019; Cui et al. 2025 use the BCE form for implicit PRMs):

        mse: L = mean_b (R_hat_b - R_b)^2
        bce: L = mean_b BCE(sigma(R_hat_b), R_b),  R_b in {0, 1}.
    """
    total = jnp.sum(token_rewards * mask, axis=-1)
    if kind == "mse":
        per_sequence = (total - outcome) ** 2
    elif kind == "bce":
        per_sequence = jax.nn.softplus(-total) * outcome + jax.nn.softplus(total) * (1 - outcome)
    else:
        raise ValueError(f"unknown outcome loss kind {kind!r}; use 'mse' or 'bce'")
    return LossOutput(total=jnp.sum(per_sequence), count=jnp.asarray(per_sequence.shape[0], per_sequence.dtype))
