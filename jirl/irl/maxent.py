"""Exact maximum-(causal-)entropy inverse RL on the oracle's enumerable tree.

Maximum-causal-entropy IRL (Ziebart et al. 2008, "Maximum entropy inverse reinforcement
learning"; Ziebart 2010, "Modeling purposeful adaptive behavior with the principle of maximum
causal entropy") models the expert as the soft-optimal policy of an unknown reward r_theta. Here
that policy is KL-regularised to a reference, exactly as in ``jirl.mdp.oracle.solve``:

    pi_theta(y|x) = pi_ref(y|x) exp(R_theta(x,y)/beta) / Z_theta(x),   R_theta(x,y) = sum_t r_theta(s_t,a_t)

(with a uniform pi_ref this is the standard MaxEnt model). theta is fitted by maximising the
expert's log-likelihood, computed exactly over the whole tree from the expert's state-action
occupancy rho_E(x,s,a) (the probability that generation passes through s and then takes a):

    L(theta) = sum_{x,s,a} rho_E(x,s,a) log pi_theta(a|s) - l2/2 |theta|^2.

Feature matching. Summing log pi_theta(a_t|s_t) = log pi_ref(a_t|s_t) + (Q(s_t,a_t) - V(s_t))/beta
along a response telescopes (Q(s_t,a_t) = r(s_t,a_t) + V(s_{t+1}), V = 0 after a terminal action):

    log pi_theta(y|x) = log pi_ref(y|x) + (R_theta(x,y) - V_theta(x))/beta,   V_theta(x) = beta log Z_theta(x),

and d V_theta(x)/d theta = E_{y~pi_theta(.|x)}[d R_theta(x,y)/d theta]. For a linear reward
r_theta(s,a) = phi(s,a) . theta this gives Ziebart's feature-matching gradient, scaled by 1/beta:

    dL/dtheta = (mu_E - mu_theta)/beta - l2 theta,
    mu_E = sum rho_E(x,s,a) phi(s,a),   mu_theta = sum_x rho_E(x) sum_{s,a} pi_theta(s,a|x) phi(s,a),

where rho_E(x) is the expert's prompt marginal (``prompt_marginal``; spec.prompt_weights for an
exact expert occupancy). A tabular reward is the one-hot-feature case: dL/dr(s,a) =
(rho_E(s,a) - rho_theta(s,a))/beta. ``maxent_irl`` takes the gradient with ``jax.grad`` through
``oracle.solve``; tests check it against this closed form. For linear (and tabular) rewards L is
concave in theta (a log-partition is convex), so gradient ascent finds the global maximum.

Identifiability. The likelihood sees R_theta only through pi_theta, i.e. up to a per-prompt
constant c(x). A tabular reward is therefore identified only up to potential shaping
r'(s,a) = r(s,a) + Phi(s') - Phi(s) (Ng et al. 1999; gamma = 1, Phi = 0 after a terminal
action), which shifts every return of prompt x by -Phi(x). Compare rewards through
``shaping_invariant_returns`` (per-prompt centred sequence returns), never entry by entry.

Occupancy trees follow the oracle's layout: a list of H arrays [P, C**t, V] holding rho(x,s,a).
A feature tree is a list of H arrays [P, C**t, V, F].
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jirl.mdp import oracle
from jirl.mdp.best_of_n import complete_sequences

Tree = oracle.Tree
StateTree = oracle.StateTree

# Compile once per spec (hashable by value) rather than dispatching every small op eagerly.
_jit_over_spec = functools.partial(jax.jit, static_argnames=("spec",))

# ----------------------------------------------------------------------------------------------
# Reward parameterisations: theta -> reward tree


def tabular_reward(theta_tree: Tree) -> Tree:
    """One free number per (state, action): theta is itself a reward tree ``[P, C**t, V]``."""
    return list(theta_tree)


def linear_reward(theta: jax.Array, features: Sequence[jax.Array]) -> Tree:
    """r(s,a) = phi(s,a) . theta for a feature tree ``[P, C**t, V, F]`` and ``theta [F]``."""
    return [f @ theta for f in features]


def bigram_features(spec: oracle.TreeSpec, dtype=jnp.float32) -> Tree:
    """One-hot features of (previous token, action): ``[P, C**t, V, V*V]``, index prev * V + a.

    The previous token is the prompt's last token at step 0 (as ``BigramTask`` reads it,
    ``y_{-1}``) and the state's last response token cont[i % C] at step t >= 1. The bigram
    task's reward is linear in them with theta = ``task.score_table.reshape(-1)``. Rows
    ``prev = eos_id`` never occur (a response stops at EOS; prompts are letters), so their
    entries of theta receive no gradient and are not identified.
    """
    vocab, num_cont = spec.vocab_size, spec.num_continuing
    last_prompt_token = spec.prompt_tokens[np.arange(spec.num_prompts), spec.prompt_lens - 1]  # [P]
    trees = []
    for t in range(spec.horizon):
        states = spec.num_states(t)
        if t == 0:
            previous = last_prompt_token[:, None]  # [P, 1]
        else:
            previous = np.broadcast_to(spec.continuing_ids[np.arange(states) % num_cont], (spec.num_prompts, states))
        index = previous[..., None] * vocab + np.arange(vocab)  # [P, C**t, V]
        trees.append(jax.nn.one_hot(index, vocab * vocab, dtype=dtype))
    return trees


# ----------------------------------------------------------------------------------------------
# Occupancies and feature expectations


state_action_occupancy = oracle.state_action_occupancy  # re-exported: the occupancies below build on it


def prompt_marginal(occupancy: Tree) -> jax.Array:
    """[P] rho(x): the mass of each prompt's root state (its depth-0 entries summed)."""
    return jnp.sum(occupancy[0], axis=(1, 2))


