"""Exact solver for small token-level MDPs (DESIGN.md contract 6).

For tiny vocabularies and horizons the whole generation tree fits in memory, so the
KL-regularised optimum

    pi*(y|x) = pi_ref(y|x) exp(R(x,y)/beta) / Z(x),      R(x,y) = sum_t r(s_t, a_t)

can be computed exactly, token by token, by a soft Bellman backward pass (gamma = 1):

    Q*(s,a)   = r(s,a) + [a non-terminal] V*(child(s,a))
    V*(s)     = beta log sum_a pi_ref(a|s) exp(Q*(s,a)/beta)
    pi*(a|s)  = pi_ref(a|s) exp((Q*(s,a) - V*(s))/beta)

and any policy can be evaluated exactly (expected reward, sequence-level KL, objective).

Tree layout (every tree-valued argument and result follows it):

* V = vocab size, C = V - 1 continuing (non-EOS) tokens ``spec.continuing_ids`` ascending,
  H = horizon. A depth-t state (t = 0..H-1) is the prompt followed by t continuing tokens.
* The states at depth t are indexed i in [0, C**t), base-C digits most-significant first:
  state i's response is cont[d_0], ..., cont[d_{t-1}]. Continuing token index c leads from
  state i to state i*C + c at depth t+1.
* Action a at depth t is terminal iff a == eos_id or t == H-1.
* A tree is a list of H arrays, element t of shape [P, C**t, V] (log-probs log pi(a|s) or
  rewards r(s,a)); a state-value tree is a list of H arrays of shape [P, C**t].

Token buffers produced here follow ``jirl.models.scoring``: prompts left-aligned, response step
t at slot prompt_len + t, padding eos_id, width Lp + H.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Tree = list  # list[jax.Array], element t of shape [P, C**t, V]
StateTree = list  # list[jax.Array], element t of shape [P, C**t]

DEFAULT_MAX_TRANSITIONS = 5_000_000

# Public array functions compile once per spec (hashable by value); they also nest under a
# caller's jit. Eager op-by-op dispatch would compile every op of every depth separately.
_jit_over_spec = functools.partial(jax.jit, static_argnames=("spec",))


# ----------------------------------------------------------------------------------------------
# The tree specification


@dataclasses.dataclass(frozen=True, eq=False)
class TreeSpec:
    """Shape of a token-level MDP small enough to enumerate.

    Arrays are stored as read-only NumPy arrays; prompt padding is normalised to ``eos_id``.
    Hashable (by value), so it can also be a ``jax.jit`` static argument.
    """

    vocab_size: int
    eos_id: int
    horizon: int
    prompt_tokens: np.ndarray  # [P, Lp] int32, left-aligned, padded with eos_id
    prompt_lens: np.ndarray  # [P] int32
    prompt_weights: np.ndarray | None = None  # [P], sums to 1; None = uniform
    max_transitions: int = DEFAULT_MAX_TRANSITIONS

    def __post_init__(self):
        tokens = np.array(self.prompt_tokens, dtype=np.int32, ndmin=2)
        lens = np.array(self.prompt_lens, dtype=np.int32).reshape(-1)
        num_prompts = tokens.shape[0]
        weights = (
            np.full(num_prompts, 1.0 / max(num_prompts, 1))
            if self.prompt_weights is None
            else np.array(self.prompt_weights, dtype=np.float64).reshape(-1)
        )
        _validate_spec(self.vocab_size, self.eos_id, self.horizon, tokens, lens, weights)
        padding = np.arange(tokens.shape[1])[None, :] >= lens[:, None]
        tokens = np.where(padding, self.eos_id, tokens).astype(np.int32)
        for name, value in (("prompt_tokens", tokens), ("prompt_lens", lens), ("prompt_weights", weights)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        if self.num_transitions > self.max_transitions:
            raise ValueError(
                f"tree too large to enumerate: {self.num_prompts} prompts x "
                f"sum_t C**t (C={self.num_continuing}, H={self.horizon}) x V={self.vocab_size} = "
                f"{self.num_transitions:,} transitions > max_transitions={self.max_transitions:,}. "
                f"Shrink horizon (each step multiplies the tree by C = vocab_size - 1), "
                f"vocab_size or the number of prompts, or raise max_transitions."
            )

    @classmethod
    def from_prompts(
        cls,
        vocab_size: int,
        eos_id: int,
        horizon: int,
        prompts: Sequence[Sequence[int]],
        weights: Sequence[float] | None = None,
        **kwargs,
    ) -> "TreeSpec":
        """Spec from ragged token lists, right-padded with ``eos_id``."""
        width = max((len(p) for p in prompts), default=0)
        tokens = np.full((len(prompts), width), eos_id, dtype=np.int32)
        for row, prompt in enumerate(prompts):
            tokens[row, : len(prompt)] = prompt
        lens = np.array([len(p) for p in prompts], dtype=np.int32)
        return cls(vocab_size, eos_id, horizon, tokens, lens, weights, **kwargs)

    @property
    def continuing_ids(self) -> np.ndarray:
        """[C] token ids other than EOS, ascending; continuing index c is token cont[c]."""
        return np.array([a for a in range(self.vocab_size) if a != self.eos_id], dtype=np.int32)

    @property
    def num_continuing(self) -> int:
        """C = V - 1, the number of continuing (non-EOS) tokens."""
        return self.vocab_size - 1

    @property
    def num_prompts(self) -> int:
        """P, the number of prompts."""
        return int(self.prompt_tokens.shape[0])

    @property
    def prompt_width(self) -> int:
        """Lp, the padded prompt length."""
        return int(self.prompt_tokens.shape[1])

    @property
    def buffer_width(self) -> int:
        """Lp + H, the width of every token buffer built here."""
        return self.prompt_width + self.horizon

    def num_states(self, depth: int) -> int:
        """C**depth states per prompt at this depth."""
        return self.num_continuing**depth

    @property
    def num_transitions(self) -> int:
        """sum_t P * C**t * V, the number of (state, action) pairs."""
        return self.num_prompts * self.vocab_size * sum(self.num_states(t) for t in range(self.horizon))

    @property
    def sequences_per_prompt(self) -> int:
        """Complete responses of one prompt: sum_{t<H-1} C**t (EOS) + C**(H-1) * V (last step)."""
        last = self.horizon - 1
        return sum(self.num_states(t) for t in range(last)) + self.num_states(last) * self.vocab_size

    @property
    def total_sequences(self) -> int:
        """Complete (prompt, response) pairs over all prompts."""
        return self.num_prompts * self.sequences_per_prompt

    def tree_shape(self, depth: int) -> tuple[int, int, int]:
        """``(P, C**depth, V)``, the shape of element ``depth`` of a tree."""
        return (self.num_prompts, self.num_states(depth), self.vocab_size)

    def _key(self) -> tuple:
        arrays = (self.prompt_tokens, self.prompt_lens, self.prompt_weights)
        return (self.vocab_size, self.eos_id, self.horizon, self.max_transitions) + tuple(
            (a.shape, a.tobytes()) for a in arrays
        )

    def __eq__(self, other) -> bool:
        return isinstance(other, TreeSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def _validate_spec(vocab_size, eos_id, horizon, tokens, lens, weights) -> None:
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (EOS plus one continuing token), got {vocab_size}")
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id={eos_id} is out of range for vocab_size={vocab_size} (need 0 <= eos_id < V)")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(f"prompt_tokens must be [P, Lp] with P, Lp >= 1, got shape {tokens.shape}")
    num_prompts, width = tokens.shape
    if lens.shape != (num_prompts,):
        raise ValueError(f"prompt_lens must have shape [P]=({num_prompts},), got {lens.shape}")
    if np.any(lens < 1) or np.any(lens > width):
        raise ValueError(f"prompt_lens must lie in [1, Lp={width}] (a model needs a token to condition on), got {lens}")
    if weights.shape != (num_prompts,):
        raise ValueError(f"prompt_weights must have shape [P]=({num_prompts},), got {weights.shape}")
    if np.any(weights < 0) or not np.isclose(weights.sum(), 1.0, rtol=0.0, atol=1e-6):
        raise ValueError(f"prompt_weights must be non-negative and sum to 1, got {weights} (sum {weights.sum()})")
    in_prompt = np.arange(width)[None, :] < lens[:, None]
    if np.any(in_prompt & ((tokens < 0) | (tokens >= vocab_size))):
        raise ValueError(f"prompt_tokens must be token ids in [0, {vocab_size})")


def terminal_mask(spec: TreeSpec, depth: int) -> np.ndarray:
    """[V] bool: action a is terminal at this depth iff a == eos_id or depth == H-1."""
    return (np.arange(spec.vocab_size) == spec.eos_id) | (depth == spec.horizon - 1)


def check_tree(spec: TreeSpec, tree: Sequence, name: str = "tree") -> None:
    """Raise ValueError unless ``tree`` has H elements of shape [P, C**t, V]."""
    if len(tree) != spec.horizon:
        raise ValueError(f"{name} must be a list of H={spec.horizon} arrays, got {len(tree)}")
    for t, x in enumerate(tree):
        if tuple(x.shape) != spec.tree_shape(t):
            raise ValueError(f"{name}[{t}] must have shape [P, C**t, V]={spec.tree_shape(t)}, got {tuple(x.shape)}")


def _to_children(spec: TreeSpec, x: jax.Array) -> jax.Array:
    """[P, C**t, V] -> [P, C**(t+1)]: the continuing columns, laid out as child states i*C + c."""
    return x[..., spec.continuing_ids].reshape(x.shape[0], -1)


def _from_children(spec: TreeSpec, child_values: jax.Array) -> jax.Array:
    """[P, C**(t+1)] -> [P, C**t, V]: child value under each continuing action, 0 under EOS."""
    per_action = child_values.reshape(child_values.shape[0], -1, spec.num_continuing)
    eos = spec.eos_id
    zeros = jnp.zeros(per_action.shape[:-1] + (1,), per_action.dtype)
    return jnp.concatenate([per_action[..., :eos], zeros, per_action[..., eos:]], axis=-1)


# ----------------------------------------------------------------------------------------------
# Soft-optimal solution


@flax.struct.dataclass
class OracleSolution:
    """KL-regularised optimum: trees of log pi*(a|s) and Q*(s,a), state tree V*(s), log Z(x)."""

    log_probs: Tree
    q: Tree
    v: StateTree
    log_partition: jax.Array  # [P], V*(x) / beta = log sum_y pi_ref(y|x) exp(R(x,y)/beta)


def soft_backup(ref_log_probs_t: jax.Array, q_t: jax.Array, beta) -> tuple[jax.Array, jax.Array]:
    """One soft Bellman step at depth t: returns (V*(s), log pi*(a|s)).

    With m = max of Q*(s,.) over pi_ref's support and d = (Q* - m)/beta <= 0:

        log pi* = log_softmax(log pi_ref + d)
        V*      = m + beta log E_ref[e^d]             (logsumexp: accurate for small beta)
                = m + beta log1p(E_ref[expm1(d)])     (accurate for large beta, where E_ref[e^d] ≈ 1)

    The second form keeps V* accurate to float rounding of Q* rather than of beta * O(1).
    Zero-probability reference actions stay -inf in pi*.
    """
    support = jnp.isfinite(ref_log_probs_t)
    best_q = jnp.max(jnp.where(support, q_t, -jnp.inf), axis=-1, keepdims=True)
    advantage = jnp.where(support, (q_t - jax.lax.stop_gradient(best_q)) / beta, 0.0)
    logits = ref_log_probs_t + advantage
    log_norm = jax.nn.logsumexp(logits, axis=-1)
    mean_expm1 = jnp.sum(jnp.exp(ref_log_probs_t) * jnp.expm1(advantage), axis=-1)
    log_mean_exp = jnp.where(mean_expm1 > -0.5, jnp.log1p(jnp.maximum(mean_expm1, -0.5)), log_norm)
    value = jax.lax.stop_gradient(best_q)[..., 0] + beta * log_mean_exp
    return value, logits - log_norm[..., None]


@_jit_over_spec
def solve(spec: TreeSpec, ref_log_probs: Tree, rewards: Tree, beta) -> OracleSolution:
    """pi*(y|x) ∝ pi_ref(y|x) exp(R(x,y)/beta) per token, by backward induction over depth.

    Q*(s,a) = r(s,a) + [a non-terminal] V*(child),  V*(s) = beta log E_{pi_ref}[exp(Q*(s,.)/beta)].
    """
    check_tree(spec, ref_log_probs, "ref_log_probs")
    check_tree(spec, rewards, "rewards")
    horizon = spec.horizon
    log_probs, q, v = [None] * horizon, [None] * horizon, [None] * horizon
    for t in reversed(range(horizon)):
        continuation = 0.0 if t == horizon - 1 else _from_children(spec, v[t + 1])
        q[t] = rewards[t] + continuation
        v[t], log_probs[t] = soft_backup(ref_log_probs[t], q[t], beta)
    return OracleSolution(log_probs=log_probs, q=q, v=v, log_partition=v[0][:, 0] / beta)


# ----------------------------------------------------------------------------------------------
# Exact policy evaluation


@_jit_over_spec
def state_log_probs(spec: TreeSpec, log_probs: Tree) -> StateTree:
    """log pi(s|x): log-probability of generating state s's response, given its prompt.

    log pi(child(s,c)|x) = log pi(s|x) + log pi(cont[c]|s); the prompt (depth 0) has 0.
    """
    reach = [jnp.zeros((spec.num_prompts, 1), log_probs[0].dtype)]
    for t in range(spec.horizon - 1):
        reach.append(_to_children(spec, reach[t][..., None] + log_probs[t]))
    return reach


@_jit_over_spec
def sequence_log_probs(spec: TreeSpec, log_probs: Tree) -> Tree:
    """Tree of log pi(s, a | x) = log pi(s|x) + log pi(a|s).

    At terminal actions these are the complete-response log-probs log pi(y|x).
    """
    return [reach[..., None] + lp for reach, lp in zip(state_log_probs(spec, log_probs), log_probs)]


def _prompt_weights(spec: TreeSpec, dtype) -> jax.Array:
    return jnp.asarray(spec.prompt_weights, dtype)


@_jit_over_spec
def state_occupancy(spec: TreeSpec, log_probs: Tree) -> StateTree:
    """rho(s) = rho(x) pi(s|x): probability that generation passes through state s."""
    weights = _prompt_weights(spec, log_probs[0].dtype)[:, None]
    return [weights * jnp.exp(reach) for reach in state_log_probs(spec, log_probs)]


@_jit_over_spec
def state_action_occupancy(spec: TreeSpec, log_probs: Tree, prompt_weights=None) -> Tree:
    """rho(x,s,a) = rho(x) pi(s|x) pi(a|s), with rho(x) = ``prompt_weights`` (default
    spec.prompt_weights). Each prompt's entries at each depth sum to at most rho(x); the
    terminal actions' entries of a prompt sum to exactly rho(x)."""
    check_tree(spec, log_probs, "log_probs")
    dtype = log_probs[0].dtype
    weights = jnp.asarray(spec.prompt_weights if prompt_weights is None else prompt_weights, dtype)
    return [weights[:, None, None] * jnp.exp(lp) for lp in sequence_log_probs(spec, log_probs)]


