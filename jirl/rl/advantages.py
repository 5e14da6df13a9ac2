"""Advantage estimators for policy optimisation on token-level rewards.

Every estimator maps per-token rewards to per-token advantages. Each takes exactly what its
equation needs (rlax style), ``rewards, mask`` and then keyword-only inputs and options::

    gae(rewards, mask, *, values, gamma=1.0, lam=1.0)
    grpo(rewards, mask, *, group_ids, eps=1e-6, num_groups=None)

The RL loop picks one by name from ``ADVANTAGES`` (DESIGN.md contract 10) through the one
adapter ``advantage_fn``, which owns the shared signature and passes each estimator only the
inputs it declares::

    estimate = advantage_fn(name, options)   # options checked here: a misspelt one is an error
    advantages = estimate(rewards, mask, *, group_ids=None, values=None, gamma=1.0, lam=1.0,
                          baseline_rewards=None, baseline_mask=None)

Inputs (``ADVANTAGES.inputs``) come from the loop: ``group_ids``, ``values``, ``gamma``,
``lam``, ``baseline_rewards``, ``baseline_mask``. Every other keyword-only parameter is an
option (``eps``, ``num_groups``), set from ``RLConfig.advantage_options``.

Shapes and conventions:

* ``rewards [B, T]``: dense per-token rewards. A sparse (sequence-level) reward is the special
  case that is zero except at the last valid step (contract 4); there is no separate code path.
* ``mask [B, T]``: 1 (or True) on valid response steps, a prefix of each row. Entries beyond the
  mask are ignored with ``jnp.where``, so padding may hold anything, even NaN.
* ``values [B, T]``: critic estimates ``V(s_t)`` (GAE only).
* ``group_ids [B]``: integer ids; responses to the same prompt share one (RLOO, GRPO, Dr. GRPO).
  Ids may be any integers (negative, non-contiguous).
* ``baseline_rewards [B, T]``: rewards of a greedy rollout for the same prompt (ReMax).
* ``num_groups`` (group estimators): ``None`` (default) accepts arbitrary integer ids and
  relabels them inside jit with a fixed-size ``jnp.unique``; an int uses the ids directly as
  segment indices in ``[0, num_groups)`` (checked eagerly on concrete ids).
* The result is ``advantages [B, T]``, exactly 0 where ``mask`` is 0.

Rows with no valid step (``mask`` all zero: padding rows) get zero advantages and are left out
of every statistic (group means and standard deviations, batch means), so padding a batch to a
device-divisible size does not change the other rows' advantages.

Sequence-level estimators (RLOO, ReMax, GRPO, Dr. GRPO) use the undiscounted sequence return
``R_b = sum_t r_bt`` and give every valid token of a sequence the same advantage; they do not
take ``gamma`` or ``lam``. Estimators are pure ``jnp`` functions, jittable and
vmappable; advantages are meant to be treated as constants by the loss (``lax.stop_gradient``).
Each public estimator validates its inputs (shapes always; group ids when concrete) and then
calls a jitted core, so eager calls compile once per shape and calls inside a caller's ``jit``
inline the core. Use ``check_rewards`` eagerly on concrete rewards before training on them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jirl.checks import is_concrete
from jirl.registry import Registry

Array = jax.Array
AdvantageEstimator = Callable[..., Array]

ADVANTAGES: Registry[AdvantageEstimator] = Registry(
    "advantage estimator",
    inputs=("group_ids", "values", "gamma", "lam", "baseline_rewards", "baseline_mask"),
    input_help={
        "values": "GAE needs a critic (values [B, T] of V(s_t))",
        "group_ids": "group estimators need group_ids [B] (one id per prompt)",
        "baseline_rewards": "ReMax needs the greedy rollout's rewards",
    },
)

DEFAULT_EPS = 1e-6


# ----------------------------------------------------------------------------------------------
# Input checks (eager; shapes are static, values only when concrete)
# ----------------------------------------------------------------------------------------------


def check_rewards(rewards, mask) -> None:
    """Raise ``ValueError`` naming the samples whose rewards are NaN or infinite on a valid step.

    Steps where ``mask`` is 0 are not inspected (padding may hold anything). Does nothing on
    tracers, where values cannot be read; call it on concrete arrays before the update step.
    """
    if not (is_concrete(rewards) and is_concrete(mask)):
        return
    rewards_np = np.asarray(rewards)
    mask_np = np.asarray(mask)
    if rewards_np.shape != mask_np.shape:
        raise ValueError(f"rewards shape {rewards_np.shape} differs from mask shape {mask_np.shape}")
    bad = (mask_np > 0) & ~np.isfinite(rewards_np.astype(np.float64))
    if bad.any():
        samples = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=-1)).tolist()
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"rewards are NaN or infinite on valid steps of samples {samples} (first at index "
            f"{first}: {rewards_np[first]}); check the reward model or verifier output for these "
            f"samples before computing advantages"
        )


def _check_inputs(rewards, mask, **same_shape) -> None:
    """Rewards are ``[B, T]`` and ``mask`` and every non-None array in ``same_shape`` match them."""
    if jnp.ndim(rewards) != 2:
        raise ValueError(f"rewards must have shape [batch, time], got {jnp.shape(rewards)}")
    for name, array in {"mask": mask, **same_shape}.items():
        if array is not None and jnp.shape(array) != jnp.shape(rewards):
            raise ValueError(f"{name} shape {jnp.shape(array)} differs from rewards shape {jnp.shape(rewards)}")


def _require(value, name: str, estimator: str):
    if value is None:
        raise ValueError(f"advantage estimator {estimator!r} needs {name}=..., got None")
    return value


def _check_group_ids(group_ids, batch: int, num_groups: int | None, estimator: str) -> tuple[Array, int | None]:
    """Validate ``group_ids [B]`` (integers; in ``[0, num_groups)`` when ``num_groups`` is given)."""
    group_ids = jnp.asarray(_require(group_ids, "group_ids", estimator))
    if group_ids.shape != (batch,):
        raise ValueError(f"group_ids must have shape [batch] = ({batch},), got {group_ids.shape}")
    if not jnp.issubdtype(group_ids.dtype, jnp.integer):
        raise TypeError(f"group_ids must be integers, got dtype {group_ids.dtype}")
    if num_groups is not None:
        num_groups = int(num_groups)  # static: one compilation per value
    if num_groups is not None and is_concrete(group_ids):
        ids = np.asarray(group_ids)
        bad = np.flatnonzero((ids < 0) | (ids >= num_groups))
        if bad.size:
            raise ValueError(
                f"group_ids must lie in [0, num_groups={num_groups}) when num_groups is given; samples "
                f"{bad.tolist()} have ids {ids[bad].tolist()}. Pass num_groups=None to accept arbitrary "
                f"integer ids"
            )
    return group_ids, num_groups


# ----------------------------------------------------------------------------------------------
# Building blocks (traceable; used inside the jitted cores)
# ----------------------------------------------------------------------------------------------


def _float_dtype(x: Array):
    """At least float32, so low-precision rewards are not accumulated in bf16/fp16."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _masked_rewards(rewards, mask) -> tuple[Array, Array]:
    """``(rewards as float, 0 outside the mask; valid = mask > 0)``; padding may hold NaN."""
    valid = mask > 0
    return jnp.where(valid, rewards.astype(_float_dtype(rewards)), 0), valid


