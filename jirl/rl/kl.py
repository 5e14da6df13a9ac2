"""KL regularisation towards a reference policy: per-token estimators, the two places the
penalty goes (the reward or the loss), and coefficient controllers.

All ``[B, T]`` arrays are response-aligned (``jirl.models.scoring``). For a token ``a_t``
sampled from the policy, the per-token log-ratio is

    log_ratio_t = log pi(a_t | s_t) - log pi_ref(a_t | s_t),

and an estimator ``k(log_ratio)`` is a function whose expectation under ``a ~ pi`` is (or
approximates) ``KL(pi || pi_ref)`` at that state (Schulman 2020, "Approximating KL
divergence", http://joschu.net/blog/kl-approx.html). Summed over a sequence's valid tokens,
its expectation is the sequence-level ``KL(pi(.|x) || pi_ref(.|x))``.

Estimators are registered by name in ``KL_ESTIMATORS`` (``k1``, ``k2``, ``k3``) and
controllers in ``KL_CONTROLLERS`` (``fixed``, ``adaptive``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from jirl.config import ConfigError
from jirl.registry import Registry

KLEstimator = Callable[[jax.Array], jax.Array]
KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")


# ---------------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------------


@KL_ESTIMATORS.register("k1")
def kl_k1(log_ratio: jax.Array) -> jax.Array:
    """Naive estimator (Schulman 2020): ``k1 = log pi/pi_ref``.

    Unbiased, ``E_{a~pi}[k1] = KL(pi || pi_ref)``, but high variance and negative on about
    half the samples.
    """
    return log_ratio


@KL_ESTIMATORS.register("k2")
def kl_k2(log_ratio: jax.Array) -> jax.Array:
    """Squared estimator (Schulman 2020): ``k2 = 1/2 (log pi/pi_ref)^2``.

    Non-negative and low variance, but biased: ``E_{a~pi}[k2]`` is the f-divergence with
    ``f(u) = u (log u)^2 / 2`` (``u = pi/pi_ref``), whose second-order expansion (``f''(1) = 1``)
    is KL's, so ``E[k2] = KL + O(delta^3)`` for policies ``delta`` apart.
    """
    return 0.5 * jnp.square(log_ratio)


@KL_ESTIMATORS.register("k3")
def kl_k3(log_ratio: jax.Array) -> jax.Array:
    """Control-variate estimator (Schulman 2020): with ``rho = pi_ref/pi = exp(-log_ratio)``,

        k3 = (rho - 1) - log rho = exp(-log_ratio) - 1 + log_ratio.

    Unbiased (``E_{a~pi}[rho - 1] = 0``), non-negative (``log x <= x - 1``) and lower variance
    than ``k1`` when the policies are close. Computed with ``expm1`` for accuracy near 0.

    As a *loss* term (GRPO, Shao et al. 2024) its gradient through the sampled token is
    ``d k3 / d log pi = 1 - pi_ref/pi``, which is not the gradient of KL(pi || pi_ref) (the
    sampling distribution is held fixed); see ``kl_loss_terms``.
    """
    return jnp.expm1(-log_ratio) + log_ratio


def kl_terms(log_probs: jax.Array, ref_log_probs: jax.Array, estimator: str = "k1") -> jax.Array:
    """Per-token KL estimates ``k(log pi - log pi_ref)`` ``[B, T]`` with a named estimator."""
    return KL_ESTIMATORS.get(estimator)(log_probs - ref_log_probs)


def sequence_kl(
    log_probs: jax.Array, ref_log_probs: jax.Array, mask: jax.Array, estimator: str = "k1"
) -> jax.Array:
    """Per-sequence KL estimate ``[B]``: ``sum_t m_bt k(log_ratio_bt)``.

    Its batch mean is the ``observed_kl`` the adaptive controller of Ziegler et al. (2019)
    compares with its target. Padding is zeroed before the estimator, so garbage log-probs
    at masked positions cannot leak in as ``nan``.
    """
    log_ratio = jnp.where(mask, log_probs - ref_log_probs, 0.0)
    return jnp.sum(jnp.where(mask, KL_ESTIMATORS.get(estimator)(log_ratio), 0.0), axis=-1)


def full_kl_terms(logits: jax.Array, ref_logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Exact per-step KL over the whole vocabulary, ``[B, T]`` from logits ``[B, T, V]``:

        KL_t = sum_v pi(v|s_t) (log pi(v|s_t) - log pi_ref(v|s_t)).

    Summed over the steps of sampled responses it is an unbiased estimate of the sequence KL
    KL(pi || pi_ref) with far less variance than ``k1`` (the sum over v replaces one sample of
    v: Rao-Blackwellisation), and never negative. Costs both models' full logits.
    """
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    log_q = jax.nn.log_softmax(ref_logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def response_kl(graphdef, params, ref_params, tokens, prompt_lens, mask, temperature: float = 1.0) -> jax.Array:
    """Per-sequence KL(pi || pi_ref) estimate ``[B]`` of sampled responses: the exact next-token
    KL (``full_kl_terms``) summed over each response's visited states, by the chain rule

        KL(pi || pi_ref) = E_{y ~ pi} sum_t KL(pi(. | s_t) || pi_ref(. | s_t))

    (Cover & Thomas 2006, eq. 2.67). ``tokens [B, L]`` are left-aligned prompt + response
    buffers, ``mask [B, T]`` marks response steps; both models are the split ``graphdef`` with
    ``params`` / ``ref_params``. Unbiased like the summed log-ratio ``k1``, never negative, and
    with each step's action noise integrated out.
    """
    from jirl.models.scoring import gather_response, logits_fn

    horizon = mask.shape[1]
    step_logits = [gather_response(logits_fn(graphdef, p)(tokens), prompt_lens, horizon, shift=-1) for p in (params, ref_params)]
    return jnp.sum(jnp.where(mask, full_kl_terms(*step_logits, temperature), 0.0), axis=1)


# ---------------------------------------------------------------------------------------------
# Where the penalty goes
# ---------------------------------------------------------------------------------------------


def kl_penalized_rewards(
    rewards: jax.Array,
    log_probs: jax.Array,
    ref_log_probs: jax.Array,
    mask: jax.Array,
    coef: float | jax.Array,
    estimator: str = "k1",
) -> jax.Array:
    """KL in the reward (Ziegler et al. 2019; Ouyang et al. 2022, InstructGPT; Ramamurthy et
    al. 2023, RL4LMs): on every valid token

        r'_t = r_t - coef * k(log pi(a_t|s_t) - log pi_ref(a_t|s_t)),

    and ``r'_t = r_t`` on padding. With ``k1`` the return of a sequence is
    ``R - coef * log pi(y|x)/pi_ref(y|x)``, whose expectation is the KL-regularised objective
    ``E[R] - coef KL(pi || pi_ref)``. A sparse reward (DESIGN.md contract 4) becomes dense.

    The penalty is wrapped in ``stop_gradient``: rewards are data to the policy-gradient
    estimator, not a differentiable path to the policy.
    """
    log_ratio = jnp.where(mask, log_probs - ref_log_probs, 0.0)
    penalty = coef * KL_ESTIMATORS.get(estimator)(log_ratio)
    penalty = jax.lax.stop_gradient(jnp.where(mask, penalty, 0.0))
    return rewards - penalty.astype(rewards.dtype)


def kl_loss_terms(log_probs: jax.Array, ref_log_probs: jax.Array, estimator: str = "k3") -> jax.Array:
    """KL in the loss (GRPO, Shao et al. 2024, DeepSeekMath): per-token terms ``[B, T]``

        l_t = k3(log pi(a_t|s_t) - log pi_ref(a_t|s_t)) = pi_ref/pi - log(pi_ref/pi) - 1,

    to be scaled by the KL coefficient, added to the policy loss terms and aggregated with the
    same mask (``jirl.rl.policy_losses.aggregate``). Gradients flow into ``log_probs`` only;
    ``ref_log_probs`` is a constant (stop-gradient is applied).
    """
    return kl_terms(log_probs, jax.lax.stop_gradient(ref_log_probs), estimator)


# ---------------------------------------------------------------------------------------------
# Coefficient controllers
# ---------------------------------------------------------------------------------------------


@struct.dataclass
class KLControllerState:
    """The KL coefficient ``beta`` a controller carries between updates (a pytree)."""

    coef: jax.Array


# A controller is a frozen dataclass whose first field is the starting coefficient (kl_controller).
KL_CONTROLLERS: Registry[type] = Registry("KL controller")


@KL_CONTROLLERS.register("fixed")
@dataclasses.dataclass(frozen=True)
class FixedKLController:
    """A constant coefficient: ``beta_{k+1} = beta_k = coef``."""

    coef: float

    def init(self) -> KLControllerState:
        """The state holding ``coef`` as a float32 scalar."""
        return KLControllerState(coef=jnp.asarray(self.coef, jnp.float32))

    def update(self, state: KLControllerState, observed_kl, n_steps=1) -> KLControllerState:
        """``state`` unchanged (the coefficient is fixed)."""
        del observed_kl, n_steps
        return state


@KL_CONTROLLERS.register("adaptive")
@dataclasses.dataclass(frozen=True)
class AdaptiveKLController:
    """Proportional controller of Ziegler et al. (2019), "Fine-Tuning Language Models from
    Human Preferences": steer the observed KL towards ``target``,

        e_k = clip(KL_k / target - 1, -max_error, max_error),
        beta_{k+1} = beta_k (1 + e_k * n_steps / horizon),

    where ``KL_k`` is the mean over the batch of the sequence KL (``sequence_kl``) and
    ``n_steps`` the number of samples (or updates) since the last adjustment. With
    ``max_error = 0.2`` the coefficient changes by at most ``0.2 * n_steps / horizon`` per call.

    Hyper-parameters are static (a frozen, hashable dataclass); ``update`` is a pure jnp
    function of the state and can be jitted or scanned.
    """

    init_coef: float
    target: float
    horizon: float = 10_000.0
    max_error: float = 0.2

    def init(self) -> KLControllerState:
        """The state holding ``init_coef`` as a float32 scalar."""
        return KLControllerState(coef=jnp.asarray(self.init_coef, jnp.float32))

    def update(self, state: KLControllerState, observed_kl, n_steps=1) -> KLControllerState:
        """The next coefficient ``beta (1 + clip(observed_kl / target - 1, -max_error, max_error)
        * n_steps / horizon)`` (pure, jittable)."""
        error = jnp.clip(observed_kl / self.target - 1.0, -self.max_error, self.max_error)
        multiplier = 1.0 + error * n_steps / self.horizon
        return KLControllerState(coef=(state.coef * multiplier).astype(state.coef.dtype))


def kl_controller(name: str, coef: float, options=None):
    """The controller registered as ``name`` starting at coefficient ``coef`` (a controller's
    first field), with its other fields from ``options`` (``{"target": 6.0, "horizon": 10000}``
    for ``adaptive``). An unknown or missing option is a ``ConfigError`` naming the valid ones."""
    cls = KL_CONTROLLERS.get(name)
    start, *rest = dataclasses.fields(cls)
    options = dict(options or {})
    valid = [field.name for field in rest]
    unknown = [key for key in options if key not in valid]
    if unknown:
        raise ConfigError(KL_CONTROLLERS.unknown_option_message(name, unknown[0], valid))
    missing = [field.name for field in rest if field.name not in options and field.default is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"KL controller {name!r} needs the option(s) {', '.join(missing)} (e.g. rl.kl_controller_options.{missing[0]}=...)")
    return cls(**{start.name: coef}, **options)