def occupancy_feature_expectations(occupancy: Tree, features: Sequence[jax.Array]) -> jax.Array:
    """mu = sum_{x,s,a} rho(x,s,a) phi(s,a), shape [F]."""
    return sum(jnp.einsum("psa,psaf->f", rho, f) for rho, f in zip(occupancy, features))


@_jit_over_spec
def feature_expectations(spec: oracle.TreeSpec, log_probs: Tree, features: Sequence[jax.Array], prompt_weights=None) -> jax.Array:
    """mu_pi = sum_x rho(x) E_{y~pi(.|x)}[sum_t phi(s_t,a_t)], shape [F].

    ``prompt_weights`` (default spec.prompt_weights) is rho(x); pass the expert's
    ``prompt_marginal`` to get the mu_theta of the feature-matching gradient.
    """
    return occupancy_feature_expectations(state_action_occupancy(spec, log_probs, prompt_weights), features)


def empirical_occupancy(
    spec: oracle.TreeSpec,
    tokens,
    prompt_lens,
    response_lens,
    reweight_prompts: bool = False,
    dtype=jnp.float32,
) -> Tree:
    """Occupancy tree of visit frequencies of sampled demonstrations.

    ``tokens [N, >= Lp+H]`` are buffers laid out as in ``jirl.models.scoring`` (prompt
    left-aligned, response step t at slot prompt_len + t); each row's prompt must be one of the
    spec's prompts (matched by its tokens). Every response must be valid in the tree: its
    first response_len - 1 actions are continuing tokens, its last is EOS or is step H-1.

    By default the counts are divided by N, so rho(x) is the empirical prompt frequency and the
    tree is the plug-in estimate of ``state_action_occupancy`` of the demonstrator. With
    ``reweight_prompts=True`` prompt x's counts are divided by its number of demonstrations
    and multiplied by spec.prompt_weights[x] instead (removes the prompt-sampling noise;
    prompts without demonstrations get zero mass, so the tree then sums to less than 1).
    """
    tokens = np.asarray(tokens)
    prompt_lens = np.asarray(prompt_lens).reshape(-1)
    response_lens = np.asarray(response_lens).reshape(-1)
    num = tokens.shape[0]
    if prompt_lens.shape != (num,) or response_lens.shape != (num,):
        raise ValueError(f"prompt_lens and response_lens must have shape [N]=({num},), got {prompt_lens.shape}, {response_lens.shape}")
    if tokens.ndim != 2 or tokens.shape[1] < spec.buffer_width:
        raise ValueError(f"tokens must be [N, >= Lp+H={spec.buffer_width}], got {tokens.shape}")
    if np.any(response_lens < 1) or np.any(response_lens > spec.horizon):
        raise ValueError(f"response_lens must lie in [1, H={spec.horizon}], got {response_lens}")

    # Prompt of each row, matched on (length, tokens).
    width = spec.prompt_width
    if np.any(prompt_lens < 1) or np.any(prompt_lens > width):
        raise ValueError(f"prompt_lens must lie in [1, Lp={width}] for this spec")
    in_prompt = np.arange(width)[None, :] < prompt_lens[:, None]
    rows_prompts = np.where(in_prompt, tokens[:, :width], spec.eos_id)
    same = (rows_prompts[:, None, :] == spec.prompt_tokens[None, :, :]).all(-1) & (
        prompt_lens[:, None] == spec.prompt_lens[None, :]
    )  # [N, P]
    if not np.all(same.any(axis=1)):
        bad = int(np.flatnonzero(~same.any(axis=1))[0])
        raise ValueError(f"row {bad}'s prompt {rows_prompts[bad, : prompt_lens[bad]].tolist()} is not a prompt of the spec")
    prompt_index = np.argmax(same, axis=1)

    # Walk the tree: state_{t+1} = state_t * C + continuing index of a_t.
    eos, num_cont = spec.eos_id, spec.num_continuing
    cont_index = np.full(spec.vocab_size, -1)
    cont_index[spec.continuing_ids] = np.arange(num_cont)
    counts = [np.zeros(spec.tree_shape(t), np.float64) for t in range(spec.horizon)]
    state = np.zeros(num, np.int64)
    rows = np.arange(num)
    for t in range(spec.horizon):
        active = t < response_lens
        action = tokens[rows, np.minimum(prompt_lens + t, tokens.shape[1] - 1)]
        if np.any(active & ((action < 0) | (action >= spec.vocab_size))):
            raise ValueError(f"response step {t} holds a token id outside [0, {spec.vocab_size})")
        last = t == response_lens - 1
        if np.any(active & ~last & (action == eos)):
            raise ValueError(f"a response has EOS at step {t} before its last step (check response_lens)")
        if t < spec.horizon - 1 and np.any(active & last & (action != eos)):
            raise ValueError(f"a response of length {t + 1} < H={spec.horizon} must end with EOS")
        np.add.at(counts[t], (prompt_index[active], state[active], action[active]), 1.0)
        state = np.where(active & ~last, state * num_cont + cont_index[np.clip(action, 0, spec.vocab_size - 1)], 0)

    if reweight_prompts:
        per_prompt = np.bincount(prompt_index, minlength=spec.num_prompts).astype(np.float64)
        scale = np.divide(spec.prompt_weights, per_prompt, out=np.zeros_like(per_prompt), where=per_prompt > 0)
    else:
        scale = np.full(spec.num_prompts, 1.0 / max(num, 1))
    return [jnp.asarray(c * scale[:, None, None], dtype) for c in counts]


