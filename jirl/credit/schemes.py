"""Dense credit assignment: a sparse sequence reward turned into dense ``[batch, time]`` rewards.

Every scheme takes ``rewards, mask`` and then exactly the model outputs and options its
equation needs (``attention_credit(rewards, mask, *, attention, abc_weight=0.5)``). An
experiment or the RL loop picks one by name from ``CREDIT_SCHEMES`` (DESIGN.md contract 10)
through the adapter ``credit_fn``, and every RL loss accepts its output (contract 4)::

    credit = credit_fn(name, options)   # options checked here: a misspelt one is an error
    dense = credit(rewards, mask, *, potentials=None, attention=None, process_rewards=None,
                   implicit_rewards=None, predicted_rewards=None)

``credit`` passes the scheme only the inputs it declares and says which one is missing and
how to compute it when a scheme needs it.

* ``rewards [B, T]``: the rewards given, usually sparse (the sequence reward ``R_b`` on the
  last valid step). Schemes read only their per-sequence return ``R_b = sum_t m_bt r_bt``.
* ``mask [B, T]``: valid response steps, a prefix of each row; ``T_b = sum_t m_bt``.
* The extra inputs are what the schemes need from models (``jirl.credit.models`` computes
  them): potentials ``Phi(s_t) [B, T + 1]``, the reward model's attention ``[B, T]``, the
  implicit PRM's token rewards (PRIME), a DPO model's token rewards (RTO), a return
  decomposition's predicted token rewards.

The result is 0 off the mask. What each scheme does to the return ``sum_t r'_bt``:

=============== ============================================================================
terminal        ``R_b`` (all of it on the last step): the baseline
uniform         ``R_b`` (``R_b / T_b`` on every step)
shaping         ``R_b - Phi(s_0)``: shifted by a prompt-only constant (gamma = 1)
abc             ``R_b`` when the attention over the response sums to 1
decomposition   ``R_b`` (the residual ``R_b - sum_t r_hat_t`` is spread uniformly)
prime           ``R_b + c sum_t r^phi_t``: the implicit PRM's rewards are *added*
rto             ``R_b + c sum_t clip(r^dpo_t)``: the DPO token rewards are *added*
=============== ============================================================================
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jirl.config import JirlError
from jirl.registry import Registry
from jirl.rl import advantages

Array = jax.Array
CreditScheme = Callable[..., Array]

CREDIT_SCHEMES: Registry[CreditScheme] = Registry(
    "credit scheme",
    inputs=("potentials", "attention", "process_rewards", "implicit_rewards", "predicted_rewards"),
    input_help={
        "potentials": "potentials=[batch, time + 1] are Phi of the state before each step and after the last; compute "
        "them with jirl.credit.models.prefix_potentials(reward or value model, ...)",
        "attention": "attention=[batch, time] is the reward model's attention over the response; compute it with "
        "jirl.credit.models.scores_and_attention(reward model, ...) from a transformer reward model",
        "process_rewards": "process_rewards=[batch, time] are the implicit PRM's token rewards; compute them with "
        "jirl.credit.prime.prime_process_rewards (an implicit PRM and its reference)",
        "implicit_rewards": "implicit_rewards=[batch, time] are a DPO policy's token rewards; compute them with "
        "jirl.preference.implicit.implicit_token_rewards(DPO policy, reference, ...)",
        "predicted_rewards": "predicted_rewards=[batch, time] come from a return-decomposition model; train a "
        "TokenRewardModel with jirl.credit.decomposition.randomized_decomposition_loss",
    },
)


def check_dense_rewards(dense, mask, name: str = "dense rewards") -> None:
    """Refuse a dense reward whose shape is not the response mask's ``[batch, time]``."""
    if jnp.shape(dense) != jnp.shape(mask):
        raise JirlError(
            f"{name} have shape {tuple(jnp.shape(dense))} but the response mask is {tuple(jnp.shape(mask))}: "
            "dense rewards must be [batch, time] on the response time axis (step t = the token at slot "
            "prompt_len + t; jirl.models.scoring.gather_response reads buffer-aligned arrays that way)"
        )


def sequence_returns(rewards, mask) -> Array:
    """``R_b = sum_t m_bt r_bt``, ``[B]`` (padding may hold anything, even NaN)."""
    check_dense_rewards(rewards, mask, "rewards")
    return advantages.sequence_returns(rewards, mask)


def last_step(mask) -> Array:
    """``[B, T]`` bool, True on each row's last valid step."""
    lengths = jnp.sum(mask, axis=1)
    return jnp.arange(mask.shape[1])[None, :] == (lengths[:, None] - 1)


