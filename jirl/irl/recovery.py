"""Reward-recovery metrics: how close is a learned per-token reward to the true one, once the
ambiguity inverse RL cannot resolve is factored out?

On the token tree of ``jirl.mdp.oracle`` (deterministic transitions, gamma = 1, every episode ends
at EOS or at depth H) potential shaping (Ng, Harada & Russell 1999, "Policy invariance under
reward transformations")

    r'(s,a) = r(s,a) + [a non-terminal] Phi(child(s,a)) - Phi(s)                           (1)

adds Phi(terminal) - Phi(x) = -Phi(x) to the return of every response of prompt x, so it changes
no optimal or KL-regularised policy and no preference between two responses to one prompt. Any
inverse-RL method can recover r only up to (1), so learned rewards are compared after mapping
each reward to a canonical representative of its shaping class.

Canonicalisation. EPIC (Gleave et al. 2021, "Quantifying differences in reward functions") uses

    C(R)(s,a,s') = R(s,a,s') + E[gamma R(s',A,S') - R(s,A,S') - gamma R(S,A,S')],
                   S, S' ~ D_S, A ~ D_A independent,

which needs R on arbitrary (s, a, S') triples. Here r is a function of (s, a) only and s' is
forced, so the one-step analogue leaves a residue: for r = shaping by Phi it gives
E_A Phi(child(s',A)) - E_A Phi(child(s,A)) != 0. The shaping term only telescopes away along
complete episodes, which gives the multi-step form used here: with pi_D the action distribution
D_A taken as a policy,

    V_r(s)   = E_{A~pi_D(.|s)}[ Q_r(s,A) ]
    Q_r(s,a) = r(s,a) + [a non-terminal] V_r(child(s,a))
    C(r)(s,a) = Q_r(s,a) - V_r(s) = r(s,a) + [a non-terminal] V_r(child(s,a)) - V_r(s),      (2)

i.e. the canonical reward is the advantage of r under pi_D (uniform by default). Properties
(each is tested):

* C(r) - r is the shaping (1) with Phi = V_r, so C(r) is in r's class.
* For r = shaping by Phi, V_r = -Phi (the telescoping sum over any episode, Phi(terminal) = 0),
  hence C(r + shaping) = C(r) for every Phi, *including the per-prompt constant* Phi(x) at the
  roots, for any pi_D (zero-probability actions allowed).
* C is linear and idempotent (E_{pi_D}[C(r)(s,.)] = 0 at every state, so V_{C(r)} = 0), and
  C(r) = 0 iff r is a shaping: C projects onto a complement of the shaping subspace.
* EPIC's last term -E_{S~D_S, A~D_A}[...] removes a global constant; for (2) that constant is
  E_S E_{pi_D}[A_r(S,.)] = 0 for every D_S, so no state distribution enters (and Pearson
  correlation ignores constants anyway).
* A constant *per-token* bonus r + c is not a shaping here (it pays c per token, i.e. favours
  long responses) and is deliberately *not* removed. A constant paid at every terminal action
  is the shaping Phi = -c and is removed.

Comparison. EPIC's Pearson distance D(r1, r2) = sqrt((1 - rho)/2) with rho the (weighted)
Pearson correlation of C(r1), C(r2) over the (s, a) of the tree, computed as
(1/2) sqrt(E_w[(z1 - z2)^2]) with z the weighted standardised values, which equals
sqrt((1 - rho)/2) exactly and keeps precision near 0. D is a pseudometric in [0, 1]:
D(r, a r') = 0 for a > 0 and r' = r + shaping; D(r, -r) = 1.

Weights over (s, a): uniform over each prompt's (s, a) pairs, prompts weighted by
``spec.prompt_weights`` (uniform prompts: uniform over the tree); or the state-action occupancy
rho(x) pi(s|x) pi(a|s) of a policy ``log_probs`` (only visited pairs count); or an explicit tree.

Public API:
- ``apply_potential_shaping(spec, rewards, potential)``
- ``canonicalize_tree(spec, rewards, action_log_probs=None)``
- ``epic_distance(spec, r1, r2, weights=None, log_probs=None, action_log_probs=None)``
- ``shaping_removed_token_correlation(spec, learned, true, log_probs=None, weights=None,
  action_log_probs=None)``
- ``returns_correlation(spec, learned, true, log_probs=None)``
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jirl.mdp import oracle
from jirl.mdp.best_of_n import complete_sequences

Tree = oracle.Tree
StateTree = oracle.StateTree

_jit_over_spec = functools.partial(jax.jit, static_argnames=("spec",))


def _float(x) -> jax.Array:
    """At least float32 (float64 kept when x64 is enabled)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# ----------------------------------------------------------------------------------------------
