"""Expert demonstrations for a task: drawn from its exact KL-regularised optimum, or from any
jirl policy through the sampler. Each comes with its dense gold rewards ``[batch, horizon]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jirl.mdp import oracle
from jirl.mdp.env import sequence_rewards
from jirl.mdp.sampler import SamplingConfig, generate, graphdef_config
from jirl.mdp.tasks import Task


@struct.dataclass
class Demonstrations:
    """A batch of ``n`` demonstrations: left-aligned token buffers ``tokens [n, prompt_width +
    horizon]`` padded with EOS, ``prompt_lens [n]``, ``response_lens [n]`` and the dense gold
    rewards ``rewards [n, horizon]`` (0 past each response)."""

    tokens: jax.Array  # [n, prompt_width + horizon], left-aligned, padded with EOS
    prompt_lens: jax.Array  # [n]
    response_lens: jax.Array  # [n]
    rewards: jax.Array  # [n, horizon] dense gold rewards, 0 past each response

    @property
    def returns(self) -> jax.Array:
        """The gold return of each demonstration, ``rewards.sum(axis=1)``, ``[n]``."""
        return self.rewards.sum(axis=1)


def _with_rewards(task: Task, tokens, prompt_lens, response_lens) -> Demonstrations:
    rewards = sequence_rewards(task, tokens, prompt_lens, response_lens)
    return Demonstrations(tokens=tokens, prompt_lens=prompt_lens, response_lens=response_lens, rewards=rewards)


def from_optimum(task: Task, key, num: int, beta: float, ref_log_probs=None) -> Demonstrations:
    """``num`` samples of pi*(y|x) ∝ pi_ref(y|x) exp(R(x,y)/beta) (uniform pi_ref by default),
    with prompts from the task's prompt distribution."""
    spec = task.tree_spec()
    if ref_log_probs is None:
        ref_log_probs = oracle.uniform_log_probs(spec)
    rewards = oracle.rewards_from_step_fn(spec, task.step_reward)
    expert = oracle.solve(spec, ref_log_probs, rewards, beta)
    samples = oracle.sample(key, spec, expert.log_probs, num)
    return _with_rewards(task, samples.tokens, samples.prompt_lens, samples.response_lens)


def from_policy(task: Task, key, num: int, graphdef, params, sampling: SamplingConfig | None = None) -> Demonstrations:
    """``num`` responses of a jirl policy (a split ``Transformer``) to the task's prompts."""
    vocab = graphdef_config(graphdef, params).vocab_size
    if vocab != task.vocab_size:
        raise ValueError(
            f"the policy's vocab_size {vocab} differs from task {task.name!r}'s vocab_size {task.vocab_size}; "
            "build the policy with TransformerConfig(vocab_size=task.vocab_size)"
        )
    sampling = sampling or SamplingConfig(max_new_tokens=task.horizon, eos_id=task.eos_id)
    if sampling.max_new_tokens != task.horizon or sampling.eos_id != task.eos_id:
        raise ValueError(
            f"sampling must use the task's horizon ({task.horizon}) and eos_id ({task.eos_id}), got "
            f"max_new_tokens={sampling.max_new_tokens}, eos_id={sampling.eos_id}"
        )
    prompt_key, sample_key = jax.random.split(key)
    prompts, prompt_lens = task.sample_prompts(prompt_key, num)
    out = generate(graphdef, params, prompts, prompt_lens, sample_key, sampling)
    return _with_rewards(task, out.tokens, out.prompt_lens, jnp.asarray(out.response_lens))