@CREDIT_SCHEMES.register("none")
def identity(rewards, mask) -> Array:
    """The rewards as given (already dense, e.g. a task's true per-token reward)."""
    check_dense_rewards(rewards, mask, "rewards")
    return jnp.where(mask, rewards, 0.0)


@CREDIT_SCHEMES.register("terminal")
def terminal(rewards, mask) -> Array:
    """Sparse outcome reward: ``r'_t = R 1[t = T - 1]`` (the whole return on the last step)."""
    return jnp.where(last_step(mask), sequence_returns(rewards, mask)[:, None], 0.0)


@CREDIT_SCHEMES.register("uniform")
def uniform(rewards, mask) -> Array:
    """The naive dense baseline: ``r'_t = R / T`` on every valid step."""
    lengths = jnp.maximum(jnp.sum(mask, axis=1), 1)
    return jnp.where(mask, (sequence_returns(rewards, mask) / lengths)[:, None], 0.0)


@CREDIT_SCHEMES.register("shaping")
def potential_shaping(rewards, mask, *, potentials, gamma: float = 1.0) -> Array:
    """Potential-based shaping (Ng, Harada & Russell 1999, "Policy invariance under reward
    transformations"):

        r'_t = r_t + gamma Phi(s_{t+1}) - Phi(s_t),   Phi(terminal state) = 0,

    with ``potentials [B, T + 1]``: ``Phi(s_t)`` of the state before step ``t`` (``s_0`` is the
    prompt; ``jirl.credit.models.prefix_potentials`` reads a reward model or a critic on every
    prefix). The state after a row's last step is terminal, so its potential is not used. With
    gamma = 1 every return changes by ``-Phi(s_0)``, a prompt-only constant: optimal policies,
    KL-regularised or not, are unchanged (tested against the exact oracle).
    """
    check_dense_rewards(rewards, mask, "rewards")
    b, t = jnp.shape(mask)
    if jnp.shape(potentials) != (b, t + 1):
        raise JirlError(f"potentials must have shape {(b, t + 1)} ([batch, time + 1]), got {tuple(jnp.shape(potentials))}")
    following = jnp.where(last_step(mask), 0.0, potentials[:, 1:])
    return jnp.where(mask, rewards + gamma * following - potentials[:, :-1], 0.0)


@CREDIT_SCHEMES.register("abc")
def attention_credit(rewards, mask, *, attention, abc_weight: float = 0.5) -> Array:
    """Attention-based credit, ABC (Chan et al. 2024, "Dense reward for free in reinforcement
    learning from human feedback"):

        r'_t = (1 - b) R 1[t = T - 1] + b R a_t,

    where ``a_t`` is the reward model's attention from its scoring (last) token to response
    token ``t``, renormalised over the response so that ``sum_t a_t = 1`` (hence the return is
    unchanged). ``attention [B, T]`` comes from ``jirl.credit.models.scores_and_attention`` (or ``attention_inputs`` for ``with_credit``); it
    is renormalised here too, so raw attention rows may be passed. ``b = abc_weight``.
    """
    check_dense_rewards(attention, mask, "attention")
    weights = jnp.where(mask, attention, 0.0)
    weights = weights / jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), 1e-30)
    returns = sequence_returns(rewards, mask)[:, None]
    return jnp.where(mask, (1 - abc_weight) * terminal(rewards, mask) + abc_weight * returns * weights, 0.0)


@CREDIT_SCHEMES.register("decomposition")
def return_decomposition(rewards, mask, *, predicted_rewards) -> Array:
    """Return decomposition (Arjona-Medina et al. 2019, RUDDER; Ren et al. 2022, "Learning
    long-term reward redistribution via randomized return decomposition"): a learned token
    reward ``r_hat_t`` whose sum regresses the return, with the residual spread uniformly so
    the return is kept exactly,

        r'_t = r_hat_t + (R - sum_s r_hat_s) / T.

    ``predicted_rewards [B, T]`` from ``jirl.credit.models.token_rewards`` of a
    ``TokenRewardModel`` trained with ``jirl.credit.decomposition.randomized_decomposition_loss``.
    """
    check_dense_rewards(predicted_rewards, mask, "predicted_rewards")
    predicted = jnp.where(mask, predicted_rewards, 0.0)
    residual = sequence_returns(rewards, mask) - jnp.sum(predicted, axis=1)
    lengths = jnp.maximum(jnp.sum(mask, axis=1), 1)
    return jnp.where(mask, predicted + (residual / lengths)[:, None], 0.0)