def _next_step_valid(valid: Array) -> Array:
    """``valid[:, t + 1]`` (False after the last column)."""
    return jnp.pad(valid[:, 1:], ((0, 0), (0, 1)), constant_values=False)


def discounted_reverse_cumsum(values: Array, discounts: Array) -> Array:
    """``y_t = x_t + d_t y_{t+1}`` with ``y_T = 0``, along the last axis, by a reverse ``lax.scan``.

    ``values`` and ``discounts`` have shape ``[..., T]``; ``d_t`` discounts the step *after* t,
    so ``d_t = 0`` ends the episode at t.
    """
    values, discounts = jnp.broadcast_arrays(values, discounts.astype(values.dtype))

    def step(next_total, inputs):
        value_t, discount_t = inputs
        total_t = value_t + discount_t * next_total
        return total_t, total_t

    init = jnp.zeros(values.shape[:-1], values.dtype)
    _, totals = lax.scan(step, init, (jnp.moveaxis(values, -1, 0), jnp.moveaxis(discounts, -1, 0)), reverse=True)
    return jnp.moveaxis(totals, 0, -1)


def _reward_to_go(rewards, valid, gamma) -> Array:
    discounts = gamma * _next_step_valid(valid).astype(rewards.dtype)
    return jnp.where(valid, discounted_reverse_cumsum(rewards, discounts), 0)


