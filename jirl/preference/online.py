"""Online (iterative) DPO: sample pairs from the current policy, label them, update, repeat
(Guo et al. 2024, "Direct language model alignment from online AI feedback"; Xiong et al. 2024,
"Iterative preference learning from human feedback").

Each iteration draws two responses per prompt from the current policy, scores both with a
reward function (the task's gold reward by default, or a learned reward model through
``jirl.rewards.models.reward_model_rewards``), labels the pair with the simulated Bradley-Terry
annotator of ``jirl.rewards.annotation`` and takes gradient steps of a paired preference loss.
The reference stays the initial policy: train ``params = with_reference(policy, reference)``.
"""

from __future__ import annotations

from typing import Annotated

import dataclasses

import jax
import jax.numpy as jnp

from jirl.config import at_least, finite, non_negative, positive
from jirl.mdp.env import sequence_rewards
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.rewards.annotation import annotate
from jirl.rl.advantages import check_rewards


@dataclasses.dataclass
class OnlineConfig:
    """Settings of online DPO: ``prompts_per_iteration`` (one fresh pair each),
    ``updates_per_iteration`` gradient steps per batch, the annotator's Bradley-Terry inverse
    temperature ``beta_ann`` and the sampling ``temperature``."""

    prompts_per_iteration: Annotated[int, at_least(1)] = 32  # one pair per prompt
    updates_per_iteration: Annotated[int, at_least(1)] = 1
    beta_ann: Annotated[float, finite, non_negative] = 1.0  # the annotator's Bradley-Terry inverse temperature
    temperature: Annotated[float, finite, positive] = 1.0


def sample_pairs(key, task, graphdef, params, config: OnlineConfig, reward_fn=None) -> tuple[dict, dict]:
    """A labelled pair batch of two fresh responses per prompt, and the pairs' mean reward."""
    prompt_key, sample_key, label_key = jax.random.split(key, 3)
    prompts, prompt_lens = task.sample_prompts(prompt_key, config.prompts_per_iteration)
    sampling = SamplingConfig(max_new_tokens=task.horizon, eos_id=task.eos_id, temperature=config.temperature)
    out = generate(graphdef, params, jnp.repeat(prompts, 2, axis=0), jnp.repeat(prompt_lens, 2), sample_key, sampling)
    reward_fn = reward_fn or (lambda t, p, r: sequence_rewards(task, t, p, r))
    rewards = reward_fn(out.tokens, out.prompt_lens, out.response_lens)
    check_rewards(rewards, out.response_mask)
    returns = jnp.sum(jnp.where(out.response_mask, rewards, 0.0), axis=1)
    a, b = jnp.arange(0, 2 * config.prompts_per_iteration, 2), jnp.arange(1, 2 * config.prompts_per_iteration, 2)
    a_wins = annotate(label_key, returns[a], returns[b], config.beta_ann) > 0.5
    chosen, rejected = jnp.where(a_wins, a, b), jnp.where(a_wins, b, a)
    batch = {
        "chosen": out.tokens[chosen], "rejected": out.tokens[rejected], "prompt_len": prompt_lens,
        "chosen_len": out.response_lens[chosen], "rejected_len": out.response_lens[rejected],
    }
    return batch, {"reward": float(jnp.mean(returns)), "truncated_fraction": float(jnp.mean(out.truncated))}


def online_iteration(key, task, graphdef, state, step_fn, config: OnlineConfig, reward_fn=None):
    """Sample and label pairs with the current policy, then ``updates_per_iteration`` steps of
    ``step_fn`` (``make_update_step(preference_loss(graphdef, ...), ...)`` on params holding
    ``policy`` and ``reference``)."""
    policy = state.full_params["policy"]
    batch, metrics = sample_pairs(key, task, graphdef, policy, config, reward_fn)
    for _ in range(config.updates_per_iteration):
        state, step_metrics = step_fn(state, batch)
    metrics.update({f"update/{k}": float(v) for k, v in step_metrics.items() if jnp.ndim(v) == 0})
    return state, metrics
