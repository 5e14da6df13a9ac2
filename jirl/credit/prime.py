"""PRIME's implicit process reward model (Cui et al. 2025, "Process reinforcement through
implicit rewards").

The PRM is a language model ``pi_phi`` (initialised from the reference) whose token rewards are
the log-ratio to the frozen reference,

    r^phi_t = beta log pi_phi(y_t | y_<t) / pi_ref(y_t | y_<t),

trained *online*, on the policy's own samples, from outcome labels ``l in [0, 1]`` only, by
cross-entropy on the summed implicit reward (the outcome-reward-model objective):

    L(phi) = -E[ l log sigma(sum_t r^phi_t) + (1 - l) log(1 - sigma(sum_t r^phi_t)) ].

Its token rewards then give dense credit (``jirl.credit.schemes.implicit_process_credit``)
although it never saw a per-step label.
"""

from __future__ import annotations

import jax.numpy as jnp

from jirl.models.scoring import response_log_probs, response_mask
from jirl.rewards.losses import outcome_decomposition_loss


def prime_process_rewards(graphdef, prm_params, reference_log_probs, tokens, prompt_lens, response_lens, horizon: int, beta: float):
    """``[B, horizon]`` implicit process rewards ``beta (log pi_phi - log pi_ref)`` (0 past each
    response). ``reference_log_probs`` are the frozen reference's response log-probs."""
    log_probs = response_log_probs(graphdef, prm_params, tokens, prompt_lens, horizon)
    return jnp.where(response_mask(response_lens, horizon), beta * (log_probs - reference_log_probs), 0.0)


def prime_loss(graphdef, horizon: int, beta: float):
    """``loss_fn(params, batch, key)`` of the implicit PRM: the cross-entropy above, averaged
    over sequences. ``batch``: ``tokens``, ``prompt_len``, ``response_len``, ``ref_log_probs``
    ``[B, horizon]`` and ``labels [B]`` in [0, 1]."""

    def loss_fn(params, batch, key):
        del key
        rewards = prime_process_rewards(
            graphdef, params, batch["ref_log_probs"], batch["tokens"], batch["prompt_len"], batch["response_len"], horizon, beta
        )
        mask = response_mask(batch["response_len"], horizon)
        loss = outcome_decomposition_loss(rewards, mask, batch["labels"], kind="bce")
        predicted = jnp.sum(rewards, axis=1) > 0
        return loss, {"prm_accuracy": jnp.mean(predicted == (batch["labels"] > 0.5))}

    return loss_fn


def group_relative_labels(returns, group_size: int):
    """Binary outcome labels for a continuous reward: 1 for a response that beats the mean
    return of its group (``group_size`` consecutive responses to one prompt), else 0. A
    verifier's 0/1 reward needs no conversion."""
    grouped = returns.reshape(-1, group_size)
    return (grouped > jnp.mean(grouped, axis=1, keepdims=True)).astype(jnp.float32).reshape(-1)
