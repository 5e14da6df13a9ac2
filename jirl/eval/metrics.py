"""Reward-model evaluation metrics: preference accuracy, calibration, rank agreement with the
gold reward, and best-of-n curves of gold reward under proxy selection.

Inputs are arrays over a pool of ``N`` scored responses (or ``P`` pairs); per-prompt metrics
take integer ``prompt_ids [N]`` (any values; responses of one prompt need not be contiguous).
Everything is pure ``jnp`` and jittable with static sizes (``num_bins``, ``max_n``,
``num_trials``); prompt groups are handled with sorts and segment sums, so no Python loop runs
over prompts.

Public API:
- ``pairwise_accuracy``, ``expected_calibration_error``
- ``pearson``, ``spearman_per_prompt``
- ``best_of_n_curve`` (Monte Carlo), ``best_of_n_exact``, ``best_of_n_kl``
- ``best_of_n_subsets`` (exact, n distinct responses out of a prompt's pool), ``within_prompt_accuracy``
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln


@jax.jit
def pairwise_accuracy(r_chosen, r_rejected):
    """Fraction of pairs the reward ranks the way the label does:

        acc = mean_i [ 1{r+_i > r-_i} + 1/2 * 1{r+_i = r-_i} ],

    so a tie counts as a coin flip (a constant reward scores 1/2, not 0 or 1).
    """
    r_chosen, r_rejected = jnp.asarray(r_chosen), jnp.asarray(r_rejected)
    correct = (r_chosen > r_rejected).astype(jnp.float32)
    tie = (r_chosen == r_rejected).astype(jnp.float32)
    return jnp.mean(correct + 0.5 * tie)


@functools.partial(jax.jit, static_argnames="num_bins")
def expected_calibration_error(probs, labels, num_bins: int = 10):
    """Expected calibration error of binary probabilities (Naeini et al. 2015; Guo et al. 2017),
    in its *binary reliability-diagram* form:

        ECE = sum_b (n_b / N) |acc_b - conf_b|,

    where ``probs [N]`` is the predicted probability of ``label = 1`` (e.g. a reward model's
    ``sigma(r_a - r_b)`` for "a is preferred"), bins are the ``num_bins`` equal-width intervals
    ``[j/B, (j+1)/B)`` of [0, 1] (the last one closed, so p = 1 lands in it), ``conf_b`` is the
    mean predicted probability in bin b and ``acc_b`` the fraction of label-1 examples in it.
    Empty bins contribute 0.

    The "top-label" ECE of Guo et al. (confidence = probability of the predicted class) is this
    function applied to ``max(p, 1 - p)`` and ``1{label = 1{p >= 1/2}}``.
    """
    probs = jnp.asarray(probs, jnp.float32)
    labels = jnp.asarray(labels, jnp.float32)
    bins = jnp.clip(jnp.floor(probs * num_bins).astype(jnp.int32), 0, num_bins - 1)
    count = jax.ops.segment_sum(jnp.ones_like(probs), bins, num_segments=num_bins)
    conf_sum = jax.ops.segment_sum(probs, bins, num_segments=num_bins)
    label_sum = jax.ops.segment_sum(labels, bins, num_segments=num_bins)
    # n_b/N * |acc_b - conf_b| = |sum labels - sum probs|_b / N
    return jnp.sum(jnp.abs(label_sum - conf_sum)) / jnp.maximum(jnp.sum(count), 1.0)


@jax.jit
def pearson(x, y):
    """Pearson correlation ``cov(x, y) / (std(x) std(y))`` of two vectors (NaN if either is
    constant)."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    xc, yc = x - jnp.mean(x), y - jnp.mean(y)
    return jnp.sum(xc * yc) / jnp.sqrt(jnp.sum(xc * xc) * jnp.sum(yc * yc))


# ----------------------------------------------------------------------------------------------
# Per-prompt helpers


