"""Implicit rewards of a policy/reference pair (DPO's reward, read per token).

For the KL-regularised optimum pi* of a token-level MDP with rewards r,

    beta log pi*(a|s) / pi_ref(a|s) = Q*(s, a) - V*(s)

(Rafailov et al. 2024, "From r to Q*: your language model is secretly a Q-function"). Summed
over a response this telescopes to R(x, y) - V*(x): the sequence reward up to a prompt-only
constant. Any policy/reference pair therefore defines dense per-token rewards
``beta (log pi - log pi_ref)`` whose sums rank responses like the reward it was trained on;
``implicit_reward_fn`` packages them as a reward function for the RL loop
(``jirl.rl.loop.collect``) and for credit assignment.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jirl.models.scoring import response_log_probs, response_mask


def implicit_token_rewards(graphdef, params, reference_params, tokens, prompt_lens, response_lens, horizon: int, beta: float, reference_graphdef=None):
    """``[B, horizon]`` per-token implicit rewards ``beta log pi(y_t|.) / pi_ref(y_t|.)``, 0
    past each response's end. ``reference_graphdef`` defaults to the policy's."""
    policy = response_log_probs(graphdef, params, tokens, prompt_lens, horizon)
    reference = response_log_probs(reference_graphdef or graphdef, reference_params, tokens, prompt_lens, horizon)
    return jnp.where(response_mask(response_lens, horizon), beta * (policy - reference), 0.0)


def implicit_sequence_rewards(graphdef, params, reference_params, tokens, prompt_lens, response_lens, horizon: int, beta: float, reference_graphdef=None):
    """``[B]`` sequence implicit rewards ``beta log pi(y|x) / pi_ref(y|x)``."""
    token_rewards = implicit_token_rewards(
        graphdef, params, reference_params, tokens, prompt_lens, response_lens, horizon, beta, reference_graphdef
    )
    return jnp.sum(token_rewards, axis=1)


def implicit_reward_fn(graphdef, params, reference_params, horizon: int, beta: float, dense: bool = True, reference_graphdef=None):
    """A reward function ``(tokens, prompt_lens, response_lens) -> [B, horizon]`` for the RL
    loop: the per-token implicit rewards (``dense=True``) or their sum on the last step."""

    @jax.jit
    def reward_fn(tokens, prompt_lens, response_lens):
        token_rewards = implicit_token_rewards(
            graphdef, params, reference_params, tokens, prompt_lens, response_lens, horizon, beta, reference_graphdef
        )
        if dense:
            return token_rewards
        last = jnp.arange(horizon)[None, :] == (response_lens[:, None] - 1)
        return jnp.where(last, jnp.sum(token_rewards, axis=1, keepdims=True), 0.0)

    return reward_fn