def _weighted_sum(weight: jax.Array, values: jax.Array) -> jax.Array:
    """sum weight * values with 0 * anything = 0 (no NaN from 0 * inf, in value or gradient)."""
    support = weight > 0
    return jnp.sum(jnp.where(support, weight * jnp.where(support, values, 0.0), 0.0))


@_jit_over_spec
def expected_reward(spec: TreeSpec, log_probs: Tree, rewards: Tree) -> jax.Array:
    """E_{x~rho, y~pi}[sum_t r(s_t, a_t)] = sum_{x,s,a} rho(x) pi(s|x) pi(a|s) r(s,a)."""
    check_tree(spec, log_probs, "log_probs")
    check_tree(spec, rewards, "rewards")
    weights = _prompt_weights(spec, log_probs[0].dtype)[:, None, None]
    joint = sequence_log_probs(spec, log_probs)
    return sum(_weighted_sum(weights * jnp.exp(lp), r) for lp, r in zip(joint, rewards))


@_jit_over_spec
def kl_divergence(spec: TreeSpec, log_p: Tree, log_q: Tree) -> jax.Array:
    """Sequence-level KL(p||q) in nats = E_{x~rho, y~p}[sum_t log p(a_t|s_t) - log q(a_t|s_t)].

    Terms with p = 0 contribute 0; p > 0 where q = 0 gives +inf.
    """
    check_tree(spec, log_q, "log_q")
    return expected_reward(spec, log_p, [lp - lq for lp, lq in zip(log_p, log_q)])