def _broadcast_to_tokens(per_sequence: Array, valid: Array) -> Array:
    return jnp.where(valid, per_sequence[:, None], 0).astype(per_sequence.dtype)


def _centre_and_spread(
    x: Array,
    member: Array,
    group_sum: Callable[[Array], Array],
    group_max: Callable[[Array], Array],
):
    """Per element: ``x - mean_group(x)``, population ``std_group(x)`` and the member count.

    Means and spreads run over the ``member`` elements of each group. ``group_sum(v)`` /
    ``group_max(v)`` give, for every element, the sum / maximum of ``v`` over its group. Values
    are shifted by the group maximum first (shifted-data variance), so a group of identical
    values has deviations and spread of exactly 0, not rounding noise of the mean.
    """
    count = group_sum(member.astype(x.dtype))
    reference = group_max(jnp.where(member, x, -jnp.inf))
    reference = jnp.where(jnp.isfinite(reference), reference, 0)
    shifted = jnp.where(member, x - reference, 0)
    safe_count = jnp.maximum(count, 1)
    centred = shifted - group_sum(shifted) / safe_count
    variance = group_sum(jnp.where(member, centred**2, 0)) / safe_count
    return jnp.where(member, centred, 0), jnp.sqrt(variance), count


def _group_segments(group_ids: Array, num_groups: int | None) -> tuple[Array, int]:
    """Segment index per sample and the (static) number of segments.

    Without ``num_groups`` the ids may be any integers; they are relabelled ``0..k-1`` with a
    fixed-size ``jnp.unique`` (sort-based, jittable; ``B`` segments, ``k <= B`` used). With
    ``num_groups`` the ids are the segment indices.
    """
    if num_groups is None:
        batch = group_ids.shape[0]
        _, segment = jnp.unique(group_ids, size=batch, fill_value=0, return_inverse=True)
        return segment.reshape(batch), batch
    return group_ids, num_groups


def _sequence_group_stats(rewards, mask, group_ids, num_groups):
    """Group-centred sequence returns ``R_b - mean_g R``, the group's population std and size.

    Statistics run over the non-empty rows of each group; returns ``(centred, std, count, valid)``.
    """
    rewards, valid = _masked_rewards(rewards, mask)
    segment, num_segments = _group_segments(group_ids, num_groups)

    def group_sum(v):
        return jax.ops.segment_sum(v, segment, num_segments)[segment]

    def group_max(v):
        return jax.ops.segment_max(v, segment, num_segments)[segment]

    returns = jnp.sum(rewards, axis=-1)
    non_empty = jnp.any(valid, axis=-1)
    centred, spread, count = _centre_and_spread(returns, non_empty, group_sum, group_max)
    return centred, spread, count, valid


# ----------------------------------------------------------------------------------------------
# Jitted cores
# ----------------------------------------------------------------------------------------------


@jax.jit
def _gae_core(rewards, mask, values, gamma, lam):
    rewards, valid = _masked_rewards(rewards, mask)
    values = jnp.where(valid, values.astype(rewards.dtype), 0)
    next_valid = _next_step_valid(valid).astype(rewards.dtype)
    next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1))) * next_valid
    td_errors = jnp.where(valid, rewards + gamma * next_values - values, 0)
    advantages = discounted_reverse_cumsum(td_errors, gamma * lam * next_valid)
    return jnp.where(valid, advantages, 0)


@jax.jit
def _reward_to_go_core(rewards, mask, gamma):
    rewards, valid = _masked_rewards(rewards, mask)
    return _reward_to_go(rewards, valid, gamma)


@jax.jit
def _reinforce_baseline_core(rewards, mask, gamma):
    rewards, valid = _masked_rewards(rewards, mask)
    returns_to_go = _reward_to_go(rewards, valid, gamma)
    non_empty = jnp.any(valid, axis=-1)
    baseline = jnp.sum(jnp.where(non_empty, returns_to_go[:, 0], 0)) / jnp.maximum(jnp.sum(non_empty), 1)
    return jnp.where(valid, returns_to_go - baseline, 0)


@functools.partial(jax.jit, static_argnames="num_groups")
def _rloo_core(rewards, mask, group_ids, num_groups):
    centred, _, count, valid = _sequence_group_stats(rewards, mask, group_ids, num_groups)
    scale = jnp.where(count > 1, count / jnp.maximum(count - 1, 1), 0)
    return _broadcast_to_tokens(scale * centred, valid)


