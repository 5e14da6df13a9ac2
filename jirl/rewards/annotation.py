"""Simulated preference annotation: Bradley-Terry annotators, pairing strategies and active
selection of the pairs to label.

Reward-model studies with a known gold reward (Gao et al. 2022; Sun et al. 2025, "Rethinking
reward modeling in preference-based LLM alignment") replace human labellers by a simulated
annotator that prefers response ``a`` over ``b`` with the Bradley-Terry probability

    P(a > b) = sigma(beta_ann * (r(a) - r(b)))

of the gold reward ``r``; ``beta_ann`` sets how noisy (small) or how decisive (large, ``inf`` =
argmax) the annotator is, and a label-flip rate adds reward-independent noise on top.

Everything works on a *pool* of ``N`` responses indexed ``0..N-1``, each with a prompt id
``prompt_ids [N]`` (any integers). Pairs are index arrays ``idx_a, idx_b [P]`` into the pool, or
``pairs [P, 2]`` where a single array is handier. All functions are pure ``jnp`` and jittable
with static sizes (``n_pairs``, ``k``); the pairing functions check that a valid pair exists only
when ``prompt_ids`` is concrete (outside ``jax.jit``).

Public API:
- ``preference_probability``, ``label_probability``, ``annotate``, ``to_chosen_rejected``
- ``pair_random``, ``pair_within_prompt``, ``pair_cross_prompt`` and the ``PAIRINGS`` registry
- ``RANK_CANDIDATES``, ``pair_by_rank`` (Sun et al. 2025: one pair per prompt from gold ranks), ``label_error_rate``
- ``uncertainty_scores``, ``uncertainty_select``, ``d_optimal_select``
- ``simulate_preferences``
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jirl.registry import Registry

PairingFn = Callable[[jax.Array, int, jax.Array], tuple[jax.Array, jax.Array]]

# Pairing strategies by name: ``PAIRINGS.get(name)(key, n_pairs, prompt_ids) -> (idx_a, idx_b)``.
PAIRINGS: Registry[PairingFn] = Registry("pairing")


# ----------------------------------------------------------------------------------------------
# Bradley-Terry annotator


def preference_probability(r_a, r_b, beta_ann):
    """Bradley-Terry probability that an annotator prefers ``a`` (Bradley & Terry 1952):

        P(a > b) = sigma(beta_ann * (r_a - r_b)).

    ``beta_ann = inf`` is the deterministic annotator: 1 if ``r_a > r_b``, 0 if ``r_a < r_b``
    and 1/2 on ties (where ``inf * 0`` would otherwise give NaN).
    """
    r_a, r_b = jnp.asarray(r_a), jnp.asarray(r_b)
    diff = r_a - r_b
    p = jax.nn.sigmoid(beta_ann * diff)
    return jnp.where(diff == 0, 0.5, p)


def label_probability(r_a, r_b, beta_ann, flip_rate=0.0):
    """Probability that the *recorded* label says ``a`` is preferred, after label-flip noise:

        P(label = 1) = (1 - f) * p + f * (1 - p),   p = sigma(beta_ann * (r_a - r_b)).
    """
    p = preference_probability(r_a, r_b, beta_ann)
    return (1.0 - flip_rate) * p + flip_rate * (1.0 - p)


@functools.partial(jax.jit, static_argnames="deterministic")
def annotate(key, r_a, r_b, beta_ann, flip_rate=0.0, deterministic=False):
    """Simulated preference labels for pairs with gold rewards ``r_a, r_b [P]``.

    Each label is a Bernoulli draw ``y ~ Bernoulli(sigma(beta_ann (r_a - r_b)))`` (1.0 = ``a``
    preferred), then flipped independently with probability ``flip_rate`` (symmetric label
    noise), so ``P(y = 1) = label_probability(r_a, r_b, beta_ann, flip_rate)``.

    ``deterministic=True`` (the same as ``beta_ann = inf``) labels by the argmax of the gold
    reward, breaking ties uniformly at random; flip noise still applies.

    Returns float labels ``[P]`` in ``{0.0, 1.0}``.
    """
    if deterministic:
        beta_ann = jnp.inf
    p = preference_probability(r_a, r_b, beta_ann)
    draw_key, flip_key = jax.random.split(key)
    labels = jax.random.uniform(draw_key, p.shape) < p
    flips = jax.random.uniform(flip_key, p.shape) < flip_rate
    return jnp.logical_xor(labels, flips).astype(jnp.float32)


def to_chosen_rejected(idx_a, idx_b, labels):
    """Reorder pairs so that the preferred response comes first: ``label > 0.5`` means ``a`` was
    preferred. Returns ``(chosen, rejected)``; works for indices or for any per-pair values."""
    a_wins = jnp.asarray(labels) > 0.5
    return jnp.where(a_wins, idx_a, idx_b), jnp.where(a_wins, idx_b, idx_a)


# ----------------------------------------------------------------------------------------------
# Pairing strategies
#
# Each samples ``n_pairs`` ordered pairs (with replacement) *uniformly over all ordered pairs
# (a, b), a != b, that satisfy its constraint*: a is drawn with probability proportional to its
# number of valid partners, then b uniformly among those partners. So larger prompt groups get
# more pairs (quadratically, for within-prompt pairing) and a/b positions are exchangeable.


def _concrete(x) -> np.ndarray | None:
    """``x`` as a numpy array, or None when it is traced (inside jit)."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def _prompt_groups(prompt_ids):
    """Sort the pool by prompt: ``order`` (sorted position -> pool index) and, per sorted
    position, the start and size of its prompt's contiguous block."""
    prompt_ids = jnp.asarray(prompt_ids)
    order = jnp.argsort(prompt_ids, stable=True)
    sorted_ids = prompt_ids[order]
    start = jnp.searchsorted(sorted_ids, sorted_ids, side="left")
    end = jnp.searchsorted(sorted_ids, sorted_ids, side="right")
    return order, start, end - start