def _group_ids(prompt_ids):
    """Dense prompt indices ``0..G-1`` (in sorted order of id) per response and the number G."""
    prompt_ids = jnp.asarray(prompt_ids)
    order = jnp.argsort(prompt_ids, stable=True)
    sorted_ids = prompt_ids[order]
    new_group = jnp.concatenate([jnp.array([0]), (sorted_ids[1:] != sorted_ids[:-1]).astype(jnp.int32)])
    group_sorted = jnp.cumsum(new_group)
    group = jnp.zeros_like(group_sorted).at[order].set(group_sorted)
    return group, group_sorted[-1] + 1


def _ranks_within(values, group):
    """1-based rank of each value among those of its group; ties get the average of the ranks
    they span ("average" / fractional ranking, as ``scipy.stats.rankdata``)."""
    n = values.shape[0]
    order = jnp.lexsort((values, group))  # by group, then value
    sv, sg = values[order], group[order]
    pos = jnp.arange(n)
    group_start = jnp.searchsorted(sg, sg, side="left")
    # Runs of equal (group, value): each run's ranks are averaged.
    new_run = jnp.concatenate([jnp.array([True]), (sv[1:] != sv[:-1]) | (sg[1:] != sg[:-1])])
    run = jnp.cumsum(new_run) - 1
    run_sum = jax.ops.segment_sum(pos.astype(jnp.float32), run, num_segments=n)
    run_len = jax.ops.segment_sum(jnp.ones(n, jnp.float32), run, num_segments=n)
    rank_sorted = run_sum[run] / run_len[run] - group_start + 1.0
    return jnp.zeros(n, jnp.float32).at[order].set(rank_sorted)


@jax.jit
def spearman_per_prompt(pred, gold, prompt_ids):
    """Mean over prompts of the Spearman rank correlation between predicted and gold rewards of
    that prompt's responses (Spearman 1904):

        rho_x = pearson(rank(pred_x), rank(gold_x)),   result = mean_x rho_x,

    with average ranks for ties (as ``scipy.stats.spearmanr``). Prompts with fewer than 2
    responses, or whose ``pred`` or ``gold`` is constant (rho undefined), are left out of the
    mean; NaN if no prompt is left. All prompts weigh the same.
    """
    pred = jnp.asarray(pred, jnp.float32)
    gold = jnp.asarray(gold, jnp.float32)
    n = pred.shape[0]
    group, num_groups = _group_ids(prompt_ids)
    rp, rg = _ranks_within(pred, group), _ranks_within(gold, group)

    def group_sum(v):
        return jax.ops.segment_sum(v, group, num_segments=n)

    count = group_sum(jnp.ones(n, jnp.float32))
    cp = rp - (group_sum(rp) / jnp.maximum(count, 1.0))[group]
    cg = rg - (group_sum(rg) / jnp.maximum(count, 1.0))[group]
    cov, var_p, var_g = group_sum(cp * cg), group_sum(cp * cp), group_sum(cg * cg)
    valid = (count >= 2) & (var_p > 0) & (var_g > 0) & (jnp.arange(n) < num_groups)
    rho = cov / jnp.sqrt(jnp.where(valid, var_p * var_g, 1.0))
    return jnp.sum(jnp.where(valid, rho, 0.0)) / jnp.sum(valid)


# ----------------------------------------------------------------------------------------------
# Best-of-n
#
# Best-of-n draws n responses for a prompt from the base policy and keeps the one with the
# highest proxy reward; its expected *gold* reward as a function of n is the over-optimisation
# curve of Gao et al. 2022 ("Scaling laws for reward model overoptimization"). Here the base
# policy is the empirical pool: each prompt's m responses are equally likely and the n draws
# are *with replacement* (i.i.d. from the base policy, as in real best-of-n; n may exceed m).
#
# Proxy ties are broken deterministically: responses are totally ordered by (proxy, lower pool
# index wins), i.e. among equal proxy scores the first one in the pool is picked, like argmax.


def _proxy_order(proxy, group):
    """Sort order of the pool by (group, proxy ascending, pool index *descending*), so the
    last response of each group block is the one best-of-n would pick; plus each sorted
    position's 0-based rank in its group and the group's start and size."""
    position = jnp.arange(proxy.shape[0])  # pool index, and also sorted position below
    order = jnp.lexsort((-position, proxy, group))
    sg = group[order]
    start = jnp.searchsorted(sg, sg, side="left")
    size = jnp.searchsorted(sg, sg, side="right") - start
    return order, position - start, start, size