@functools.partial(jax.jit, static_argnames="num_groups")
def _rloo_to_go_core(rewards, mask, group_ids, gamma, num_groups):
    rewards, valid = _masked_rewards(rewards, mask)
    returns_to_go = _reward_to_go(rewards, valid, gamma)
    segment, num_segments = _group_segments(group_ids, num_groups)
    # Per group and step: the sum and number of the members still generating at that step.
    group_totals = jax.ops.segment_sum(returns_to_go, segment, num_segments)[segment]
    group_counts = jax.ops.segment_sum(valid.astype(rewards.dtype), segment, num_segments)[segment]
    others = group_counts - 1
    baseline = jnp.where(others > 0, (group_totals - returns_to_go) / jnp.maximum(others, 1), 0)
    return jnp.where(valid, returns_to_go - baseline, 0)


@functools.partial(jax.jit, static_argnames="num_groups")
def _grpo_core(rewards, mask, group_ids, eps, num_groups):
    centred, spread, _, valid = _sequence_group_stats(rewards, mask, group_ids, num_groups)
    return _broadcast_to_tokens(centred / (spread + eps), valid)


@functools.partial(jax.jit, static_argnames="num_groups")
def _dr_grpo_core(rewards, mask, group_ids, num_groups):
    centred, _, _, valid = _sequence_group_stats(rewards, mask, group_ids, num_groups)
    return _broadcast_to_tokens(centred, valid)


@jax.jit
def _remax_core(rewards, mask, baseline_rewards, baseline_mask):
    rewards, valid = _masked_rewards(rewards, mask)
    baseline_rewards, _ = _masked_rewards(baseline_rewards, baseline_mask)
    baseline_returns = jnp.sum(baseline_rewards, axis=-1).astype(rewards.dtype)
    return _broadcast_to_tokens(jnp.sum(rewards, axis=-1) - baseline_returns, valid)


@jax.jit
def _reinforce_pp_core(rewards, mask, gamma, eps):
    rewards, valid = _masked_rewards(rewards, mask)
    returns_to_go = _reward_to_go(rewards, valid, gamma)

    def batch_sum(v):
        return jnp.broadcast_to(jnp.sum(v), v.shape)

    def batch_max(v):
        return jnp.broadcast_to(jnp.max(v, initial=-jnp.inf), v.shape)

    centred, spread, _ = _centre_and_spread(returns_to_go, valid, batch_sum, batch_max)
    return jnp.where(valid, centred / (spread + eps), 0)


# ----------------------------------------------------------------------------------------------
# Public helpers
# ----------------------------------------------------------------------------------------------


def reward_to_go(rewards, mask, gamma=1.0) -> Array:
    """Discounted reward-to-go ``G_t = sum_{t' >= t} gamma^{t'-t} r_t'`` within the valid prefix.

    0 where ``mask`` is 0.
    """
    _check_inputs(rewards, mask)
    return _reward_to_go_core(rewards, mask, gamma)


def sequence_returns(rewards, mask) -> Array:
    """Undiscounted sequence return ``R_b = sum_t m_bt r_bt``, shape ``[B]``."""
    _check_inputs(rewards, mask)
    rewards, _ = _masked_rewards(jnp.asarray(rewards), jnp.asarray(mask))
    return jnp.sum(rewards, axis=-1)


# ----------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------


@ADVANTAGES.register("gae")
def gae(rewards, mask, *, values, gamma=1.0, lam=1.0) -> Array:
    """Generalised Advantage Estimation (Schulman et al., 2016, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation").

        delta_t = r_t + gamma V(s_{t+1}) - V(s_t)
        A_t     = sum_{l >= 0} (gamma lam)^l delta_{t+l}   =   delta_t + gamma lam A_{t+1}

    within each row's valid prefix; the episode ends after the last valid step, so
    ``V(s_{T_b}) = 0`` and ``A_{T_b} = 0`` there. Computed by a reverse ``lax.scan`` over time.
    ``lam = 1`` gives ``G_t - V_t`` (Monte-Carlo), ``lam = 0`` the one-step TD error.
    """
    values = _require(values, "values", "gae")
    _check_inputs(rewards, mask, values=values)
    return _gae_core(rewards, mask, values, gamma, lam)