def _sample_proportional(key, weights, n):
    """``n`` indices drawn with probability proportional to non-negative ``weights`` by
    inverse-CDF sampling; indices of zero weight are never returned."""
    cdf = jnp.cumsum(weights.astype(jnp.float32))
    u = jax.random.uniform(key, (n,)) * cdf[-1]
    idx = jnp.searchsorted(cdf, u, side="right")
    # u rounding up to the total would run past the end: clamp to the last positive weight.
    last_positive = weights.shape[0] - 1 - jnp.argmax(weights[::-1] > 0)
    return jnp.minimum(idx, last_positive)


@PAIRINGS.register("random")
def pair_random(key, n_pairs: int, prompt_ids):
    """Pairs of any two distinct responses of the pool (prompts ignored), uniform over ordered
    pairs: ``a ~ U{0..N-1}``, ``b = (a + 1 + U{0..N-2}) mod N``."""
    n = jnp.shape(prompt_ids)[0]
    if n < 2:
        raise ValueError(f"pair_random needs a pool of at least 2 responses, got {n}")
    return _pair_random(key, n_pairs, n)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pair_random(key, n_pairs, n):
    key_a, key_b = jax.random.split(key)
    idx_a = jax.random.randint(key_a, (n_pairs,), 0, n)
    idx_b = (idx_a + 1 + jax.random.randint(key_b, (n_pairs,), 0, n - 1)) % n
    return idx_a, idx_b


@PAIRINGS.register("within_prompt")
def pair_within_prompt(key, n_pairs: int, prompt_ids):
    """Pairs of two distinct responses to the *same* prompt (the usual reward-model data
    layout), uniform over all such ordered pairs."""
    ids = _concrete(prompt_ids)
    if ids is not None:
        _, counts = np.unique(ids, return_counts=True)
        if not np.any(counts >= 2):
            raise ValueError(
                "pair_within_prompt: no prompt has 2 or more responses, so no within-prompt pair "
                "exists; sample several responses per prompt or use pairing='random'"
            )
    return _pair_within_prompt(key, n_pairs, prompt_ids)


