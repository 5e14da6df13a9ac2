"""Policy-optimisation losses as per-token terms.

Every function here maps response-aligned ``[B, T]`` arrays (``jirl.models.scoring``) to
per-token loss terms ``[B, T]`` (plus diagnostics); ``aggregate`` then reduces the terms
with a *named* aggregation into a ``LossOutput`` (sum and count, DESIGN.md contract 2):

    token_mean     sum_{b,t} m_bt l_bt / sum_{b,t} m_bt            (DAPO, Dr. GRPO style)
    sequence_mean  mean_b  (sum_t m_bt l_bt / sum_t m_bt)           (GRPO / GSPO style)
    sequence_sum   mean_b   sum_t m_bt l_bt                         (REINFORCE on log pi(y|x))

Conventions: ``log_probs`` are log pi_theta(a_t|s_t) of the sampled tokens (differentiated),
``old_log_probs`` those of the behaviour policy that sampled them and ``advantages`` the
estimates A_t; both of the latter are treated as constants (``stop_gradient``). Terms are
*losses*: minimise them.

``POLICY_LOSSES`` registers the policy objectives by name (``ppo``, ``pg``, ``gspo``). Each
takes ``(log_probs, old_log_probs, advantages, mask)`` and then exactly its own options as
keyword-only parameters with defaults (``ppo``: ``clip_low``, ``clip_high``, ``dual_clip``;
``gspo``: ``clip_low``, ``clip_high``; ``pg``: none), and returns ``(terms [B, T], metrics)``.
The adapter ``policy_loss_fn(name, options)`` checks the options (a misspelt one is a
``ConfigError`` naming the valid ones) and returns ``f(log_probs, old_log_probs, advantages,
mask)``; the RL loop sets the options from ``RLConfig.policy_loss_options``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jirl.registry import Registry
from jirl.train.losses import AGGREGATIONS, LossOutput, token_mean

sg = jax.lax.stop_gradient


# ---------------------------------------------------------------------------------------------
# Per-token terms
# ---------------------------------------------------------------------------------------------


def importance_ratio(log_probs: jax.Array, old_log_probs: jax.Array) -> jax.Array:
    """``rho_t = pi_theta(a_t|s_t) / pi_old(a_t|s_t) = exp(log pi_theta - log pi_old)``."""
    return jnp.exp(log_probs - sg(old_log_probs))


def ppo_clip_terms(
    log_probs: jax.Array,
    old_log_probs: jax.Array,
    advantages: jax.Array,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Clipped surrogate (PPO, Schulman et al. 2017, "Proximal Policy Optimization
    Algorithms"), with the decoupled "clip-higher" range of DAPO (Yu et al. 2025):

        rho_t = exp(log pi_theta(a_t|s_t) - log pi_old(a_t|s_t)),
        l_t   = -min(rho_t A_t, clip(rho_t, 1 - clip_low, 1 + clip_high) A_t).

    Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL"): for
    ``A_t < 0`` the loss is also capped, ``l_t = min(l_t, -dual_clip * A_t)`` (``dual_clip > 1``),
    so a token whose ratio has run far above 1 cannot dominate the batch.

    Gradient: ``dl_t / d log pi = -A_t rho_t`` where the unclipped branch is active, 0 where a
    clip is.

    Returns ``(terms [B, T], clipped [B, T])``, ``clipped`` being 1.0 where a clip (PPO or
    dual) is active, i.e. where the token's gradient is zero.
    """
    advantages = sg(advantages)
    ratio = importance_ratio(log_probs, old_log_probs)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    terms = -jnp.minimum(unclipped, clipped)
    is_clipped = clipped < unclipped
    if dual_clip is not None:
        cap = -dual_clip * advantages
        is_dual_clipped = (advantages < 0) & (terms > cap)
        terms = jnp.where(advantages < 0, jnp.minimum(terms, cap), terms)
        is_clipped = is_clipped | is_dual_clipped
    return terms, is_clipped.astype(terms.dtype)


def policy_gradient_terms(log_probs: jax.Array, advantages: jax.Array) -> jax.Array:
    """REINFORCE surrogate (Williams 1992): ``l_t = -A_t log pi_theta(a_t|s_t)``, whose gradient
    ``-A_t grad log pi`` is the on-policy policy gradient."""
    return -sg(advantages) * log_probs