def gae_returns(rewards, mask, *, values, gamma=1.0, lam=1.0) -> Array:
    """Lambda-returns ``G^lam_t = A^GAE_t + V(s_t)``: the regression targets of the critic.

    0 where ``mask`` is 0. See ``gae`` for the advantage ``A^GAE``.
    """
    advantages = gae(rewards, mask, values=values, gamma=gamma, lam=lam)
    return jnp.where(jnp.asarray(mask) > 0, advantages + jnp.asarray(values).astype(advantages.dtype), 0)


@ADVANTAGES.register("reinforce")
def reinforce(rewards, mask, *, gamma=1.0) -> Array:
    """REINFORCE (Williams, 1992, "Simple statistical gradient-following algorithms for
    connectionist reinforcement learning") without a baseline: the reward-to-go

        A_t = G_t = sum_{t' >= t} gamma^{t'-t} r_t'.

    With a sparse reward every valid token gets ``gamma^{T_b - 1 - t} R_b``; with dense rewards a
    token is credited only with the rewards from its own step onwards.
    """
    _check_inputs(rewards, mask)
    return _reward_to_go_core(rewards, mask, gamma)


@ADVANTAGES.register("reinforce_baseline")
def reinforce_baseline(rewards, mask, *, gamma=1.0) -> Array:
    """REINFORCE with a constant baseline (Williams, 1992): reward-to-go minus the batch mean of
    the sequence returns,

        A_{b,t} = G_{b,t} - (1/|B'|) sum_{b' in B'} G_{b',0},

    where ``B'`` are the rows with at least one valid step.
    """
    _check_inputs(rewards, mask)
    return _reinforce_baseline_core(rewards, mask, gamma)


@ADVANTAGES.register("rloo")
def rloo(rewards, mask, *, group_ids, num_groups=None) -> Array:
    """REINFORCE Leave-One-Out (Kool et al., 2019, "Buy 4 REINFORCE Samples, Get a Baseline for
    Free!"; Ahmadian et al., 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
    Learning from Human Feedback in LLMs"). For a group g of n responses to one prompt,

        A_b = R_b - (1/(n-1)) sum_{b' in g, b' != b} R_b'  =  n/(n-1) (R_b - mean_g R),

    with ``R_b = sum_t r_bt``, broadcast to every valid token. A group of one has no other
    member and gets advantage 0. ``num_groups``: optional static number of groups (module
    docstring).
    """
    _check_inputs(rewards, mask)
    group_ids, num_groups = _check_group_ids(group_ids, jnp.shape(rewards)[0], num_groups, "rloo")
    return _rloo_core(rewards, mask, group_ids, num_groups)


@ADVANTAGES.register("rloo_to_go")
def rloo_to_go(rewards, mask, *, group_ids, gamma=1.0, num_groups=None) -> Array:
    """RLOO (Kool et al., 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!") on per-step
    returns, for dense rewards: each token's reward-to-go minus the mean reward-to-go, at the
    same step, of the *other* members of its group still generating then,

        A_{b,t} = G_{b,t} - 1/(|g_t| - 1) sum_{b' in g_t, b' != b} G_{b',t},
        G_{b,t} = sum_{t' >= t} gamma^{t'-t} r_{b,t'},

    (``g_t``: the group's rows valid at step t; the baseline is 0 when no other row is). The
    baseline does not depend on the row's own actions, so the gradient stays unbiased. With
    sparse rewards and equal response lengths this is exactly ``rloo``; with dense rewards a token is credited only
    with the rewards from its own step on, which is what dense credit assignment needs (the
    sequence-level estimators sum a dense reward back into one number per response, so every
    return-preserving redistribution gives them the same advantages). PRIME (Cui et al. 2025)
    combines outcome and implicit process rewards under this kind of leave-one-out baseline.
    """
    _check_inputs(rewards, mask)
    group_ids, num_groups = _check_group_ids(group_ids, jnp.shape(rewards)[0], num_groups, "rloo_to_go")
    return _rloo_to_go_core(rewards, mask, group_ids, gamma, num_groups)


