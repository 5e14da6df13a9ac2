"""Pools of a policy's responses to a task's prompts, with their gold returns: the samples a
study labels preferences on, runs best-of-n over or evaluates a policy with."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jirl.mdp.env import sequence_rewards
from jirl.mdp.sampler import SampleOutput, SamplingConfig, generate


def gold_returns(task, tokens, prompt_lens, response_lens):
    """The task's (gold) return of each finished response ``[B]``: its step rewards summed."""
    return jnp.sum(sequence_rewards(task, tokens, prompt_lens, response_lens), axis=1)


def sample_responses(task, graphdef, params, key, prompt_ids: np.ndarray, chunk: int = 1024) -> dict:
    """One response of the policy (``graphdef``, ``params``) to each of the task's prompts
    ``prompt_ids`` (indices into ``task.prompts``, repeats for several responses), generated in
    chunks of ``chunk`` rows (one shape, one compile; chunk ``i`` draws from
    ``fold_in(key, i)``). Returns numpy arrays ``tokens``, ``prompt_len``, ``response_len``,
    ``gold`` (``gold_returns``), ``length`` (prompt + response) and ``prompt_id``, one row per
    entry of ``prompt_ids``."""
    tokens, lens, _ = task.prompts
    sampling = SamplingConfig(max_new_tokens=task.horizon, eos_id=task.eos_id)
    padded = np.resize(prompt_ids, -(-len(prompt_ids) // chunk) * chunk)  # the last chunk filled up
    parts = []
    for i, start in enumerate(range(0, len(padded), chunk)):
        ids = padded[start : start + chunk]
        out = generate(graphdef, params, jnp.asarray(tokens[ids]), jnp.asarray(lens[ids]), jax.random.fold_in(key, i), sampling)
        gold = gold_returns(task, out.tokens, out.prompt_lens, out.response_lens)
        parts.append({"tokens": out.tokens, "prompt_len": out.prompt_lens, "response_len": out.response_lens, "gold": gold})
    pool = {k: np.concatenate([np.asarray(p[k]) for p in parts])[: len(prompt_ids)] for k in parts[0]}
    pool["length"] = pool["prompt_len"] + pool["response_len"]
    pool["prompt_id"] = np.asarray(prompt_ids)
    return pool


class GroupSample(NamedTuple):
    """``sample_groups``' draw: the ``responses`` (a ``SampleOutput``, ``group_size`` rows per
    prompt, consecutive) and the ``prompts [P, Lp]`` and ``prompt_lens [P]`` they answer."""

    responses: SampleOutput
    prompts: jax.Array
    prompt_lens: jax.Array


def sample_groups(task, graphdef, params, key, num_prompts: int, group_size: int, temperature: float = 1.0) -> GroupSample:
    """``num_prompts`` prompts drawn from the task, each answered ``group_size`` times by the
    policy (``graphdef``, ``params``) at ``temperature``: the groups of RLOO/GRPO and of
    within-prompt preference pairs. Pure and jittable (vmappable over keys): the prompts come
    from ``split(key)[0]``, the responses from ``split(key)[1]``."""
    prompt_key, sample_key = jax.random.split(key)
    prompts, prompt_lens = task.sample_prompts(prompt_key, num_prompts)
    sampling = SamplingConfig(max_new_tokens=task.horizon, eos_id=task.eos_id, temperature=temperature)
    out = generate(
        graphdef, params, jnp.repeat(prompts, group_size, axis=0), jnp.repeat(prompt_lens, group_size), sample_key, sampling
    )
    return GroupSample(out, prompts, prompt_lens)