@_jit_over_spec
def evaluate(
    spec: TreeSpec,
    log_probs: Tree,
    ref_log_probs: Tree,
    rewards: Tree,
    beta,
    optimal_log_probs: Tree | None = None,
) -> dict[str, jax.Array]:
    """expected_reward E[R], kl_to_reference KL(pi||pi_ref), objective E[R] - beta KL(pi||pi_ref),
    and kl_to_optimal KL(pi||pi*) when ``optimal_log_probs`` is given.

    For pi* = solve(...).log_probs: objective(pi) = E_x[V*(x)] - beta KL(pi||pi*).
    """
    reward = expected_reward(spec, log_probs, rewards)
    kl_ref = kl_divergence(spec, log_probs, ref_log_probs)
    metrics = {"expected_reward": reward, "kl_to_reference": kl_ref, "objective": reward - beta * kl_ref}
    if optimal_log_probs is not None:
        metrics["kl_to_optimal"] = kl_divergence(spec, log_probs, optimal_log_probs)
    return metrics


def uniform_log_probs(spec: TreeSpec, dtype=jnp.float32) -> Tree:
    """The uniform policy, log pi(a|s) = -log V."""
    return [jnp.full(spec.tree_shape(t), -np.log(spec.vocab_size), dtype) for t in range(spec.horizon)]