# Shaping and canonicalisation


@_jit_over_spec
def apply_potential_shaping(spec: oracle.TreeSpec, rewards: Tree, potential: StateTree) -> Tree:
    """Potential-shaped reward tree (Ng et al. 1999), gamma = 1, Phi(terminal) = 0:

        r'(s,a) = r(s,a) + [a non-terminal] Phi(child(s,a)) - Phi(s).

    ``potential`` is a state tree (H arrays [P, C**t]). Every return of prompt x changes by
    -Phi(x), so policies and within-prompt preferences are unchanged.
    """
    oracle.check_tree(spec, rewards, "rewards")
    _check_state_tree(spec, potential, "potential")
    shaped = []
    for t in range(spec.horizon):
        phi = _float(potential[t])
        child = 0.0 if t == spec.horizon - 1 else oracle._from_children(spec, _float(potential[t + 1]))
        shaped.append(_float(rewards[t]) + child - phi[..., None])
    return shaped


@_jit_over_spec
def canonicalize_tree(spec: oracle.TreeSpec, rewards: Tree, action_log_probs: Tree | None = None) -> Tree:
    """Shaping-free canonical reward (2): the advantage of r under the action distribution D_A.

        V_r(s)    = sum_a pi_D(a|s) Q_r(s,a),   Q_r(s,a) = r(s,a) + [a non-terminal] V_r(child(s,a)),
        C(r)(s,a) = Q_r(s,a) - V_r(s),

    by backward induction over depth. ``action_log_probs`` is pi_D as a log-prob tree (default:
    uniform, D_A(a) = 1/V at every state). C(r + shaping by any Phi) = C(r), per-prompt root
    potentials included; see the module docstring for the derivation and why EPIC's one-step
    form (which evaluates r on impossible transitions) does not carry over to a deterministic
    tree.
    """
    oracle.check_tree(spec, rewards, "rewards")
    if action_log_probs is not None:
        oracle.check_tree(spec, action_log_probs, "action_log_probs")
    canonical = [None] * spec.horizon
    next_value = None
    for t in reversed(range(spec.horizon)):
        r_t = _float(rewards[t])
        q_t = r_t if next_value is None else r_t + oracle._from_children(spec, next_value)
        if action_log_probs is None:
            value = jnp.mean(q_t, axis=-1)
        else:
            prob = jnp.exp(_float(action_log_probs[t]))
            value = jnp.sum(jnp.where(prob > 0, prob * q_t, 0.0), axis=-1)
        canonical[t] = q_t - value[..., None]
        next_value = value
    return canonical


# ----------------------------------------------------------------------------------------------
# Weighted Pearson over the tree


def _check_state_tree(spec: oracle.TreeSpec, tree, name: str) -> None:
    if len(tree) != spec.horizon:
        raise ValueError(f"{name} must be a list of H={spec.horizon} arrays, got {len(tree)}")
    for t, x in enumerate(tree):
        expected = (spec.num_prompts, spec.num_states(t))
        if tuple(x.shape) != expected:
            raise ValueError(f"{name}[{t}] must have shape [P, C**t]={expected}, got {tuple(x.shape)}")


def _pair_weights(spec: oracle.TreeSpec, weights: Tree | None, log_probs: Tree | None, dtype) -> Tree:
    """Weights over (s, a): explicit, a policy's state-action occupancy, or uniform per prompt."""
    if weights is not None and log_probs is not None:
        raise ValueError("give at most one of weights and log_probs")
    if weights is not None:
        oracle.check_tree(spec, weights, "weights")
        return [jnp.asarray(w, dtype) for w in weights]
    if log_probs is not None:
        return [occupancy.astype(dtype) for occupancy in oracle.state_action_occupancy(spec, log_probs)]
    prompt = jnp.asarray(spec.prompt_weights, dtype)[:, None, None]
    return [jnp.broadcast_to(prompt, spec.tree_shape(t)) for t in range(spec.horizon)]


def _flatten(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x) for x in tree])


def _standardise(x: jax.Array, w: jax.Array) -> jax.Array:
    """(x - E_w x) / std_w(x) on the support of w (0 elsewhere); NaN if x is constant there."""
    support = w > 0
    x = jnp.where(support, x, 0.0)
    centred = jnp.where(support, x - jnp.sum(w * x), 0.0)
    return centred / jnp.sqrt(jnp.sum(w * centred * centred))