# ----------------------------------------------------------------------------------------------
# Likelihood and the IRL loop


@_jit_over_spec
def log_likelihood(spec: oracle.TreeSpec, expert_occupancy: Tree, ref_log_probs: Tree, rewards: Tree, beta) -> jax.Array:
    """sum_{x,s,a} rho_E(x,s,a) log pi_r(a|s) with pi_r = oracle.solve(spec, ref, rewards, beta).

    Entries with rho_E = 0 contribute 0 (also in the gradient); expert mass where pi_ref = 0
    gives -inf. With rho_E an exact occupancy this is E_{x,y~E}[log pi_r(y|x)].
    """
    oracle.check_tree(spec, expert_occupancy, "expert_occupancy")
    log_probs = oracle.solve(spec, ref_log_probs, rewards, beta).log_probs
    return sum(oracle._weighted_sum(rho, lp) for rho, lp in zip(expert_occupancy, log_probs))


@flax.struct.dataclass
class MaxEntResult:
    """theta after ``steps`` updates, its reward tree and soft-optimal policy tree, and
    ``history``: per-step ``objective`` (L with the l2 term), ``log_likelihood`` and
    ``grad_norm``, each [steps], evaluated at theta before that step's update."""

    theta: Any
    rewards: Tree
    log_probs: Tree
    history: dict


def _squared_norm(theta) -> jax.Array:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(theta))