def random_log_probs(key: jax.Array, spec: TreeSpec, scale: float = 1.0, dtype=jnp.float32) -> Tree:
    """A random policy, log_softmax(scale * N(0, 1)) at every state."""
    keys = jax.random.split(key, spec.horizon)
    return [
        jax.nn.log_softmax(scale * jax.random.normal(k, spec.tree_shape(t), dtype), axis=-1)
        for t, k in enumerate(keys)
    ]


# ----------------------------------------------------------------------------------------------
# Sampling


@flax.struct.dataclass
class OracleSamples:
    """Sampled (prompt, response) buffers, laid out as in ``jirl.models.scoring``."""

    tokens: jax.Array  # [N, Lp+H] int32: prompt, then response at slots prompt_len + t, eos padding
    prompt_lens: jax.Array  # [N] int32
    response_tokens: jax.Array  # [N, H] int32, eos padding
    response_lens: jax.Array  # [N] int32, actions taken (an EOS action counts)
    prompt_index: jax.Array  # [N] int32
    state_index: jax.Array  # [N, H] int32, tree state of each step (0 past the response's end)
    response_log_probs: jax.Array  # [N], log pi(y|x) of the sampled response


@functools.partial(jax.jit, static_argnames=("spec", "num_samples"))
def sample(
    key: jax.Array,
    spec: TreeSpec,
    log_probs: Tree,
    num_samples: int,
    prompt_index: jax.Array | int | None = None,
) -> OracleSamples:
    """Draw x ~ prompt_weights (unless ``prompt_index`` is given) and y ~ pi(.|x) token by token."""
    check_tree(spec, log_probs, "log_probs")
    horizon, eos = spec.horizon, spec.eos_id
    prompt_key, *step_keys = jax.random.split(key, horizon + 1)
    if prompt_index is None:
        log_weights = jnp.log(_prompt_weights(spec, log_probs[0].dtype))
        prompt_index = jax.random.categorical(prompt_key, log_weights, shape=(num_samples,))
    prompt_index = jnp.broadcast_to(jnp.asarray(prompt_index, jnp.int32), (num_samples,))

    state = jnp.zeros(num_samples, jnp.int32)
    done = jnp.zeros(num_samples, bool)
    actions, states, taken, step_log_probs = [], [], [], []
    for t in range(horizon):
        step_logits = log_probs[t][prompt_index, state]  # [N, V]
        action = jax.random.categorical(step_keys[t], step_logits).astype(jnp.int32)
        active = ~done
        taken.append(active)
        actions.append(jnp.where(active, action, eos))
        states.append(state)
        chosen = jnp.take_along_axis(step_logits, action[:, None], axis=-1)[:, 0]
        step_log_probs.append(jnp.where(active, chosen, 0.0))
        done = done | (action == eos) | (t == horizon - 1)
        child = state * spec.num_continuing + action - (action > eos)
        state = jnp.where(done, 0, child).astype(jnp.int32)

    response = jnp.stack(actions, axis=1)
    response_lens = jnp.sum(jnp.stack(taken, axis=1), axis=1, dtype=jnp.int32)
    prompt_lens = jnp.asarray(spec.prompt_lens)[prompt_index]
    return OracleSamples(
        tokens=_place_response(spec, prompt_index, prompt_lens, response),
        prompt_lens=prompt_lens,
        response_tokens=response,
        response_lens=response_lens,
        prompt_index=prompt_index,
        state_index=jnp.stack(states, axis=1),
        response_log_probs=sum(step_log_probs),
    )