@functools.partial(jax.jit, static_argnames="max_n")
def best_of_n_exact(proxy, gold, max_n: int, prompt_ids=None):
    """Exact expected gold reward of best-of-n under the proxy, for n = 1..max_n.

    For one prompt with m equally likely responses sorted by proxy (ties as above), best-of-n
    with replacement picks the i-th smallest (1-based) with probability

        P(best = i) = (i/m)^n - ((i-1)/m)^n,

    so ``E_n = sum_i gold_(i) [(i/m)^n - ((i-1)/m)^n]``. ``E_1`` is the mean gold reward and,
    when proxy == gold, ``E_n`` increases with n towards the maximum. With ``prompt_ids`` the
    curve is averaged over prompts, each weighing the same (no prompt id = a single prompt).

    Returns ``[max_n]``: entry ``n - 1`` is ``E_n``.
    """
    proxy = jnp.asarray(proxy, jnp.float32)
    gold = jnp.asarray(gold, jnp.float32)
    if prompt_ids is None:
        prompt_ids = jnp.zeros(proxy.shape[0], jnp.int32)
    group, num_groups = _group_ids(prompt_ids)
    order, rank, _, size = _proxy_order(proxy, group)
    m = size.astype(jnp.float32)[:, None]
    i = rank.astype(jnp.float32)[:, None] + 1.0
    n = jnp.arange(1, max_n + 1, dtype=jnp.float32)[None, :]
    prob_best = (i / m) ** n - ((i - 1.0) / m) ** n  # [N, max_n]
    return jnp.sum(gold[order][:, None] * prob_best, axis=0) / num_groups


@functools.partial(jax.jit, static_argnames=("max_n", "num_trials"))
def best_of_n_curve(key, proxy, gold, prompt_ids, max_n: int, num_trials: int = 256):
    """Monte-Carlo best-of-n curve: for n = 1..max_n, the gold reward of the highest-proxy
    response among n drawn *with replacement* from the same prompt's pool (ties as above),
    averaged over ``num_trials`` trials and over prompts (each prompt weighing the same).

    Within a trial the n = 1..max_n estimates reuse one sequence of max_n draws (a running
    maximum), so the curve is smooth in n; its expectation is ``best_of_n_exact``. Memory is
    O(N max_n) per trial; trials run sequentially under ``lax.scan``.

    Returns ``[max_n]``: entry ``n - 1`` is the estimate for n.
    """
    proxy = jnp.asarray(proxy, jnp.float32)
    gold = jnp.asarray(gold, jnp.float32)
    num = proxy.shape[0]
    group, num_groups = _group_ids(prompt_ids)
    order, _, start, size = _proxy_order(proxy, group)
    gold_sorted = gold[order]
    # One row per prompt (padded to N rows): its block's start and size in sorted order.
    block_start = jax.ops.segment_min(start, group[order], num_segments=num)
    block_size = jax.ops.segment_max(size, group[order], num_segments=num)
    is_prompt = jnp.arange(num) < num_groups
    block_start = jnp.where(is_prompt, block_start, 0)
    block_size = jnp.where(is_prompt, block_size, 1)

    def trial(total, trial_key):
        u = jax.random.uniform(trial_key, (num, max_n))
        draw = jnp.minimum(jnp.floor(u * block_size[:, None]).astype(jnp.int32), block_size[:, None] - 1)
        best = jax.lax.cummax(draw, axis=1)  # highest proxy rank among the first n draws
        picked_gold = gold_sorted[block_start[:, None] + best]
        return total + jnp.sum(jnp.where(is_prompt[:, None], picked_gold, 0.0), axis=0), None

    total, _ = jax.lax.scan(trial, jnp.zeros(max_n, jnp.float32), jax.random.split(key, num_trials))
    return total / (num_trials * num_groups)