def maxent_irl(
    spec: oracle.TreeSpec,
    expert_occupancy: Tree,
    ref_log_probs: Tree,
    beta: float,
    reward_fn: Callable[[Any], Tree],
    theta0,
    steps: int,
    learning_rate: float | optax.Schedule = 0.1,
    l2: float = 0.0,
    optimizer: optax.GradientTransformation | None = None,
) -> MaxEntResult:
    """Fit theta by gradient ascent on L(theta) = sum rho_E log pi_theta - l2/2 |theta|^2.

    pi_theta = oracle.solve(spec, ref_log_probs, reward_fn(theta), beta).log_probs, and the
    gradient is ``jax.grad`` through that solve; it equals the feature-matching gradient
    (mu_E - mu_theta)/beta - l2 theta (module docstring). ``theta0`` is any pytree of floats
    that ``reward_fn`` maps to a reward tree. The ``steps`` updates of ``optimizer`` run in one
    jitted ``lax.scan``; the default is Adam with a float ``learning_rate`` cosine-decayed to 0
    over ``steps`` (the objective is exact, and a constant step size would leave Adam jittering
    by about the step size along rarely visited transitions, whose gradients are tiny) or with
    ``learning_rate`` as a given optax schedule. ``reward_fn`` and ``optimizer`` are static:
    reuse the same objects to reuse the compilation.
    """
    oracle.check_tree(spec, expert_occupancy, "expert_occupancy")
    oracle.check_tree(spec, ref_log_probs, "ref_log_probs")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if optimizer is None:
        optimizer = _default_optimizer(learning_rate, steps)
    theta, rewards, log_probs, history = _fit(
        theta0, list(expert_occupancy), list(ref_log_probs), beta, l2,
        spec=spec, reward_fn=reward_fn, steps=steps, optimizer=optimizer,
    )  # fmt: skip
    return MaxEntResult(theta=theta, rewards=rewards, log_probs=log_probs, history=history)


@functools.lru_cache(maxsize=64)
def _default_optimizer(learning_rate, steps: int) -> optax.GradientTransformation:
    """Adam, cosine-decayed from a float ``learning_rate``; cached so that equal settings reuse
    one compiled ``_fit``."""
    schedule = learning_rate if callable(learning_rate) else optax.cosine_decay_schedule(learning_rate, steps)
    return optax.adam(schedule)


@functools.partial(jax.jit, static_argnames=("spec", "reward_fn", "steps", "optimizer"))
def _fit(theta, occupancy, ref, beta, l2, *, spec, reward_fn, steps, optimizer):
    """``steps`` ascent updates in one ``lax.scan``. Static arguments are hashed by identity
    (functions) or value (spec): reusing the same ``reward_fn`` object reuses the compilation."""

    def objective(theta):
        ll = log_likelihood(spec, occupancy, ref, reward_fn(theta), beta)
        return ll - 0.5 * l2 * _squared_norm(theta), ll

    def step(carry, _):
        theta, opt_state = carry
        (value, ll), grad = jax.value_and_grad(objective, has_aux=True)(theta)
        ascent = jax.tree.map(jnp.negative, grad)  # optax minimises
        updates, opt_state = optimizer.update(ascent, opt_state, theta)
        record = {"objective": value, "log_likelihood": ll, "grad_norm": optax.tree.norm(grad)}
        return (optax.apply_updates(theta, updates), opt_state), record

    (theta, _), history = jax.lax.scan(step, (theta, optimizer.init(theta)), None, length=steps)
    rewards = reward_fn(theta)
    return theta, rewards, oracle.solve(spec, ref, rewards, beta).log_probs, history


# ----------------------------------------------------------------------------------------------
# Comparing rewards up to shaping


def shaping_invariant_returns(spec: oracle.TreeSpec, rewards: Tree) -> np.ndarray:
    """[P, S] returns R(x,y) of every complete response (order of
    ``best_of_n.complete_sequences``), minus their plain (uniform over responses) mean per
    prompt. Invariant to potential shaping and to per-prompt constants, the only freedom the
    soft-optimal policy leaves; two rewards give the same pi* (for any pi_ref, beta) iff these
    agree."""
    _, returns = complete_sequences(spec, oracle.uniform_log_probs(spec), rewards)
    return returns - returns.mean(axis=1, keepdims=True)