@CREDIT_SCHEMES.register("prime")
def implicit_process_credit(rewards, mask, *, process_rewards, process_coef: float = 1.0) -> Array:
    """PRIME (Cui et al. 2025, "Process reinforcement through implicit rewards"): the outcome
    reward plus the implicit process reward of a PRM trained online from outcome labels,

        r'_t = R 1[t = T - 1] + c r^phi_t,   r^phi_t = beta log pi_phi(y_t|y_<t) / pi_ref(y_t|y_<t),

    (``process_rewards`` from ``jirl.preference.implicit.implicit_token_rewards`` of the PRM,
    trained with ``jirl.credit.prime.prime_loss``). With a group advantage on per-step
    returns (``rloo_to_go``) this is PRIME's combination of both under a leave-one-out
    baseline. The return becomes ``R + c sum_t r^phi_t``.
    """
    check_dense_rewards(process_rewards, mask, "process_rewards")
    return jnp.where(mask, terminal(rewards, mask) + process_coef * process_rewards, 0.0)


@CREDIT_SCHEMES.register("rto")
def dpo_token_credit(rewards, mask, *, implicit_rewards, rto_coef: float = 1.0, rto_clip: float = 1.0) -> Array:
    """RTO (Zhong et al. 2024, "DPO meets PPO: reinforced token optimization for RLHF"): a DPO
    policy's token rewards, clipped, plus the outcome (reward-model) score at the end,

        r'_t = c clip(beta log pi_dpo(y_t|y_<t) / pi_ref(y_t|y_<t), -k, k) + R 1[t = T - 1],

    (``implicit_rewards`` from ``jirl.preference.implicit.implicit_token_rewards``; ``k =
    rto_clip``, ``c = rto_coef``). The KL to the reference that RTO also puts in the reward is
    the RL loop's ``kl_coef``. The return becomes ``R + c sum_t clip(...)``.
    """
    check_dense_rewards(implicit_rewards, mask, "implicit_rewards")
    clipped = jnp.clip(implicit_rewards, -rto_clip, rto_clip)
    return jnp.where(mask, terminal(rewards, mask) + rto_coef * clipped, 0.0)


def credit_correlation(dense, true_rewards, mask) -> Array:
    """Pearson correlation over all valid tokens of a batch between assigned and true per-token
    credit (0 when either is constant)."""
    check_dense_rewards(dense, mask)
    check_dense_rewards(true_rewards, mask, "true rewards")
    weight = mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weight), 1.0)
    a = dense - jnp.sum(dense * weight) / count
    b = true_rewards - jnp.sum(true_rewards * weight) / count
    a, b = jnp.where(mask, a, 0.0), jnp.where(mask, b, 0.0)
    denominator = jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
    return jnp.where(denominator > 0, jnp.sum(a * b) / jnp.where(denominator > 0, denominator, 1.0), 0.0)


def credit_fn(name: str, options: Mapping[str, Any] | None = None) -> Callable[..., Array]:
    """The credit scheme registered as ``name`` with its ``options`` (``abc_weight``, ``gamma``,
    ``process_coef``, ``rto_coef``, ``rto_clip``), as ``f(rewards, mask, **inputs) -> dense
    [B, T]``. ``inputs`` are any of ``CREDIT_SCHEMES.inputs`` (``potentials``, ``attention``,
    ``process_rewards``, ``implicit_rewards``, ``predicted_rewards``); ``f`` passes the scheme
    those it declares and raises ``MissingInputError`` (a ``JirlError``) saying how to compute
    one it needs and did not get. Options are checked now: an unknown one is a ``ConfigError``
    naming the scheme's options."""
    return CREDIT_SCHEMES.bind(name, options)


def with_credit(reward_fn, scheme: str, inputs_fn=None, **options):
    """Wrap an RL reward function ``reward_fn(tokens, prompt_lens, response_lens) -> [B, T]``
    (the form ``jirl.rl.loop.collect`` takes) so that its rewards are redistributed by the
    credit scheme ``scheme``. ``inputs_fn(tokens, prompt_lens, response_lens) -> dict`` supplies
    what the scheme reads from models (``jirl.credit.models``: ``potential_inputs``,
    ``attention_inputs``, ``implicit_inputs``, ``token_reward_inputs``); ``options`` are the
    scheme's own (``abc_weight``, ``gamma``, ``process_coef``, ``rto_coef``, ``rto_clip``)::

        reward_fn = with_credit(reward_model_rewards(rm, params, vocab, horizon), "abc",
                                attention_inputs(rm, params, horizon), abc_weight=0.5)
    """
    credit = credit_fn(scheme, options)

    def dense_reward_fn(tokens, prompt_lens, response_lens):
        rewards = reward_fn(tokens, prompt_lens, response_lens)
        mask = jnp.arange(rewards.shape[1])[None, :] < response_lens[:, None]
        inputs = inputs_fn(tokens, prompt_lens, response_lens) if inputs_fn is not None else {}
        return credit(rewards, mask, **inputs)

    return dense_reward_fn
