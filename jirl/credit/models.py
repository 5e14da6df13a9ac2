"""What the credit schemes read from models, on the response time axis ``[batch, time]``.

- ``prefix_potentials``: ``Phi(s_t)`` for potential shaping, a sequence reward model or a critic
  read on every prefix (causal models score all prefixes in one forward pass).
- ``scores_and_attention``: a transformer reward model's score and its last-token attention
  over the response (attention-based credit, ABC).
- ``token_rewards``: a ``TokenRewardModel``'s per-token rewards (return decomposition).

A model that cannot provide what a scheme needs is refused with an error naming the model and
the fix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jirl.config import JirlError
from jirl.models.scoring import gather_response, response_mask
from jirl.models.transformer import Transformer


def _backbone_and_head(model, what: str):
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if not isinstance(backbone, Transformer) or not hasattr(head, "per_position"):
        raise JirlError(
            f"{type(model).__name__} cannot give {what}: it needs a jirl transformer backbone (.backbone) and a "
            "scalar head (.head); use a SequenceRewardModel, ValueModel or TokenRewardModel from jirl.models.heads"
        )
    return backbone, head


def prefix_potentials(graphdef, params, tokens, prompt_lens, horizon: int):
    """``Phi(s_t) [B, horizon + 1]``: the model's scalar read at the last token of each state
    ``s_t`` = prompt + the first ``t`` response tokens (slot ``prompt_len + t - 1``), for
    ``t = 0 .. horizon``. For a ``SequenceRewardModel`` that is its score of the prefix; for a
    ``ValueModel``, ``V(s_t)``."""
    backbone, head = _backbone_and_head(nnx.merge(graphdef, params), "potentials")
    per_slot = head.per_position(backbone(tokens).hidden)
    return gather_response(per_slot, prompt_lens, horizon + 1, shift=-1)


def token_rewards(graphdef, params, tokens, prompt_lens, horizon: int):
    """``[B, horizon]`` per-token rewards of a ``TokenRewardModel`` (entry ``t`` scores the
    token at slot ``prompt_len + t`` given the tokens before it); mask past each response."""
    backbone, head = _backbone_and_head(nnx.merge(graphdef, params), "token rewards")
    return gather_response(head.per_position(backbone(tokens).hidden), prompt_lens, horizon)


def scores_and_attention(graphdef, params, tokens, prompt_lens, response_lens, horizon: int, layer: int = -1):
    """A ``SequenceRewardModel``'s scores ``[B]`` and its attention over the response
    ``[B, horizon]`` (for ABC, Chan et al. 2024).

    The attention is the probability that the scoring query (the last real token, where the
    head reads the score) puts on each response token in layer ``layer`` (default: the last),
    averaged over heads and renormalised over the response tokens so each row sums to 1 (0
    past the response). The numbers are the model's own softmax attention probabilities.
    """
    model = nnx.merge(graphdef, params)
    if not isinstance(getattr(model, "backbone", None), Transformer):
        raise JirlError(
            f"attention-based credit needs a reward model with attention weights; {type(model).__name__} has no "
            "transformer backbone exposing them. Use a jirl SequenceRewardModel (transformer + head), or pick a "
            "scheme that needs no attention (shaping, uniform, decomposition)"
        )
    backbone, head = _backbone_and_head(model, "attention")
    out = backbone(tokens, return_attention=True)
    num_layers = len(out.attention)
    if not -num_layers <= layer < num_layers:
        raise JirlError(f"layer={layer} is out of range for a reward model with {num_layers} layers")
    lengths = prompt_lens + response_lens
    last = jnp.maximum(lengths - 1, 0)
    per_slot = head.per_position(out.hidden)
    scores = jnp.take_along_axis(per_slot, last[:, None], axis=1)[:, 0]
    probs = jnp.mean(out.attention[layer], axis=1)  # [B, query, key], averaged over heads
    from_last = jnp.take_along_axis(probs, last[:, None, None], axis=1)[:, 0]  # [B, key]
    attention = jnp.where(response_mask(response_lens, horizon), gather_response(from_last, prompt_lens, horizon), 0.0)
    return scores, attention / jnp.maximum(jnp.sum(attention, axis=1, keepdims=True), 1e-30)


# Input functions for ``jirl.credit.schemes.with_credit``: (tokens, prompt_lens, response_lens) -> dict.


def potential_inputs(graphdef, params, horizon: int):
    """``{"potentials": Phi [B, horizon + 1]}`` from a reward model or critic (shaping)."""

    @jax.jit
    def inputs(tokens, prompt_lens, response_lens):
        return {"potentials": prefix_potentials(graphdef, params, tokens, prompt_lens, horizon)}

    return inputs


def attention_inputs(graphdef, params, horizon: int, layer: int = -1):
    """``{"attention": [B, horizon]}`` from a transformer reward model (ABC). Checks the model
    now, so a reward model without attention is refused before training starts."""
    _backbone_and_head(nnx.merge(graphdef, params), "attention")

    @jax.jit
    def inputs(tokens, prompt_lens, response_lens):
        _, attention = scores_and_attention(graphdef, params, tokens, prompt_lens, response_lens, horizon, layer)
        return {"attention": attention}

    return inputs


def implicit_inputs(graphdef, params, reference_params, horizon: int, beta: float, name: str = "implicit_rewards"):
    """``{name: beta log pi/pi_ref [B, horizon]}`` of a policy/reference pair: a DPO policy for
    RTO (``implicit_rewards``) or an implicit PRM for PRIME (``process_rewards``)."""
    from jirl.preference.implicit import implicit_token_rewards

    @jax.jit
    def inputs(tokens, prompt_lens, response_lens):
        rewards = implicit_token_rewards(graphdef, params, reference_params, tokens, prompt_lens, response_lens, horizon, beta)
        return {name: rewards}

    return inputs


def token_reward_inputs(graphdef, params, horizon: int):
    """``{"predicted_rewards": [B, horizon]}`` of a ``TokenRewardModel`` (return decomposition)."""

    @jax.jit
    def inputs(tokens, prompt_lens, response_lens):
        return {"predicted_rewards": token_rewards(graphdef, params, tokens, prompt_lens, horizon)}

    return inputs