def _place_response(spec: TreeSpec, prompt_index, prompt_lens, response) -> jax.Array:
    """[N, Lp+H] buffers: prompt left-aligned, response[:, t] at slot prompt_len + t, eos elsewhere."""
    num = response.shape[0]
    prompts = jnp.asarray(spec.prompt_tokens)[prompt_index]
    tail = jnp.full((num, spec.horizon), spec.eos_id, jnp.int32)
    buffers = jnp.concatenate([prompts, tail], axis=1)
    slots = prompt_lens[:, None] + jnp.arange(spec.horizon)[None, :]
    return buffers.at[jnp.arange(num)[:, None], slots].set(response)


@_jit_over_spec
def step_values(spec: TreeSpec, tree: Tree, samples: OracleSamples) -> jax.Array:
    """[N, H] per-step values tree[t][x, s_t, a_t] along sampled responses, 0 past their end.

    With a reward tree this is the dense [batch, time] reward array of contract 4.
    """
    columns = [
        tree[t][samples.prompt_index, samples.state_index[:, t], samples.response_tokens[:, t]]
        for t in range(spec.horizon)
    ]
    values = jnp.stack(columns, axis=1)
    in_response = jnp.arange(spec.horizon)[None, :] < samples.response_lens[:, None]
    return jnp.where(in_response, values, 0.0)


