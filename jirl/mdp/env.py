"""The token-level MDP (DESIGN.md contract 5).

State: a left-aligned token buffer ``[batch, prompt_width + horizon]``, the prompt lengths,
the current lengths (the next slot to write) and done flags. Action: the next token id.
Transition: append the token (deterministic). Termination: EOS or ``horizon`` response tokens.
Reward: ``task.step_reward`` for the action just written, so a sparse outcome reward lands on
the last valid action and a per-token reward on every action. ``reset``/``step`` are pure and
jittable; pass the task with ``functools.partial`` (it is static).

Rewards over whole responses are ``[batch, horizon]`` arrays (contract 4), indexed by response
step ``t`` (the token at buffer slot ``prompt_len + t``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jirl.checks import check_lengths


@struct.dataclass
class MDPState:
    """The batched MDP state: token buffers ``tokens [batch, prompt_width + horizon]`` (int32,
    padded with EOS), ``prompt_lens [batch]``, ``lengths [batch]`` (filled slots, i.e. the next
    slot to write) and ``done [batch]`` (bool)."""

    tokens: jax.Array  # [batch, prompt_width + horizon] int32, padded with eos
    prompt_lens: jax.Array  # [batch] int32
    lengths: jax.Array  # [batch] int32, number of filled slots = next slot to write
    done: jax.Array  # [batch] bool

    @property
    def response_steps(self) -> jax.Array:
        """Number of actions taken so far in each row."""
        return self.lengths - self.prompt_lens


def reset(prompt_tokens, prompt_lens, horizon: int, eos_id: int) -> MDPState:
    """Initial state for left-aligned prompts ``[batch, width]`` with ``horizon`` free slots."""
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_lens = jnp.asarray(prompt_lens, jnp.int32)
    batch, width = prompt_tokens.shape
    check_lengths(prompt_lens, width)  # a task reads the token before each action
    in_prompt = jnp.arange(width)[None, :] < prompt_lens[:, None]
    tokens = jnp.full((batch, width + horizon), eos_id, jnp.int32)
    tokens = tokens.at[:, :width].set(jnp.where(in_prompt, prompt_tokens, eos_id))
    return MDPState(tokens=tokens, prompt_lens=prompt_lens, lengths=prompt_lens, done=jnp.zeros(batch, bool))


def step(task, state: MDPState, actions: jax.Array):
    """Append ``actions [batch]``; returns ``(state, reward [batch], done [batch])``.

    Rows already done are left unchanged and get reward 0.
    """
    actions = jnp.asarray(actions, jnp.int32)
    active = ~state.done
    rows = jnp.arange(actions.shape[0])
    slot = jnp.minimum(state.lengths, state.tokens.shape[1] - 1)
    tokens = state.tokens.at[rows, slot].set(jnp.where(active, actions, state.tokens[rows, slot]))
    t = state.response_steps
    terminal = (actions == task.eos_id) | (t + 1 >= task.horizon)
    reward = task.step_reward(tokens, state.prompt_lens, t, terminal)
    reward = jnp.where(active, reward, 0.0)
    new_state = MDPState(
        tokens=tokens,
        prompt_lens=state.prompt_lens,
        lengths=state.lengths + active.astype(jnp.int32),
        done=state.done | terminal,
    )
    return new_state, reward, new_state.done


def rollout(task, state: MDPState, actions: jax.Array):
    """Apply ``actions [batch, horizon]`` with ``lax.scan``; returns the final state and
    ``rewards [batch, horizon]``, ``dones [batch, horizon]`` (done *after* each step)."""

    def body(state, step_actions):
        state, reward, done = step(task, state, step_actions)
        return state, (reward, done)

    state, (rewards, dones) = jax.lax.scan(body, state, jnp.swapaxes(actions, 0, 1))
    return state, rewards.T, dones.T


def sequence_rewards(task, tokens, prompt_lens, response_lens) -> jax.Array:
    """Dense rewards ``[batch, horizon]`` of finished responses in left-aligned buffers.

    Entry ``t`` is the reward of response step ``t``; the last valid step is terminal; steps
    past ``response_lens`` are 0. Equals the rewards that ``step`` hands out one at a time.
    """
    horizon = task.horizon
    tokens, prompt_lens, response_lens = (jnp.asarray(x, jnp.int32) for x in (tokens, prompt_lens, response_lens))

    def reward_at(t):
        t_vec = jnp.full_like(prompt_lens, t)
        return task.step_reward(tokens, prompt_lens, t_vec, t_vec == response_lens - 1)

    rewards = jax.vmap(reward_at, out_axes=1)(jnp.arange(horizon))
    return jnp.where(jnp.arange(horizon)[None, :] < response_lens[:, None], rewards, 0.0)