@functools.partial(jax.jit, static_argnums=1)
def _pair_within_prompt(key, n_pairs, prompt_ids):
    order, start, size = _prompt_groups(prompt_ids)
    key_a, key_b = jax.random.split(key)
    pos_a = _sample_proportional(key_a, size - 1, n_pairs)
    group_start, group_size = start[pos_a], size[pos_a]
    offset = jax.random.randint(key_b, (n_pairs,), 0, jnp.maximum(group_size - 1, 1))
    pos_b = group_start + (pos_a - group_start + 1 + offset) % group_size
    return order[pos_a], order[pos_b]


@PAIRINGS.register("cross_prompt")
def pair_cross_prompt(key, n_pairs: int, prompt_ids):
    """Pairs of responses to *different* prompts, uniform over all such ordered pairs (useful
    to probe whether a reward model is comparable across prompts)."""
    ids = _concrete(prompt_ids)
    if ids is not None and np.unique(ids).size < 2:
        raise ValueError(
            "pair_cross_prompt: every response has the same prompt id, so no cross-prompt pair "
            "exists; include responses to at least 2 prompts or use pairing='within_prompt'"
        )
    return _pair_cross_prompt(key, n_pairs, prompt_ids)


@functools.partial(jax.jit, static_argnums=1)
def _pair_cross_prompt(key, n_pairs, prompt_ids):
    order, start, size = _prompt_groups(prompt_ids)
    n = order.shape[0]
    key_a, key_b = jax.random.split(key)
    pos_a = _sample_proportional(key_a, n - size, n_pairs)
    group_start, group_size = start[pos_a], size[pos_a]
    # Uniform over the n - g sorted positions outside a's block [s, s + g).
    u = jax.random.randint(key_b, (n_pairs,), 0, jnp.maximum(n - group_size, 1))
    pos_b = jnp.where(u < group_start, u, u + group_size)
    return order[pos_a], order[pos_b]


# ----------------------------------------------------------------------------------------------
# Pairs by gold rank, one per prompt (Sun, Shen & Ton, ICLR 2025)
#
# Each training prompt has K responses on a [prompts, K] grid. Sun et al. sort a prompt's
# responses by gold reward (rank 0 the lowest) and annotate one pair per prompt, its two members
# drawn from a set of candidate ranks: any rank ("random"), the two middle ranks K/2 - 1 and K/2
# ("similar": close rewards, hard to label), or the extremes 0 and K - 1 ("diverse"). Same-prompt
# pairs take two distinct candidate ranks of the prompt; cross-prompt pairs take one candidate
# rank of the prompt and one of another prompt drawn uniformly.

RANK_CANDIDATES = ("random", "similar", "diverse")