def best_of_n_subsets(proxy, gold, ns, prompt_ids=None):
    """Exact expected gold reward of best-of-n over uniformly random *subsets* of n distinct
    responses of each prompt's pool (Sun et al. 2025 pick the best of N out of 500 responses per
    test prompt, without replacement), for every n in ``ns``.

    For one prompt with m responses in proxy order (ties as above), the best of a random
    n-subset is the i-th smallest (1-based) with the hypergeometric probability

        P(best = i) = C(i - 1, n - 1) / C(m, n),   i = n..m,

    so ``E_n = sum_i gold_(i) C(i - 1, n - 1) / C(m, n)``: ``E_1`` is the mean gold reward and
    ``E_m`` the gold reward of the proxy's argmax. Averaged over prompts, each weighing the same.
    Every prompt needs at least ``max(ns)`` responses.

    Returns ``[len(ns)]`` (NumPy float64).
    """
    ns = np.asarray(ns, dtype=np.int64)
    proxy, gold = np.asarray(proxy, np.float64), np.asarray(gold, np.float64)
    if proxy.shape != gold.shape or proxy.ndim != 1:
        raise ValueError(f"proxy and gold must be 1-D arrays of one length, got shapes {proxy.shape} and {gold.shape}")
    if ns.ndim != 1 or ns.size == 0 or ns.min() < 1:
        raise ValueError(f"ns must be a non-empty list of subset sizes >= 1, got {ns.tolist()}")
    prompt_ids = np.zeros(proxy.shape[0], np.int64) if prompt_ids is None else np.asarray(prompt_ids)
    _, sizes = np.unique(prompt_ids, return_counts=True)
    if ns.max() > sizes.min():
        raise ValueError(f"best-of-{ns.max()} needs {ns.max()} responses per prompt, but a prompt has only {sizes.min()}; "
                         "lower the largest n or sample more responses")
    group, num_groups = _group_ids(jnp.asarray(prompt_ids))
    order, rank, _, size = (np.asarray(x) for x in _proxy_order(jnp.asarray(proxy, jnp.float32), group))
    m, i, n = size[:, None].astype(np.float64), rank[:, None] + 1.0, ns[None, :].astype(np.float64)
    log_prob = gammaln(i) - gammaln(n) - gammaln(np.maximum(i - n, 0) + 1) - (gammaln(m + 1) - gammaln(n + 1) - gammaln(m - n + 1))
    prob_best = np.where(i >= n, np.exp(log_prob), 0.0)  # [N, len(ns)]
    return np.sum(gold[order][:, None] * prob_best, axis=0) / int(num_groups)


def within_prompt_accuracy(pred, gold, prompt_ids):
    """Pairwise accuracy of ``pred`` against the gold order over *every* pair of responses to the
    same prompt whose gold rewards differ:

        acc = mean_{(a, b): x_a = x_b, g_a > g_b} [ 1{p_a > p_b} + 1/2 * 1{p_a = p_b} ],

    each pair weighing the same (NumPy; O(sum_x m_x^2) memory per prompt)."""
    pred, gold, prompt_ids = np.asarray(pred, np.float64), np.asarray(gold, np.float64), np.asarray(prompt_ids)
    right, total = 0.0, 0
    for prompt in np.unique(prompt_ids):
        p, g = pred[prompt_ids == prompt], gold[prompt_ids == prompt]
        better = g[:, None] > g[None, :]
        right += float(np.sum(better * ((p[:, None] > p[None, :]) + 0.5 * (p[:, None] == p[None, :]))))
        total += int(better.sum())
    if total == 0:
        raise ValueError("no two responses to one prompt have different gold rewards; accuracy is undefined")
    return right / total


@jax.jit
def best_of_n_kl(n):
    """KL divergence of the best-of-n policy from the base policy, ``log n - (n - 1)/n``
    (analytic for continuous/distinct rewards; an upper bound otherwise; Stiennon et al. 2020,
    Beirami et al. 2024 "Theoretical guarantees on the best-of-n alignment policy")."""
    n = jnp.asarray(n, jnp.float32)
    return jnp.log(n) - (n - 1.0) / n
