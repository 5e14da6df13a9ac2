"""Scalar heads on a transformer's final hidden states.

- ``ValueHead``: V(s_t) for every position (a critic for PPO/GAE).
- ``TokenRewardHead``: one reward per position (process / token-level reward models).
- ``SequenceRewardHead``: one reward per sequence, read at the last non-pad token
  (Bradley-Terry style outcome reward models).

All take ``hidden [batch, time, d_model]``; buffers are left-aligned (see ``transformer.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jirl.models.transformer import Transformer, TransformerConfig


class _LinearScalar(nnx.Module):
    def __init__(self, d_model: int, *, rngs: nnx.Rngs):
        self.proj = nnx.Linear(d_model, 1, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)

    def per_position(self, hidden: jax.Array) -> jax.Array:
        return self.proj(hidden)[..., 0].astype(jnp.float32)


class ValueHead(_LinearScalar):
    """Per-position value estimate, ``[batch, time]``."""

    def __call__(self, hidden):
        return self.per_position(hidden)


class TokenRewardHead(_LinearScalar):
    """Per-position reward, ``[batch, time]``."""

    def __call__(self, hidden):
        return self.per_position(hidden)


def last_token_index(lengths: jax.Array) -> jax.Array:
    """Index of the last real token of each left-aligned sequence of ``lengths`` tokens."""
    return jnp.maximum(lengths - 1, 0)


class SequenceRewardHead(_LinearScalar):
    """One reward per sequence: the linear head applied at the last non-pad token, ``[batch]``."""

    def __call__(self, hidden, lengths):
        per_position = self.per_position(hidden)
        index = last_token_index(lengths)[:, None]
        return jnp.take_along_axis(per_position, index, axis=1)[:, 0]


class SequenceRewardModel(nnx.Module):
    """A transformer backbone with a ``SequenceRewardHead``: ``r(tokens[:length])``."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.backbone = Transformer(config, rngs=rngs)
        self.head = SequenceRewardHead(config.d_model, rngs=rngs)

    def __call__(self, tokens, lengths):
        return self.head(self.backbone(tokens).hidden, lengths)


class TokenRewardModel(nnx.Module):
    """A transformer backbone with a ``TokenRewardHead``: ``r [batch, time]``, entry ``j`` the
    reward of the token at slot ``j`` given the tokens up to it (a process / token-level RM)."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.backbone = Transformer(config, rngs=rngs)
        self.head = TokenRewardHead(config.d_model, rngs=rngs)

    def __call__(self, tokens):
        return self.head(self.backbone(tokens).hidden)


class ValueModel(nnx.Module):
    """A critic: a transformer backbone with a ``ValueHead``, ``V [batch, time]`` where entry
    ``j`` is the value of the state whose last token sits at slot ``j``."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.backbone = Transformer(config, rngs=rngs)
        self.head = ValueHead(config.d_model, rngs=rngs)

    def __call__(self, tokens):
        return self.head(self.backbone(tokens).hidden)
