"""Exact expected preference losses on an enumerable task.

With every complete response of every prompt enumerated (``oracle.complete_response_tokens``),
the population loss of a paired objective under Bradley-Terry labels is a finite weighted sum
over ordered pairs (y_i, y_j) of responses to the same prompt x:

    L(theta) = sum_x w_x sum_{i != j} mu_x(y_i) mu_x(y_j) P(y_i > y_j) l(theta; chosen=y_i, rejected=y_j),
    P(y_i > y_j) = sigma(beta_ann (R(x, y_i) - R(x, y_j))).

``exact_preference_pairs`` returns that sum as one weighted pair batch (``weight`` column), so
any ``preference_loss`` evaluates it exactly through the ordinary training engine. With
``beta_ann = 1`` the DPO loss at ``beta`` is minimised by the oracle's pi*_beta.
"""

from __future__ import annotations

import numpy as np

from jirl.mdp import oracle
from jirl.mdp.best_of_n import complete_sequences


def exact_preference_pairs(spec: oracle.TreeSpec, rewards, beta_ann: float = 1.0, response_log_probs=None) -> dict:
    """All ordered within-prompt pairs of complete responses as a weighted pair batch.

    ``response_log_probs`` (a policy tree) sets the pair distribution mu; the default is uniform
    over each prompt's complete responses. The weights sum to 1. Also returns the per-prompt
    returns ``[P, S]`` and mu ``[P, S]`` under ``"returns"``/``"mu"`` for closed forms.
    """
    tree = response_log_probs if response_log_probs is not None else oracle.uniform_log_probs(spec)
    log_p, returns = complete_sequences(spec, tree, rewards)
    tokens, lengths = oracle.complete_response_tokens(spec)
    num_prompts, num_responses, _ = tokens.shape
    mu = np.full((num_prompts, num_responses), 1.0 / num_responses) if response_log_probs is None else np.exp(log_p)
    i, j = np.nonzero(~np.eye(num_responses, dtype=bool))
    chosen, rejected, prompt_len, chosen_len, rejected_len, weight = [], [], [], [], [], []
    for prompt in range(num_prompts):
        preference = 1.0 / (1.0 + np.exp(-beta_ann * (returns[prompt, i] - returns[prompt, j])))
        chosen.append(tokens[prompt, i])
        rejected.append(tokens[prompt, j])
        chosen_len.append(lengths[prompt, i])
        rejected_len.append(lengths[prompt, j])
        prompt_len.append(np.full(len(i), spec.prompt_lens[prompt], np.int32))
        weight.append(spec.prompt_weights[prompt] * mu[prompt, i] * mu[prompt, j] * preference)
    weight = np.concatenate(weight)
    return {
        "chosen": np.concatenate(chosen), "rejected": np.concatenate(rejected),
        "prompt_len": np.concatenate(prompt_len), "chosen_len": np.concatenate(chosen_len),
        "rejected_len": np.concatenate(rejected_len), "weight": (weight / weight.sum()).astype(np.float32),
        "returns": returns, "mu": mu,
    }


def ipo_fixed_point(reference_log_p: np.ndarray, returns: np.ndarray, mu: np.ndarray, tau: float, beta_ann: float = 1.0) -> np.ndarray:
    """The IPO minimiser's sequence log-probs ``[P, S]`` (Azar et al. 2023, with Psi = identity):

        log pi(y) = log pi_ref(y) + (1/tau) sum_{y'} mu(y') (P(y > y') - 1/2) - log Z,

    from setting the gradient of the population IPO loss to zero; ``reference_log_p [P, S]``
    are the reference's log-probs of the complete responses.
    """
    preference = 1.0 / (1.0 + np.exp(-beta_ann * (returns[:, :, None] - returns[:, None, :])))
    score = np.einsum("pij,pj->pi", preference - 0.5, mu) / tau
    logits = reference_log_p + score
    return logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), axis=1, keepdims=True)) - logits.max(1, keepdims=True)
