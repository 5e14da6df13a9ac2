"""The exact best-of-n policy of a small token MDP.

Draw n responses from a base policy pi and keep the one with the highest reward. Over an
enumerable tree the resulting distribution is exact: with responses sorted by reward and F the
base policy's CDF, a response y (of probability p(y)) in a tie group of total mass m spanning
[F_lo, F_hi] is selected with probability

    p_bon(y) = (p(y) / m) (F_hi^n - F_lo^n).

Its KL to the base policy is at most log n - (n - 1)/n, with equality in the continuous limit
(Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy"); the gap is
small when no single response carries much probability.
"""

from __future__ import annotations

import numpy as np

from jirl.mdp import oracle


def complete_sequences(spec: oracle.TreeSpec, log_probs, rewards):
    """Every complete response of every prompt: ``(log_p [P, S], returns [P, S])`` with S the
    number of complete responses per prompt (ordered by depth, then state, then action)."""
    joint = oracle.sequence_log_probs(spec, log_probs)
    to_state = [np.zeros((spec.num_prompts, 1))]
    for t in range(spec.horizon - 1):
        step = to_state[t][..., None] + np.asarray(rewards[t])
        to_state.append(step[..., spec.continuing_ids].reshape(spec.num_prompts, -1))
    log_p, returns = [], []
    for t in range(spec.horizon):
        terminal = oracle.terminal_mask(spec, t)
        log_p.append(np.asarray(joint[t])[..., terminal].reshape(spec.num_prompts, -1))
        returns.append((to_state[t][..., None] + np.asarray(rewards[t]))[..., terminal].reshape(spec.num_prompts, -1))
    return np.concatenate(log_p, axis=1), np.concatenate(returns, axis=1)


def best_of_n_probabilities(probs: np.ndarray, returns: np.ndarray, n: int) -> np.ndarray:
    """``p_bon [S]`` of one prompt's responses (``probs``, ``returns`` of shape ``[S]``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    levels, group = np.unique(returns, return_inverse=True)
    mass = np.bincount(group, weights=probs, minlength=len(levels))
    upper = np.cumsum(mass)
    lower = upper - mass
    group_prob = np.clip(upper, 0, 1) ** n - np.clip(lower, 0, 1) ** n
    share = np.divide(probs, mass[group], out=np.zeros_like(probs), where=mass[group] > 0)
    return share * group_prob[group]


def best_of_n_stats(spec: oracle.TreeSpec, log_probs, rewards, n: int) -> dict:
    """Exact ``expected_reward`` and ``kl_to_base`` (nats) of best-of-n, averaged over prompts."""
    log_p, returns = complete_sequences(spec, log_probs, rewards)
    probs = np.exp(log_p)
    reward, kl = 0.0, 0.0
    for prompt, weight in enumerate(spec.prompt_weights):
        bon = best_of_n_probabilities(probs[prompt], returns[prompt], n)
        support = bon > 0
        reward += weight * float(np.sum(bon * returns[prompt]))
        kl += weight * float(np.sum(bon[support] * (np.log(bon[support]) - log_p[prompt][support])))
    return {"expected_reward": reward, "kl_to_base": kl}


def best_of_n_kl_bound(n: int) -> float:
    """log n - (n - 1)/n."""
    return float(np.log(n) - (n - 1) / n)
