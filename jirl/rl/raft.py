"""Best-of-N selection and rejection-sampling fine-tuning (RAFT).

RAFT (Dong et al. 2023, "RAFT: Reward rAnked FineTuning for generative foundation model
alignment"; also "rejection sampling fine-tuning", Touvron et al. 2023) repeats

1. sample ``n`` responses to each prompt from the current policy;
2. keep the best one per prompt by reward;
3. fine-tune on the kept responses with the SFT loss.

Each round moves the policy towards its own best-of-n distribution, so the reward rises and
the policy drifts from the reference by up to ``log n - (n-1)/n`` nats per round (the best-of-n
KL, see ``jirl.mdp.best_of_n``); there is no KL leash besides the number of rounds.
"""

from __future__ import annotations

from typing import Annotated

import dataclasses

import jax
import jax.numpy as jnp

from jirl.config import at_least, finite, positive
from jirl.mdp.env import sequence_rewards
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.rl.advantages import check_rewards


@dataclasses.dataclass
class RAFTConfig:
    """Settings of a RAFT round: ``n`` responses sampled per prompt (the best is kept),
    ``prompts_per_iteration``, ``epochs`` of SFT over the kept responses and the sampling
    ``temperature``."""

    n: Annotated[int, at_least(1)] = 8  # responses sampled per prompt; the best one is kept
    prompts_per_iteration: Annotated[int, at_least(1)] = 16
    epochs: Annotated[int, at_least(1)] = 1  # SFT passes over the kept responses per round
    temperature: Annotated[float, finite, positive] = 1.0


def best_in_groups(scores: jax.Array, group_size: int) -> jax.Array:
    """Row indices ``[num_groups]`` of the highest score in each consecutive group of
    ``group_size`` rows of ``scores [num_groups * group_size]`` (ties: the first)."""
    if scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores do not split into groups of {group_size}")
    grouped = scores.reshape(-1, group_size)
    return jnp.arange(grouped.shape[0]) * group_size + jnp.argmax(grouped, axis=1)


def select_best_of_n(key, task, graphdef, params, config: RAFTConfig, reward_fn=None) -> tuple[dict, dict]:
    """Sample ``n`` responses per prompt and keep the best by total reward.

    Returns an SFT batch (``tokens``, ``prompt_len``, ``response_len``) of the kept responses
    and metrics (mean reward of all samples and of the kept ones, truncated fraction).
    """
    prompt_key, sample_key = jax.random.split(key)
    prompts, prompt_lens = task.sample_prompts(prompt_key, config.prompts_per_iteration)
    prompts = jnp.repeat(prompts, config.n, axis=0)
    prompt_lens = jnp.repeat(prompt_lens, config.n)
    sampling = SamplingConfig(max_new_tokens=task.horizon, eos_id=task.eos_id, temperature=config.temperature)
    out = generate(graphdef, params, prompts, prompt_lens, sample_key, sampling)
    reward_fn = reward_fn or (lambda t, p, r: sequence_rewards(task, t, p, r))
    rewards = reward_fn(out.tokens, out.prompt_lens, out.response_lens)
    check_rewards(rewards, out.response_mask)
    returns = jnp.sum(jnp.where(out.response_mask, rewards, 0.0), axis=1)
    best = best_in_groups(returns, config.n)
    batch = {"tokens": out.tokens[best], "prompt_len": out.prompt_lens[best], "response_len": out.response_lens[best]}
    metrics = {
        "reward": float(jnp.mean(returns)),
        "best_reward": float(jnp.mean(returns[best])),
        "truncated_fraction": float(jnp.mean(out.truncated)),
    }
    return batch, metrics


def raft_iteration(key, task, graphdef, state, sft_step, config: RAFTConfig, reward_fn=None):
    """One RAFT round: best-of-n selection with the current policy, then ``epochs`` SFT
    updates on the kept responses. ``sft_step`` is ``make_update_step(sft_loss(graphdef), ...)``."""
    batch, metrics = select_best_of_n(key, task, graphdef, state.full_params, config, reward_fn)
    for _ in range(config.epochs):
        state, step_metrics = sft_step(state, batch)
    metrics["sft_loss"] = float(step_metrics["loss"])
    return state, metrics