def candidate_ranks(candidates: str, k: int) -> np.ndarray:
    """The gold ranks (0 = lowest of the prompt's ``k`` responses) a pair may use."""
    if candidates == "random":
        return np.arange(k)
    if candidates == "similar":
        return np.array([k // 2 - 1, k // 2])
    if candidates == "diverse":
        return np.array([0, k - 1])
    raise ValueError(f"unknown rank candidates {candidates!r}; use one of {RANK_CANDIDATES}")


def pair_by_rank(key, gold, num_prompts: int, candidates: str = "random", cross_prompt: bool = False):
    """One pair for each of the first ``num_prompts`` prompts of a ``gold [prompts, K]`` grid
    (Sun et al. 2025's pairings; see the section comment). Returns flat indices ``idx_a, idx_b
    [num_prompts]`` into the grid (``prompt * K + response``); ``a`` is the prompt's own response."""
    gold = np.asarray(gold)
    if gold.ndim != 2 or gold.shape[1] < 2:
        raise ValueError(f"gold must be a [prompts, responses] grid with at least 2 responses per prompt, got shape {gold.shape}")
    prompts, k = gold.shape
    if not 1 <= num_prompts <= prompts or (cross_prompt and num_prompts < 2):
        raise ValueError(f"num_prompts={num_prompts} must be in [1, {prompts}] (at least 2 for cross-prompt pairs)")
    ranks = candidate_ranks(candidates, k)
    by_rank = np.argsort(gold[:num_prompts], axis=1, kind="stable")  # [prompt, rank] -> response
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    rows = np.arange(num_prompts)
    if cross_prompt:
        rank_a, rank_b = rng.choice(ranks, num_prompts), rng.choice(ranks, num_prompts)
        other = (rows + 1 + rng.integers(0, num_prompts - 1, num_prompts)) % num_prompts  # uniform over the other prompts
    else:
        picks = np.stack([rng.choice(ranks, 2, replace=False) for _ in rows])
        rank_a, rank_b, other = picks[:, 0], picks[:, 1], rows
    return rows * k + by_rank[rows, rank_a], other * k + by_rank[other, rank_b]


def label_error_rate(gold_chosen, gold_rejected) -> float:
    """Realised label error of annotated pairs: the fraction whose chosen response has the
    lower gold reward (a gold tie counts one half)."""
    gold_chosen, gold_rejected = np.asarray(gold_chosen), np.asarray(gold_rejected)
    return float(np.mean((gold_chosen < gold_rejected) + 0.5 * (gold_chosen == gold_rejected)))


# ----------------------------------------------------------------------------------------------
# Active selection of pairs to label (linear reward head on fixed features)


def _pair_features(phi, w, pairs):
    """``dphi = phi_a - phi_b [P, d]`` and the Bernoulli variance ``p (1 - p) [P]`` of the
    current model's ``p = sigma(w . dphi)``, computed as ``sigma(x) sigma(-x)`` to avoid the
    cancellation in ``1 - p`` when ``p`` is close to 1."""
    pairs = jnp.asarray(pairs)
    dphi = phi[pairs[:, 0]] - phi[pairs[:, 1]]
    logit = dphi @ w
    return dphi, jax.nn.sigmoid(logit) * jax.nn.sigmoid(-logit)


def uncertainty_scores(phi, w, pairs):
    """Uncertainty sampling score of each candidate pair ``pairs [P, 2]`` under the linear
    reward ``r = phi @ w``:

        score = p (1 - p),   p = sigma(w . (phi_a - phi_b)),

    largest (1/4) when the model's predicted preference is closest to 1/2. It is also the
    Bradley-Terry Fisher weight of the pair. Higher scores should be labelled first.
    """
    return _pair_features(phi, w, pairs)[1]


def uncertainty_select(phi, w, candidates, k: int):
    """Indices into ``candidates`` of the ``k`` pairs with the highest ``uncertainty_scores``,
    best first."""
    _check_k(k, candidates)
    return _uncertainty_select(phi, w, candidates, k)


@functools.partial(jax.jit, static_argnums=3)
def _uncertainty_select(phi, w, candidates, k):
    return jax.lax.top_k(uncertainty_scores(phi, w, candidates), k)[1]


def _check_k(k, candidates):
    m = jnp.shape(candidates)[0]
    if not 0 < k <= m:
        raise ValueError(f"cannot select k={k} distinct pairs from {m} candidates; need 1 <= k <= {m}")


def d_optimal_select(phi, w, candidates, k: int, prior: float = 1e-3):
    """Greedy D-optimal choice of ``k`` distinct candidate pairs to label.

    The Bradley-Terry Fisher information of a linear reward head ``r = phi @ w`` after labelling
    a set S of pairs is ``A(S) = prior * I + sum_{i in S} p_i (1 - p_i) dphi_i dphi_i^T`` with
    ``dphi_i = phi_{a_i} - phi_{b_i}`` and ``p_i = sigma(w . dphi_i)``. D-optimal design
    maximises ``log det A(S)`` (shrinks the volume of the posterior confidence ellipsoid of
    ``w``). By the matrix determinant lemma adding pair i changes it by

        log det(A + g_i dphi_i dphi_i^T) - log det A = log(1 + g_i dphi_i^T A^{-1} dphi_i),

    so each greedy step takes the argmax of ``score_i = g_i dphi_i^T A^{-1} dphi_i`` over pairs
    not yet chosen, and ``A^{-1}`` is updated by Sherman-Morrison:

        A^{-1} <- A^{-1} - g u u^T / (1 + g dphi^T u),   u = A^{-1} dphi.

    A repeated candidate can be chosen twice only if, after its first copy, it is still the
    most informative one left. Ties go to the lowest index. Cost O(k P d^2).

    Args:
      phi: response features ``[N, d]`` (e.g. the reward model's last hidden layer).
      w: current linear reward head ``[d]`` (sets the weights ``p (1 - p)``).
      candidates: ``[P, 2]`` index pairs into ``phi``.
      k: how many to choose (static, ``1 <= k <= P``).
      prior: ridge ``lambda`` of ``A = lambda I + ...``; must be > 0.

    Returns:
      ``[k]`` distinct indices into ``candidates``, in the order they were chosen.
    """
    _check_k(k, candidates)
    if not isinstance(prior, jax.core.Tracer) and not prior > 0:
        raise ValueError(f"d_optimal_select needs prior > 0 so that A is invertible, got {prior}")
    return _d_optimal_select(phi, w, candidates, k, prior)


@functools.partial(jax.jit, static_argnums=3)
def _d_optimal_select(phi, w, candidates, k, prior):
    dphi, weight = _pair_features(phi, w, candidates)
    d = dphi.shape[1]
    a_inv = jnp.eye(d, dtype=dphi.dtype) / prior

    def step(carry, _):
        a_inv, taken = carry
        score = weight * jnp.sum((dphi @ a_inv) * dphi, axis=-1)
        i = jnp.argmax(jnp.where(taken, -jnp.inf, score))
        u = a_inv @ dphi[i]
        a_inv = a_inv - weight[i] * jnp.outer(u, u) / (1.0 + weight[i] * (dphi[i] @ u))
        return (a_inv, taken.at[i].set(True)), i

    taken = jnp.zeros(dphi.shape[0], dtype=bool)
    _, chosen = jax.lax.scan(step, (a_inv, taken), None, length=k)
    return chosen.astype(jnp.int32)


# ----------------------------------------------------------------------------------------------


def simulate_preferences(
    key, rewards, prompt_ids, n_pairs: int, beta_ann, flip_rate=0.0, pairing: str = "within_prompt"
):
    """Draw ``n_pairs`` pairs from a pool with gold ``rewards [N]`` by the named pairing
    strategy, label them with a Bradley-Terry annotator (``annotate``) and put the preferred
    response first.

    Returns ``(chosen_idx, rejected_idx, true_prob_chosen)``: pool indices ``[n_pairs]`` and the
    annotator's noise-free Bradley-Terry probability ``sigma(beta_ann (r_chosen - r_rejected))``
    that the chosen response really is preferred (flip noise not included; see
    ``label_probability``).
    """
    pair_key, label_key = jax.random.split(key)
    idx_a, idx_b = PAIRINGS.get(pairing)(pair_key, n_pairs, prompt_ids)
    return _label_pairs(label_key, jnp.asarray(rewards), idx_a, idx_b, beta_ann, flip_rate)


@jax.jit
def _label_pairs(key, rewards, idx_a, idx_b, beta_ann, flip_rate):
    labels = annotate(key, rewards[idx_a], rewards[idx_b], beta_ann, flip_rate)
    chosen, rejected = to_chosen_rejected(idx_a, idx_b, labels)
    return chosen, rejected, preference_probability(rewards[chosen], rewards[rejected], beta_ann)