def gspo_terms(
    log_probs: jax.Array,
    old_log_probs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[jax.Array, jax.Array]:
    """Group Sequence Policy Optimisation (Zheng et al. 2025, "Group Sequence Policy
    Optimization"): a length-normalised *sequence* ratio

        s_b = (pi_theta(y_b|x_b) / pi_old(y_b|x_b))^(1/|y_b|)
            = exp((1/|y_b|) sum_t m_bt (log pi_theta - log pi_old)_bt),

    clipped once per sequence with the sequence advantage A_b:

        l_b = -min(s_b A_b, clip(s_b, 1 - clip_low, 1 + clip_high) A_b).

    ``A_b`` is the mean of ``advantages`` over the sequence's valid tokens, which is the
    sequence advantage itself when it is broadcast over tokens (GRPO outcome advantages) and
    a length-average otherwise. The default ranges are the paper's (3e-4, 4e-4): a sequence
    ratio is a geometric mean and moves much less than token ratios.

    ``l_b`` is broadcast to every token of sequence ``b`` (``[B, T]``) so it aggregates like
    the token losses: ``sequence_mean`` gives the paper's ``(1/G) sum_b l_b``; ``token_mean``
    weights sequences by length. Gradients flow through the mean of the log-ratios:
    ``dl_b / d log pi_bt = -A_b s_b m_bt / |y_b|`` when unclipped, 0 when clipped.

    Returns ``(terms [B, T], clipped [B, T])`` (the per-sequence clip indicator, broadcast).
    Fully masked rows give ``s_b = 1``, ``A_b = 0`` and zero loss.
    """
    mask = mask.astype(bool)
    weights = mask.astype(log_probs.dtype)
    lengths = jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
    log_ratio = jnp.where(mask, log_probs - sg(old_log_probs), 0.0)
    sequence_ratio = jnp.exp(jnp.sum(log_ratio, axis=-1) / lengths)
    sequence_advantage = jnp.sum(jnp.where(mask, sg(advantages), 0.0), axis=-1) / lengths
    unclipped = sequence_ratio * sequence_advantage
    clipped = jnp.clip(sequence_ratio, 1.0 - clip_low, 1.0 + clip_high) * sequence_advantage
    per_sequence = -jnp.minimum(unclipped, clipped)
    is_clipped = (clipped < unclipped).astype(log_probs.dtype)
    shape = log_probs.shape
    return jnp.broadcast_to(per_sequence[:, None], shape), jnp.broadcast_to(is_clipped[:, None], shape)


def clipped_value_terms(
    values: jax.Array, old_values: jax.Array, returns: jax.Array, clip: float | None = 0.2
) -> tuple[jax.Array, jax.Array]:
    """Clipped value loss of PPO (OpenAI baselines, Dhariwal et al. 2017; studied in Engstrom
    et al. 2020, "Implementation Matters in Deep Policy Gradients"):

        V^clip_t = V_old,t + clip(V_t - V_old,t, -c, c),
        l_t      = 1/2 max((V_t - R_t)^2, (V^clip_t - R_t)^2).

    ``clip=None`` gives the plain ``1/2 (V_t - R_t)^2``. ``old_values`` and ``returns`` are
    constants. Returns ``(terms [B, T], clipped [B, T])``, ``clipped`` being 1.0 where the
    clipped branch is strictly larger (the gradient is then zero).
    """
    old_values, returns = sg(old_values), sg(returns)
    unclipped = jnp.square(values - returns)
    if clip is None:
        return 0.5 * unclipped, jnp.zeros_like(unclipped)
    clipped_values = old_values + jnp.clip(values - old_values, -clip, clip)
    clipped = jnp.square(clipped_values - returns)
    return 0.5 * jnp.maximum(unclipped, clipped), (clipped > unclipped).astype(unclipped.dtype)


def entropy_terms(logits: jax.Array) -> jax.Array:
    """Per-token entropy of the policy ``H_t = -sum_a pi(a|s_t) log pi(a|s_t)`` from logits
    ``[B, T, V]`` -> ``[B, T]``. An entropy bonus adds ``-coef * H_t`` to the loss terms.

    Computed in at least float32; ``-inf`` logits (masked vocabulary) contribute 0 to the
    value and to the gradient.
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    log_p = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(log_p)
    safe_log_p = jnp.where(p > 0, log_p, 0.0)
    return -jnp.sum(p * safe_log_p, axis=-1)


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


def aggregate(terms: jax.Array, mask: jax.Array, mode: str = "token_mean") -> LossOutput:
    """Reduce per-token terms ``[B, T]`` to a ``LossOutput`` with a named aggregation of
    ``jirl.train.losses.AGGREGATIONS`` (``token_mean``, ``sequence_mean``, ``sequence_sum``).

    Masked terms are replaced by 0 first, so non-finite values at padding cannot leak in.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; known: {', '.join(sorted(AGGREGATIONS))}")
    return AGGREGATIONS[mode](jnp.where(mask, terms, 0.0), mask)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Token mean of a diagnostic over valid tokens (no gradient; 0 if nothing is valid)."""
    return token_mean(sg(x), mask).value


# ---------------------------------------------------------------------------------------------
# Registered policy objectives: (log_probs, old_log_probs, advantages, mask, *, options)
#                                -> (terms [B, T], metrics)
# ---------------------------------------------------------------------------------------------

PolicyLoss = Callable[..., tuple[jax.Array, dict]]
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


def _pad_safe(log_probs, old_log_probs, advantages, mask):
    """At padding set ``old_log_probs = sg(log_probs)`` (ratio 1) and ``advantages = 0`` so
    garbage there gives finite terms and exactly zero gradient."""
    mask = mask.astype(bool)
    old_log_probs = jnp.where(mask, old_log_probs, sg(log_probs))
    advantages = jnp.where(mask, advantages, 0.0)
    return old_log_probs, advantages, mask


def _ratio_metrics(log_probs, old_log_probs, mask) -> dict:
    """Mean ratio and ``k3`` estimate of KL(pi_old || pi_theta) on the behaviour samples."""
    log_ratio = log_probs - old_log_probs
    ratio = jnp.exp(log_ratio)
    return {
        "ratio_mean": masked_mean(ratio, mask),
        "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
    }


@POLICY_LOSSES.register("ppo")
def ppo_policy_loss(log_probs, old_log_probs, advantages, mask, *, clip_low=0.2, clip_high=0.2, dual_clip=None):
    """``ppo_clip_terms`` under the common signature; metrics: token fraction clipped, mean
    ratio, approximate KL to the behaviour policy."""
    old_log_probs, advantages, mask = _pad_safe(log_probs, old_log_probs, advantages, mask)
    terms, clipped = ppo_clip_terms(log_probs, old_log_probs, advantages, clip_low, clip_high, dual_clip)
    return terms, {"clip_fraction": masked_mean(clipped, mask), **_ratio_metrics(log_probs, old_log_probs, mask)}


@POLICY_LOSSES.register("pg")
def pg_policy_loss(log_probs, old_log_probs, advantages, mask):
    """``policy_gradient_terms`` under the common signature (``old_log_probs`` only feeds the
    ratio diagnostics: on-policy they should be 1 and 0)."""
    old_log_probs, advantages, mask = _pad_safe(log_probs, old_log_probs, advantages, mask)
    return policy_gradient_terms(log_probs, advantages), _ratio_metrics(log_probs, old_log_probs, mask)


@POLICY_LOSSES.register("gspo")
def gspo_policy_loss(log_probs, old_log_probs, advantages, mask, *, clip_low=3e-4, clip_high=4e-4):
    """``gspo_terms`` under the common signature; ``clip_fraction`` is the fraction of
    non-empty *sequences* clipped. Aggregate with ``sequence_mean`` for the paper's loss."""
    old_log_probs, advantages, mask = _pad_safe(log_probs, old_log_probs, advantages, mask)
    terms, clipped = gspo_terms(log_probs, old_log_probs, advantages, mask, clip_low, clip_high)
    metrics = {
        "clip_fraction": AGGREGATIONS["sequence_mean"](sg(clipped), mask).value,
        **_ratio_metrics(log_probs, old_log_probs, mask),
    }
    return terms, metrics


def policy_loss_fn(name: str, options: Mapping[str, Any] | None = None) -> Callable[..., tuple[jax.Array, dict]]:
    """The policy loss registered as ``name`` with its ``options`` (e.g. ``{"clip_low": 0.1,
    "dual_clip": 3.0}`` for ``ppo``), as ``f(log_probs, old_log_probs, advantages, mask) ->
    (terms [B, T], metrics)``. Options are checked now: an unknown one is a ``ConfigError``
    naming the loss's options and the closest one."""
    return POLICY_LOSSES.bind(name, options)
