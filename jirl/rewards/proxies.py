"""Proxy reward models and ensembles of them, as studies of reward over-optimisation use them.

A proxy is a ``SequenceRewardModel`` trained with the Bradley-Terry loss on labelled pairs from
a pool of responses. Proxies of one architecture train side by side as one vmapped program
(``train_proxies``), score a pool together (``score_pool``), and an RL run optimises an
ensemble of them aggregated by ``aggregate_ensemble`` (``ensemble_reward_fn``; a single proxy
is the ensemble of one).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jirl.eval.setting import Setting
from jirl.models.scoring import response_log_probs, response_mask
from jirl.rewards.ensemble import aggregate_ensemble
from jirl.rewards.losses import preference_objective
from jirl.rewards.models import sequence_reward_fn, terminal_rewards
from jirl.rl.kl import kl_penalized_rewards
from jirl.train.seeds import make_multi_seed_step
from jirl.train.step import init_train_state


def train_proxies(
    graphdef, inits: Sequence, pool: dict, pairs, num_pairs: Sequence[int], *, optimizer: optax.GradientTransformation,
    steps: int, batch_size: int, key, order_seeds: Sequence,
):
    """Train one proxy per member, all of ``graphdef``, as one vmapped program with the BT loss
    (Bradley & Terry 1952; Ouyang et al. 2022)

        L = -E_{(y+, y-)} log sigma(r(x, y+) - r(x, y-)).

    Member ``m`` starts from ``inits[m]`` (its optimiser state from ``split(key)[m]``) and, for
    ``steps`` steps, sees minibatches of ``batch_size`` pairs drawn uniformly from the first
    ``num_pairs[m]`` labelled pairs only, in the order of ``np.random.default_rng(order_seeds[m])``.
    ``pairs = (chosen, rejected)``: indices into ``pool`` (``tokens``, ``prompt_len``,
    ``response_len``). Returns the trained parameters stacked ``[members, ...]``."""
    if not len(inits) == len(num_pairs) == len(order_seeds):
        raise ValueError(f"one init, pair count and order seed per member; got {len(inits)}, {len(num_pairs)}, {len(order_seeds)}")
    params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *inits)
    keys = jax.random.split(key, len(inits))
    states = jax.vmap(lambda p, k: init_train_state(p, optimizer, k))(params, keys)
    step = make_multi_seed_step(preference_objective(sequence_reward_fn(graphdef), "bt"), optimizer, shared_batch=False)
    chosen, rejected = pairs
    rngs = [np.random.default_rng(seed) for seed in order_seeds]
    for _ in range(steps):
        rows = np.stack([rng.integers(0, n, batch_size) for rng, n in zip(rngs, num_pairs)])
        c, r = chosen[rows], rejected[rows]  # [members, batch] pool indices
        batch = {
            "chosen": pool["tokens"][c], "rejected": pool["tokens"][r], "prompt_len": pool["prompt_len"][c],
            "chosen_len": pool["response_len"][c], "rejected_len": pool["response_len"][r],
        }
        states, _ = step(states, batch)
    return states.full_params


def score_pool(graphdef, params, pool: dict, chunk: int = 4096) -> np.ndarray:
    """Scores ``[members, N]`` of every response of ``pool`` (``tokens``, ``length``) under
    stacked proxies ``params``, in chunks of ``chunk`` responses."""
    score = jax.jit(jax.vmap(sequence_reward_fn(graphdef), in_axes=(0, None, None)))
    n = len(pool["length"])
    return np.concatenate(
        [np.asarray(score(params, pool["tokens"][i : i + chunk], pool["length"][i : i + chunk])) for i in range(0, n, chunk)], axis=1
    )


def ensemble_reward_fn(setting: Setting, reward_graphdef, ensemble: dict, policy=None):
    """The RL loop's ``reward_fn(tokens, prompt_lens, response_lens) -> [B, horizon]`` of an
    ensemble of proxies optimised by the policy of ``setting``. ``ensemble``: ``params`` (``[K,
    ...]`` stacked proxies of ``reward_graphdef``), ``min`` (bool) and ``k`` (the aggregation:
    ``min`` over the K scores, else ``mean - k std``; Coste et al. 2024; ``k = 0`` is the mean,
    and K copies of one proxy are that proxy) and ``kl_coef``. All may be traced (one ensemble
    per vmapped row). The aggregated score is paid at the last response step; with ``policy``
    (its parameters), minus ``kl_coef`` times the per-token log-ratio to the setting's reference
    (``kl_penalized_rewards``, the KL-in-the-reward of Ziegler et al. 2019)."""
    task, graphdef, reference = setting.task, setting.graphdef, setting.reference
    score = jax.vmap(sequence_reward_fn(reward_graphdef), in_axes=(0, None, None))

    def reward_fn(tokens, prompt_lens, response_lens):
        scores = score(ensemble["params"], tokens, prompt_lens + response_lens)
        aggregated = jnp.where(
            ensemble["min"], aggregate_ensemble(scores, "min"), aggregate_ensemble(scores, "mean_minus_std", ensemble["k"])
        )
        rewards = terminal_rewards(aggregated, response_lens, task.horizon)
        if policy is None:
            return rewards
        log_probs = response_log_probs(graphdef, policy, tokens, prompt_lens, task.horizon)
        ref_log_probs = response_log_probs(graphdef, reference, tokens, prompt_lens, task.horizon)
        mask = response_mask(response_lens, task.horizon)
        return kl_penalized_rewards(rewards, log_probs, ref_log_probs, mask, ensemble["kl_coef"])

    return reward_fn
