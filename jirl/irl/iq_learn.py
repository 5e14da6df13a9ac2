"""IQ-Learn (inverse soft-Q learning) for language models.

IQ-Learn (Garg et al. 2021, "IQ-Learn: inverse soft-Q learning for imitation") learns a single
soft Q-function instead of a reward and a policy; the reward is implicit in Q through the inverse
soft Bellman operator. For a causal LM the Q-function is the model's logits (Wulfmeier et al. 2024,
"Imitating language via scalable inverse reinforcement learning"):

Conventions (token MDP: deterministic transitions, a state is the prompt plus the response so
far, the episode ends after EOS or at the horizon):

    Q(s_t, a)     = logits_t[a]                  (the logits that predict response step t)
    pi(a | s)     = softmax(Q(s, .) / beta)[a]   (beta = sampling temperature, default 1)
    V(s)          = beta log sum_a pi_ref(a|s) exp(Q(s,a)/beta)
                  = beta logsumexp(Q(s,.)/beta) + beta log pi_ref      (state-independent pi_ref)
    V(terminal)   = 0                            (after EOS, or after the step at the horizon)
    r(s_t, a_t)   = Q(s_t, a_t) - gamma V(s_{t+1})                     (implicit reward)

``reference`` picks pi_ref, a constant here so that pi = softmax(Q/beta) for either choice:

* ``"uniform"`` (default): pi_ref(a|s) = 1/|V|, so V(s) = beta logsumexp(Q/beta) - beta log|V|.
  This is the KL-regularised convention of the rest of jirl: ``jirl.mdp.oracle.solve`` with a
  uniform reference and ``jirl.mdp.demonstrations.from_optimum`` define the soft-optimal policy
  as pi* ∝ pi_ref exp(R/beta). Only with it does solving the implicit reward with a uniform
  reference give back softmax(Q/beta) exactly (the inverse soft Bellman property, tested).
* ``"none"``: pi_ref ≡ 1 (counting measure), V(s) = beta logsumexp(Q(s,.)/beta): the
  entropy-regularised (MaxEnt) convention of Garg et al. It moves V by the constant
  beta log|V|, which adds beta log|V| to the implicit reward of every non-terminal token: a
  length bonus, *not* a potential shaping, so the two conventions recover different rewards
  (and weigh the chi^2 term differently).

Telescoping (gamma = 1). Q(s,a) - V(s) = beta log(pi(a|s)/pi_ref(a|s)), so along a response
y = (a_0, ..., a_{n-1}) of prompt x = s_0 with V(s_n) = 0

    sum_t r_t = sum_t [Q(s_t,a_t) - V(s_t)] + sum_t [V(s_t) - V(s_{t+1})]
              = beta log(pi(y|x)/pi_ref(y|x)) + V(s_0),                                   (1)

the KL-regularised optimality relation R(x,y) = beta log(pi*(y|x)/pi_ref(y|x)) + beta log Z(x).

Objective (offline, expert data only, chi^2 regulariser). Garg et al. maximise

    J(Q) = E_{(s,a)~rho_E}[phi(Q(s,a) - gamma E_{s'} V(s'))] - (1 - gamma) E_{s_0~rho_0}[V(s_0)],
    phi(x) = x - x^2/(4 alpha)                                     (chi^2 divergence),

with rho_E the *normalised discounted* occupancy. Its practical "value" form replaces the
initial-state term with E_{rho_E}[V(s) - gamma V(s')], equal to (1 - gamma) E[V(s_0)] for the
normalised discounted occupancy of any policy. With gamma = 1 and a finite horizon the
occupancy is not normalised (it sums to the expected length) and the (1 - gamma) factor is
meaningless; the correct statement is the per-episode sum, and there the value form is *exact
per trajectory*, not only in expectation (telescoping, V(s_n) = 0):

    J(Q) = E_{(x,y)~E}[ sum_t phi(r_t) ] - E_x[V(s_0)]
         = E_{(x,y)~E}[ sum_t ( phi(r_t) - (V(s_t) - V(s_{t+1})) ) ]                         (2)

This is what ``iq_learn_loss`` minimises the negative of, token by token:

    loss_bt = -[ phi(r_bt) - (V(s_bt) - gamma V(s_b,t+1)) ],   aggregated by ``aggregation``.

(With gamma < 1 this uniform weighting over expert tokens is Garg et al.'s practical estimator,
not the discounted-occupancy weighting; the exact identity (2) needs gamma = 1.) Since
r_t - (V(s_t) - V(s_{t+1})) = Q(s_t,a_t) - V(s_t) exactly, for every token,

    loss_bt = -beta log(pi(a_bt|s_bt)/pi_ref(a_bt|s_bt)) + r_bt^2/(4 alpha).              (3)

So with alpha = inf (phi = identity) IQ-Learn *is* behaviour cloning: beta x (the SFT loss)
minus a constant (beta log|V| per token for the uniform reference), with beta x its gradient.

What the chi^2 term does to the policy. Per state, Q has one more degree of freedom than pi
(its level, V(s)). By (3) the loss is beta x NLL plus a penalty on the squared implicit rewards
of expert tokens, which the levels can reduce but not remove (one level per state against one
reward per action). The maximiser of (2) over a tabular Q is therefore not pi_E but a smoother
policy pi_alpha (in Garg et al.'s saddle-point view, a regulariser on expert samples only makes
IQ-Learn trade a chi^2-type distance between expert and policy occupancies against the policy's
entropy, instead of matching the occupancies exactly). Dividing (3) by beta,

    loss_bt / beta = -log(pi/pi_ref) + (beta/(4 alpha)) (r_bt/beta)^2,   r/beta a function of Q/beta,

so pi_alpha depends on (alpha, beta) only through alpha/beta. ``expected_objective_tree``
evaluates (2) exactly on the oracle tree; maximising it over a tabular Q gives pi_alpha, and
the tests check that KL(pi_E||pi_alpha) decreases with alpha, as O((beta/alpha)^2), to 0 at
alpha = inf, and that a transformer trained with ``iq_learn_loss`` converges to pi_alpha rather
than pi_E. (On the 3-letter, horizon-3 bigram task with an expert at beta_E = 0.5:
KL(pi_E||pi_alpha) = 0.144 at the defaults beta = 1, alpha = 0.5; 0.0018 at alpha = 8.) The
implicit reward of any Q, pi_alpha's included, has softmax(Q/beta) as its soft-optimal policy.

Trees (``jirl.mdp.oracle`` layout): ``implicit_reward_tree(spec, q_tree)`` gives
r(s,a) = Q(s,a) - gamma [a non-terminal] V(child(s,a)); ``oracle.solve(spec, uniform, r, beta)``
then returns log_softmax(Q/beta) exactly (gamma = 1, reference "uniform").

Public API:
- ``IQTerms``; ``iq_learn_terms(logits, actions, mask, gamma=1.0, beta=1.0, alpha=0.5,
  reference="uniform") -> IQTerms``
- ``chi2_phi(x, alpha)``, ``soft_value(q, beta=1.0, reference="uniform")``
- ``iq_learn_loss(graphdef, gamma=1.0, beta=1.0, alpha=0.5, aggregation="token_mean",
  reference="uniform")`` (registered objective ``"iq_learn"``)
- ``implicit_rewards(graphdef, params, tokens, prompt_lens, response_lens, horizon, gamma=1.0,
  beta=1.0, reference="uniform") -> [B, horizon]``
- ``iq_reward_fn(graphdef, params, horizon, gamma=1.0, beta=1.0, reference="uniform")``
- ``q_tree_from_logits_fn(spec, logits_fn)``, ``soft_value_tree(spec, q_tree, beta, reference)``,
  ``implicit_reward_tree(spec, q_tree, gamma=1.0, beta=1.0, reference="uniform")``,
  ``policy_tree(q_tree, beta)``, ``expected_objective_tree(spec, q_tree, expert_log_probs, ...)``
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jirl.mdp import oracle
from jirl.models.scoring import gather_response, response_mask, token_log_probs
from jirl.models.transformer import forward
from jirl.train.losses import AGGREGATIONS, OBJECTIVES, LossFn, LossOutput, token_mean
from jirl.train.sft import check_batch_keys

Tree = oracle.Tree
StateTree = oracle.StateTree

REFERENCES = ("uniform", "none")

# ----------------------------------------------------------------------------------------------
# Per-token terms


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.number))


def _check_options(gamma, beta, alpha=None, reference="uniform"):
    """Validate the options that are Python numbers (traced values pass through)."""
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if _is_number(beta) and not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if _is_number(gamma) and not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if alpha is not None and _is_number(alpha) and not alpha > 0:
        raise ValueError(f"alpha must be > 0 (math.inf: no chi^2 regulariser), got {alpha}")


def _float(x):
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))  # bf16 -> f32, f64 stays


def soft_value(q: jax.Array, beta: float = 1.0, reference: str = "uniform") -> jax.Array:
    """V(s) = beta log sum_a pi_ref(a) exp(Q(s,a)/beta) over the last axis (the vocabulary):
    beta logsumexp(Q/beta), minus beta log|V| for the uniform reference."""
    q = _float(q)
    value = beta * jax.nn.logsumexp(q / beta, axis=-1)
    if reference == "uniform":
        value = value - beta * math.log(q.shape[-1])
    return value


def chi2_phi(x: jax.Array, alpha: float) -> jax.Array:
    """phi(x) = x - x^2/(4 alpha), the chi^2 concave function of IQ-Learn (alpha = inf: x).
    ``alpha`` may be traced (then alpha = inf also gives x for finite x)."""
    if _is_number(alpha) and math.isinf(alpha):
        return x
    return x - x * x / (4.0 * alpha)


@struct.dataclass
class IQTerms:
    """Per-token IQ-Learn quantities, ``[B, T]``, 0 where ``mask`` is False."""

    q: jax.Array  # Q(s_t, a_t)
    v: jax.Array  # V(s_t)
    v_next: jax.Array  # V(s_{t+1}), 0 when s_{t+1} is terminal (the last valid step)
    reward: jax.Array  # implicit reward r_t = Q(s_t, a_t) - gamma V(s_{t+1})
    objective: jax.Array  # phi(r_t) - (V(s_t) - gamma V(s_{t+1})): per-token term of (2), maximised
    log_probs: jax.Array  # log pi(a_t|s_t) = log_softmax(Q/beta)[a_t]


def iq_learn_terms(
    logits: jax.Array,
    actions: jax.Array,
    mask: jax.Array,
    gamma: float = 1.0,
    beta: float = 1.0,
    alpha: float = 0.5,
    reference: str = "uniform",
) -> IQTerms:
    """IQ-Learn terms of response-aligned ``logits [B, T, V]`` (the logits predicting step t),
    ``actions [B, T]`` and ``mask [B, T]`` (a prefix of each row: the valid steps).

    The successor of the last valid step is terminal (the response ended by EOS or at the
    horizon), so V(s_{t+1}) = 0 there; otherwise V(s_{t+1}) is read from row t+1.
    """
    _check_options(gamma, beta, alpha, reference)
    q_all = _float(logits)
    mask = jnp.asarray(mask, bool)
    v = soft_value(q_all, beta, reference)  # [B, T]
    q = jnp.take_along_axis(q_all, actions[..., None], axis=-1)[..., 0]
    log_probs = token_log_probs(q_all, actions, beta)  # the one log-prob path, at temperature beta
    next_valid = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1) & mask
    v_next = jnp.where(next_valid, jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1), 0.0)
    reward = q - gamma * v_next
    objective = chi2_phi(reward, alpha) - (v - gamma * v_next)
    zero = lambda x: jnp.where(mask, x, 0.0)
    return IQTerms(
        q=zero(q),
        v=zero(v),
        v_next=zero(v_next),
        reward=zero(reward),
        objective=zero(objective),
        log_probs=zero(log_probs),
    )


def _response_terms(graphdef, params, tokens, prompt_lens, response_lens, horizon, gamma, beta, alpha, reference):
    logits = forward(graphdef, params, tokens).logits
    step_logits = gather_response(logits, prompt_lens, horizon, shift=-1)
    actions = gather_response(tokens, prompt_lens, horizon)
    mask = response_mask(response_lens, horizon)
    return iq_learn_terms(step_logits, actions, mask, gamma, beta, alpha, reference), mask


# ----------------------------------------------------------------------------------------------
# The objective


@OBJECTIVES.register("iq_learn")
def iq_learn_loss(
    graphdef,
    gamma: float = 1.0,
    beta: float = 1.0,
    alpha: float = 0.5,
    aggregation: str = "token_mean",
    reference: str = "uniform",
) -> LossFn:
    """Offline IQ-Learn with the chi^2 regulariser on expert demonstrations (module docstring,
    eq. (2)): per valid response token

        loss_bt = -[ phi(r_bt) - (V(s_bt) - gamma V(s_b,t+1)) ],   phi(x) = x - x^2/(4 alpha),
        r_bt = Q(s_bt, a_bt) - gamma V(s_b,t+1),   Q = logits,   V(terminal) = 0,

    aggregated by ``aggregation`` (``"token_mean"``, ``"sequence_mean"``, ``"sequence_sum"``;
    with ``"sequence_sum"`` and gamma = 1 it is exactly -J(Q) of (2) per demonstration).
    ``alpha=math.inf`` removes the regulariser, and the loss is then beta x SFT minus a constant.

    Batch: ``tokens [B, L]`` left-aligned prompt+response buffers padded with EOS, ``prompt_len
    [B]``, ``response_len [B]`` (as for ``sft``). Metrics (token means over valid tokens):
    ``iq_reward``, ``iq_q``, ``iq_v``, ``iq_chi2`` (mean r^2/(4 alpha)), ``iq_nll`` (mean
    -log pi(a_t|s_t)).
    """
    _check_options(gamma, beta, alpha, reference)
    aggregate = AGGREGATIONS[aggregation]

    def loss_fn(params, batch, key):
        del key  # deterministic
        check_batch_keys(batch, ("tokens", "prompt_len", "response_len"), "iq_learn")
        horizon = batch["tokens"].shape[1] - 1
        terms, mask = _response_terms(
            graphdef,
            params,
            batch["tokens"],
            batch["prompt_len"],
            batch["response_len"],
            horizon,
            gamma,
            beta,
            alpha,
            reference,
        )
        out: LossOutput = aggregate(-terms.objective, mask)
        mean = lambda x: token_mean(jax.lax.stop_gradient(x), mask).value
        chi2 = terms.reward - chi2_phi(terms.reward, alpha)  # r^2/(4 alpha)
        metrics = {
            "iq_reward": mean(terms.reward),
            "iq_q": mean(terms.q),
            "iq_v": mean(terms.v),
            "iq_chi2": mean(jnp.zeros_like(terms.reward) + chi2),
            "iq_nll": mean(-terms.log_probs),
        }
        return out, metrics

    return loss_fn


# ----------------------------------------------------------------------------------------------
# Implicit rewards for the RL loop


@functools.partial(jax.jit, static_argnames=("graphdef", "horizon", "reference"))
def implicit_rewards(
    graphdef,
    params,
    tokens: jax.Array,
    prompt_lens: jax.Array,
    response_lens: jax.Array,
    horizon: int,
    gamma: float = 1.0,
    beta: float = 1.0,
    reference: str = "uniform",
) -> jax.Array:
    """Per-token implicit rewards ``[B, horizon]`` r_t = Q(s_t, a_t) - gamma V(s_{t+1}) of
    left-aligned buffers (Q = the model's logits), V = 0 after the last valid step, and 0 past
    each response. With gamma = 1 each row sums to beta log(pi(y|x)/pi_ref(y|x)) + V(x).
    Compiled once per graph, shape, horizon and reference (params, gamma and beta are arguments)."""
    tokens, prompt_lens, response_lens = (jnp.asarray(x, jnp.int32) for x in (tokens, prompt_lens, response_lens))
    terms, _ = _response_terms(
        graphdef, params, tokens, prompt_lens, response_lens, horizon, gamma, beta, math.inf, reference
    )
    return terms.reward


def iq_reward_fn(
    graphdef, params, horizon: int, gamma: float = 1.0, beta: float = 1.0, reference: str = "uniform"
) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """The RL loop's ``reward_fn(tokens, prompt_lens, response_lens) -> [B, horizon]`` from a
    trained IQ-Learn model: ``implicit_rewards`` with the model and options bound."""
    _check_options(gamma, beta, None, reference)

    def reward_fn(tokens, prompt_lens, response_lens):
        return implicit_rewards(
            graphdef, params, tokens, prompt_lens, response_lens, horizon, gamma=gamma, beta=beta, reference=reference
        )

    return reward_fn


# ----------------------------------------------------------------------------------------------
# Trees (exact checks on jirl.mdp.oracle's enumeration)


def q_tree_from_logits_fn(
    spec: oracle.TreeSpec, logits_fn: Callable[[np.ndarray], jax.Array], batch_size: int = 4096
) -> Tree:
    """Tree of raw logits Q(s, .) of a causal model ``logits_fn(tokens [N, Lp+H]) -> [N, Lp+H, V]``
    (e.g. ``jirl.models.scoring.logits_fn(graphdef, params)``). Unlike
    ``oracle.log_probs_from_logits_fn`` the logits are not normalised: IQ-Learn's reward depends
    on the level of Q, not only on softmax(Q).

    As there, the model runs once on each depth-(H-1) prefix, in fixed-size chunks; the depth-t
    state s reads the logits at slot prompt_len + t - 1 of its first extension, leaf s * C**(H-1-t).
    """
    last = spec.horizon - 1
    leaves = spec.num_states(last)
    num_rows = spec.num_prompts * leaves
    size = max(1, min(batch_size, num_rows))
    pieces = [[] for _ in range(spec.horizon)]
    for start in range(0, num_rows, size):
        rows = np.arange(start, start + size)
        valid = rows < num_rows
        prompt_index, leaf = np.divmod(np.minimum(rows, num_rows - 1), leaves)
        tokens = oracle.transition_tokens(spec, prompt_index, last, leaf)
        logits = np.asarray(logits_fn(tokens))
        if logits.shape != tokens.shape + (spec.vocab_size,):
            raise ValueError(f"logits_fn must map tokens {tokens.shape} to [.., {spec.vocab_size}], got {logits.shape}")
        for t in range(spec.horizon):
            keep = np.flatnonzero(valid & (leaf % spec.num_states(last - t) == 0))
            slots = spec.prompt_lens[prompt_index[keep]] + t - 1
            pieces[t].append(logits[keep, slots])
    return [_float(np.concatenate(p)).reshape(spec.tree_shape(t)) for t, p in enumerate(pieces)]


def soft_value_tree(spec: oracle.TreeSpec, q_tree: Tree, beta: float = 1.0, reference: str = "uniform") -> StateTree:
    """State tree V(s) = beta log sum_a pi_ref(a) exp(Q(s,a)/beta)."""
    _check_options(1.0, beta, None, reference)
    oracle.check_tree(spec, q_tree, "q_tree")
    return [soft_value(q, beta, reference) for q in q_tree]


def policy_tree(q_tree: Tree, beta: float = 1.0) -> Tree:
    """log pi(a|s) = log_softmax(Q(s,.)/beta)."""
    return [jax.nn.log_softmax(_float(q) / beta, axis=-1) for q in q_tree]


def implicit_reward_tree(
    spec: oracle.TreeSpec, q_tree: Tree, gamma: float = 1.0, beta: float = 1.0, reference: str = "uniform"
) -> Tree:
    """r(s,a) = Q(s,a) - gamma [a non-terminal] V(child(s,a)) on the oracle tree (inverse soft
    Bellman operator). With gamma = 1 and ``reference="uniform"``,
    ``oracle.solve(spec, uniform, r, beta)`` has Q* = Q, V* = V and pi* = softmax(Q/beta)."""
    _check_options(gamma, beta, None, reference)
    values = soft_value_tree(spec, q_tree, beta, reference)
    rewards = []
    for t in range(spec.horizon):
        q = _float(q_tree[t])
        if t == spec.horizon - 1:
            rewards.append(q)  # every action at the horizon is terminal
        else:
            rewards.append(q - gamma * oracle._from_children(spec, values[t + 1]))  # 0 under EOS
    return rewards


def expected_objective_tree(
    spec: oracle.TreeSpec,
    q_tree: Tree,
    expert_log_probs: Tree,
    beta: float = 1.0,
    alpha: float = 0.5,
    reference: str = "uniform",
) -> jax.Array:
    """The population objective (2) at gamma = 1, exactly, under the expert's occupancy:

        J(Q) = sum_x rho(x) [ sum_{s,a} pi_E(s,a|x) phi(r(s,a)) - V(x) ],

    rho(x) = ``spec.prompt_weights``, pi_E(s,a|x) the probability that the expert reaches s and
    takes a. Maximising it over a tabular Q gives the policy IQ-Learn converges to with
    unlimited data (pi_E itself only for alpha = inf)."""
    _check_options(1.0, beta, alpha, reference)
    rewards = implicit_reward_tree(spec, q_tree, 1.0, beta, reference)
    phi = [chi2_phi(r, alpha) for r in rewards]
    expected_phi = oracle.expected_reward(spec, expert_log_probs, phi)
    v0 = soft_value(_float(q_tree[0]), beta, reference)[:, 0]
    return expected_phi - jnp.sum(jnp.asarray(spec.prompt_weights, v0.dtype) * v0)