# ----------------------------------------------------------------------------------------------
# Enumeration, and trees from real functions (causal LMs, step-reward functions)


def transition_tokens(
    spec: TreeSpec,
    prompt_index: np.ndarray,
    depth: np.ndarray | int,
    state_index: np.ndarray,
    action: np.ndarray | None = None,
) -> np.ndarray:
    """[n, Lp+H] int32 buffers of (prompt x, depth-t state s[, action a]), eos elsewhere.

    Response step j < t holds cont[d_j] (base-C digits of s, most significant first); step t
    holds a when given. Step j sits at slot prompt_len(x) + j.
    """
    prompt_index = np.asarray(prompt_index)
    num = prompt_index.shape[0]
    steps = np.arange(spec.horizon)[None, :]
    depth = np.broadcast_to(np.asarray(depth), (num,))[:, None]
    place_value = spec.num_continuing ** np.maximum(depth - 1 - steps, 0)
    digits = (np.asarray(state_index)[:, None] // place_value) % spec.num_continuing
    response = np.where(steps < depth, spec.continuing_ids[digits], spec.eos_id)
    if action is not None:
        response = np.where(steps == depth, np.asarray(action)[:, None], response)
    buffers = np.full((num, spec.buffer_width), spec.eos_id, np.int32)
    buffers[:, : spec.prompt_width] = spec.prompt_tokens[prompt_index]
    slots = spec.prompt_lens[prompt_index][:, None] + steps
    buffers[np.arange(num)[:, None], slots] = response
    return buffers


def enumerate_state_tokens(spec: TreeSpec, depth: int) -> np.ndarray:
    """[P * C**depth, Lp+H] buffers of every depth-t state, row p * C**t + i."""
    states = spec.num_states(depth)
    prompt_index = np.repeat(np.arange(spec.num_prompts), states)
    state_index = np.tile(np.arange(states), spec.num_prompts)
    return transition_tokens(spec, prompt_index, depth, state_index)


def complete_response_tokens(spec: TreeSpec) -> tuple[np.ndarray, np.ndarray]:
    """Every complete response of every prompt: buffers ``[P, S, Lp+H]`` and response lengths
    ``[P, S]``, ordered by depth, then state, then terminal action (the order of
    ``jirl.mdp.best_of_n.complete_sequences``)."""
    buffers, lengths = [], []
    for depth in range(spec.horizon):
        actions = np.flatnonzero(terminal_mask(spec, depth))
        per_prompt = spec.num_states(depth) * len(actions)
        prompt_index = np.repeat(np.arange(spec.num_prompts), per_prompt)
        state_index = np.tile(np.repeat(np.arange(spec.num_states(depth)), len(actions)), spec.num_prompts)
        action = np.tile(actions, spec.num_prompts * spec.num_states(depth))
        tokens = transition_tokens(spec, prompt_index, depth, state_index, action)
        buffers.append(tokens.reshape(spec.num_prompts, per_prompt, spec.buffer_width))
        lengths.append(np.full((spec.num_prompts, per_prompt), depth + 1, np.int32))
    return np.concatenate(buffers, axis=1), np.concatenate(lengths, axis=1)


def tree_values(spec: TreeSpec, tree: Tree, tokens, prompt_lens, response_lens) -> jax.Array:
    """Read a tree (rewards, log-probs, ...) along sampled responses: ``[B, H]`` with entry t the
    tree's value at (prompt, state s_t, action a_t) of row b, 0 past the response.

    The inverse of ``transition_tokens``: each row's prompt must be one of the spec's prompts
    (matched by tokens and length; jittable, so an unknown prompt cannot raise and reads
    prompt 0's values) and its response a path of the tree. Turns a reward tree into the RL
    loop's ``reward_fn``: ``lambda t, p, r: tree_values(spec, rewards, t, p, r)``.
    """
    tokens, prompt_lens, response_lens = (jnp.asarray(x, jnp.int32) for x in (tokens, prompt_lens, response_lens))
    width = spec.prompt_width
    in_prompt = jnp.arange(width)[None, :] < prompt_lens[:, None]
    prompts = jnp.where(in_prompt, tokens[:, :width], spec.eos_id)
    same = jnp.all(prompts[:, None, :] == spec.prompt_tokens[None, :, :], axis=-1) & (
        prompt_lens[:, None] == spec.prompt_lens[None, :]
    )
    prompt_index = jnp.argmax(same, axis=1)
    continuing_index = np.zeros(spec.vocab_size, np.int32)
    continuing_index[spec.continuing_ids] = np.arange(spec.num_continuing)
    rows = jnp.arange(tokens.shape[0])
    state = jnp.zeros_like(prompt_lens)
    values = []
    for t in range(spec.horizon):
        action = tokens[rows, jnp.minimum(prompt_lens + t, tokens.shape[1] - 1)]
        values.append(jnp.where(t < response_lens, tree[t][prompt_index, state, action], 0.0))
        state = jnp.where(t < response_lens - 1, state * spec.num_continuing + jnp.asarray(continuing_index)[action], 0)
    return jnp.stack(values, axis=1)


def _chunks(num_rows: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Fixed-size row chunks (so a jitted fn compiles once): (row ids, valid mask).

    The last chunk is padded by repeating the final row.
    """
    size = max(1, min(batch_size, num_rows))
    for start in range(0, num_rows, size):
        rows = np.arange(start, start + size)
        yield np.minimum(rows, num_rows - 1), rows < num_rows


def _float_dtype(x: jax.Array):
    """At least float32 (bf16 logits are upcast, float64 kept)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def log_probs_from_logits_fn(
    spec: TreeSpec, logits_fn: Callable[[np.ndarray], jax.Array], batch_size: int = 4096
) -> Tree:
    """Policy tree log pi(a|s) of a causal model ``logits_fn(tokens [N, Lp+H]) -> [N, Lp+H, V]``.

    Runs the model once on each maximal non-terminal prefix (the C**(H-1) depth-(H-1) states
    per prompt); a depth-t state s reads log_softmax of the logits at slot prompt_len + t - 1
    of its first extension, leaf s * C**(H-1-t).
    """
    last = spec.horizon - 1
    leaves_per_prompt = spec.num_states(last)
    step_offsets = np.arange(spec.horizon)[None, :] - 1
    pieces = [[] for _ in range(spec.horizon)]
    for rows, valid in _chunks(spec.num_prompts * leaves_per_prompt, batch_size):
        prompt_index, leaf = np.divmod(rows, leaves_per_prompt)
        tokens = transition_tokens(spec, prompt_index, last, leaf)
        logits = jnp.asarray(logits_fn(tokens))
        expected = tokens.shape + (spec.vocab_size,)
        if logits.shape != expected:
            raise ValueError(f"logits_fn must map tokens {tokens.shape} to logits {expected}, got {logits.shape}")
        slots = spec.prompt_lens[prompt_index][:, None] + step_offsets  # [b, H]
        step_logits = jnp.take_along_axis(logits, jnp.asarray(slots)[..., None], axis=1)  # [b, H, V]
        step_log_probs = jax.nn.log_softmax(step_logits.astype(_float_dtype(logits)), axis=-1)
        for t in range(spec.horizon):
            first_extension = leaf % spec.num_states(last - t) == 0
            pieces[t].append(step_log_probs[np.flatnonzero(valid & first_extension), t])
    return [jnp.concatenate(p).reshape(spec.tree_shape(t)) for t, p in enumerate(pieces)]


def rewards_from_step_fn(
    spec: TreeSpec,
    step_reward_fn: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], jax.Array],
    batch_size: int = 4096,
) -> Tree:
    """Reward tree r(s,a) from ``step_reward_fn(tokens, prompt_lens, t, terminal) -> [N]``.

    Each row is the buffer of (x, s, a) with a at slot prompt_len + t and eos after it;
    terminal = (a == eos_id) | (t == H-1). All depths share one flat, chunked row space.
    """
    sizes = [int(np.prod(spec.tree_shape(t))) for t in range(spec.horizon)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    outputs = []
    for rows, valid in _chunks(int(offsets[-1]), batch_size):
        depth = np.searchsorted(offsets, rows, side="right") - 1
        per_prompt = spec.num_continuing**depth * spec.vocab_size
        prompt_index, within = np.divmod(rows - offsets[depth], per_prompt)
        state_index, action = np.divmod(within, spec.vocab_size)
        tokens = transition_tokens(spec, prompt_index, depth, state_index, action)
        terminal = (action == spec.eos_id) | (depth == spec.horizon - 1)
        rewards = jnp.asarray(
            step_reward_fn(tokens, spec.prompt_lens[prompt_index], depth.astype(np.int32), terminal)
        )
        if rewards.shape != rows.shape:
            raise ValueError(f"step_reward_fn must return shape {rows.shape}, got {rewards.shape}")
        outputs.append(rewards[np.flatnonzero(valid)].astype(_float_dtype(rewards)))
    flat = jnp.concatenate(outputs)
    return [flat[offsets[t] : offsets[t + 1]].reshape(spec.tree_shape(t)) for t in range(spec.horizon)]