@jax.jit
def _weighted_correlation(x, y, w) -> tuple[jax.Array, jax.Array]:
    """(rho, sqrt((1 - rho)/2)) of vectors x, y under non-negative weights w (any total).

    rho = E_w[zx zy] with z the weighted z-scores; the distance is (1/2) sqrt(E_w[(zx - zy)^2]),
    equal to sqrt((1 - rho)/2) since E_w[z^2] = 1, without cancellation near rho = 1. NaN if x
    or y is constant on the support of w.
    """
    x, y, w = _float(x), _float(y), _float(w)
    w = w / jnp.sum(w)
    zx, zy = _standardise(x, w), _standardise(y, w)
    rho = jnp.sum(w * zx * zy)
    distance = 0.5 * jnp.sqrt(jnp.sum(w * (zx - zy) ** 2))
    return rho, distance


@_jit_over_spec
def _canonical_correlation(spec, r1, r2, weights, log_probs, action_log_probs):
    """(rho, distance) of ``_weighted_correlation`` between C(r1) and C(r2) over (s, a)."""
    c1 = canonicalize_tree(spec, r1, action_log_probs)
    c2 = canonicalize_tree(spec, r2, action_log_probs)
    w = _pair_weights(spec, weights, log_probs, c1[0].dtype)
    return _weighted_correlation(_flatten(c1), _flatten(c2), _flatten(w))


# ----------------------------------------------------------------------------------------------
# Metrics


def epic_distance(
    spec: oracle.TreeSpec,
    r1: Tree,
    r2: Tree,
    weights: Tree | None = None,
    log_probs: Tree | None = None,
    action_log_probs: Tree | None = None,
) -> jax.Array:
    """EPIC pseudometric (Gleave et al. 2021) specialised to the token tree:

        D(r1, r2) = sqrt((1 - rho)/2),   rho = Pearson_w(C(r1), C(r2)) over all (s, a),

    with C the canonicalisation (2) under ``action_log_probs`` (default uniform) and w the
    weights over (s, a): ``weights`` (a non-negative tree [P, C**t, V]), or the state-action
    occupancy rho(x) pi(s|x) pi(a|s) of the policy ``log_probs``, or by default uniform over
    each prompt's pairs with prompts weighted by ``spec.prompt_weights``.

    D in [0, 1]; D(r, a (r + shaping)) = 0 for a > 0; D(r, -r) = 1; symmetric; satisfies the
    triangle inequality. NaN if either canonical reward is constant on the weights' support
    (e.g. r is itself a pure shaping).
    """
    return _canonical_correlation(spec, r1, r2, weights, log_probs, action_log_probs)[1]


def shaping_removed_token_correlation(
    spec: oracle.TreeSpec,
    learned: Tree,
    true: Tree,
    log_probs: Tree | None = None,
    weights: Tree | None = None,
    action_log_probs: Tree | None = None,
) -> jax.Array:
    """Pearson correlation of learned and true per-token rewards after removing potential
    shaping: rho = Pearson_w(C(learned), C(true)) over (s, a), the rho of ``epic_distance``
    (D = sqrt((1 - rho)/2)).

    With ``log_probs`` only the pairs a policy visits count, weighted by its occupancy
    rho(x) pi(s|x) pi(a|s); by default every (s, a) counts (uniform per prompt). 1 for any
    positive multiple of a shaped true reward; invariant to shaping either argument.
    """
    return _canonical_correlation(spec, learned, true, weights, log_probs, action_log_probs)[0]


def returns_correlation(
    spec: oracle.TreeSpec, learned: Tree, true: Tree, log_probs: Tree | None = None
) -> jax.Array:
    """Pearson correlation of per-prompt-centred returns over all complete responses:

        R~(x,y) = R(x,y) - E_{y'~pi(.|x)} R(x,y'),   rho = Pearson_w(R~_learned, R~_true),
        w(x,y) = rho(x) pi(y|x),

    with pi = ``log_probs`` (default the uniform policy, each token 1/V). Shaping changes every
    return of prompt x by the same -Phi(x), which the centring removes, so this is shaping
    invariant by construction. It sees only sequence-level credit (returns), not where within
    a response the reward is paid. Under the uniform policy, R~ is exactly the return of the
    canonical reward ``canonicalize_tree(spec, r)``.
    """
    if log_probs is None:
        log_probs = oracle.uniform_log_probs(spec)
    log_p, learned_returns = complete_sequences(spec, log_probs, learned)
    _, true_returns = complete_sequences(spec, log_probs, true)
    probs = np.exp(log_p)  # [P, S], pi(y|x)
    weights = np.asarray(spec.prompt_weights)[:, None] * probs

    def centre(returns):
        mean = np.sum(np.where(probs > 0, probs * returns, 0.0), axis=1, keepdims=True)
        return returns - mean

    rho, _ = _weighted_correlation(
        jnp.asarray(centre(learned_returns).ravel()),
        jnp.asarray(centre(true_returns).ravel()),
        jnp.asarray(weights.ravel()),
    )
    return rho