@ADVANTAGES.register("remax")
def remax(rewards, mask, *, baseline_rewards, baseline_mask=None) -> Array:
    """ReMax (Li et al., 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning
    Method for Aligning Large Language Models"): the return of the greedy response to the same
    prompt is the baseline,

        A_b = R_b - R(greedy_b),   R_b = sum_t r_bt,

    broadcast to every valid token. ``baseline_rewards`` are the greedy rollout's per-token
    rewards on its own time axis; they are summed over ``baseline_mask`` when given, otherwise
    over the whole row (so they must be zero after the greedy response ends).
    """
    baseline_rewards = _require(baseline_rewards, "baseline_rewards", "remax")
    _check_inputs(rewards, mask)
    if jnp.ndim(baseline_rewards) != 2 or jnp.shape(baseline_rewards)[0] != jnp.shape(rewards)[0]:
        raise ValueError(
            f"baseline_rewards must have shape [batch={jnp.shape(rewards)[0]}, time], got {jnp.shape(baseline_rewards)}"
        )
    if baseline_mask is None:
        baseline_mask = jnp.ones(jnp.shape(baseline_rewards), bool)
    _check_inputs(baseline_rewards, baseline_mask)
    return _remax_core(rewards, mask, baseline_rewards, baseline_mask)


@ADVANTAGES.register("grpo")
def grpo(rewards, mask, *, group_ids, eps=DEFAULT_EPS, num_groups=None) -> Array:
    """Group Relative Policy Optimisation (Shao et al., 2024, "DeepSeekMath: Pushing the Limits of
    Mathematical Reasoning in Open Language Models"), outcome supervision:

        A_b = (R_b - mean_g R) / (std_g R + eps),   R_b = sum_t r_bt,

    with the population standard deviation over the group g of ``b``, broadcast to every valid
    token. A group whose rewards are all equal (including a group of one) gets exactly 0.
    """
    _check_inputs(rewards, mask)
    group_ids, num_groups = _check_group_ids(group_ids, jnp.shape(rewards)[0], num_groups, "grpo")
    return _grpo_core(rewards, mask, group_ids, eps, num_groups)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(rewards, mask, *, group_ids, num_groups=None) -> Array:
    """Dr. GRPO (Liu et al., 2025, "Understanding R1-Zero-Like Training: A Critical
    Perspective"): GRPO without the per-group standard-deviation normalisation,

        A_b = R_b - mean_g R,   R_b = sum_t r_bt,

    broadcast to every valid token. The paper's other correction, dropping GRPO's division by
    each response's length, concerns loss aggregation, not the advantage: aggregate the token
    losses with a constant normaliser (e.g. a token sum over a fixed budget) rather than a
    per-sequence token mean (see ``jirl.train.losses``).
    """
    _check_inputs(rewards, mask)
    group_ids, num_groups = _check_group_ids(group_ids, jnp.shape(rewards)[0], num_groups, "dr_grpo")
    return _dr_grpo_core(rewards, mask, group_ids, num_groups)


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(rewards, mask, *, gamma=1.0, eps=DEFAULT_EPS) -> Array:
    """REINFORCE++ (Hu, 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
    Language Models"): the per-token reward-to-go normalised over all valid tokens of the batch,

        G_{b,t} = sum_{t' >= t} gamma^{t'-t} r_{b,t'},
        A_{b,t} = (G_{b,t} - mean(G)) / (std(G) + eps),

    with mean and population std over every valid (b, t). The paper folds the per-token KL
    penalty into ``r``; pass the penalised rewards.
    """
    _check_inputs(rewards, mask)
    return _reinforce_pp_core(rewards, mask, gamma, eps)


# ----------------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------------


def advantage_fn(name: str, options: Mapping[str, Any] | None = None) -> Callable[..., Array]:
    """The estimator registered as ``name`` with its ``options`` (e.g. ``{"eps": 1e-4}`` for
    GRPO), under the one signature the RL loop calls::

        f(rewards, mask, *, group_ids=None, values=None, gamma=1.0, lam=1.0,
          baseline_rewards=None, baseline_mask=None) -> advantages [B, T]

    ``f`` passes the estimator only the inputs it declares (``rloo`` gets ``group_ids``,
    ``gae`` gets ``values``, ``gamma`` and ``lam``). Options are checked now: an unknown one
    is a ``ConfigError`` naming the estimator's options. Calling ``f`` without an input the
    estimator needs (``gae`` with ``values=None``) raises ``MissingInputError`` (a ValueError).
    """
    bound = ADVANTAGES.bind(name, options)

    def estimate(rewards, mask, *, group_ids=None, values=None, gamma=1.0, lam=1.0, baseline_rewards=None, baseline_mask=None):
        return bound(
            rewards, mask, group_ids=group_ids, values=values, gamma=gamma, lam=lam,
            baseline_rewards=baseline_rewards, baseline_mask=baseline_mask,
        )

    return estimate
