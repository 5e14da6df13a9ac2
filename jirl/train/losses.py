"""Explicit loss aggregation (DESIGN.md contract 2).

An objective returns a ``LossOutput``: the *sum* of its per-unit losses and the *count* of
units (tokens, sequences or pairs). The update step divides the summed gradient by the summed
count only once, after gradient accumulation and across all devices, so

    loss = sum_i total_i / sum_i count_i

is the same number whether a batch is processed whole, in micro-batches or sharded over many
devices. Averaging per-micro-batch means instead (the common bug) over-weights micro-batches
with few valid tokens.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from jirl.registry import Registry


@struct.dataclass
class LossOutput:
    """An objective's loss as ``total`` (the sum of per-unit losses over the (micro-)batch) and
    ``count`` (the number of units, tokens, sequences or pairs, possibly fractional weights). The
    update step sums both over micro-batches and devices before dividing (contract 2)."""

    total: jax.Array  # sum of per-unit losses over the (micro-)batch
    count: jax.Array  # number of units the sum runs over

    @property
    def value(self) -> jax.Array:
        """The mean ``total / count`` (0 when nothing counts)."""
        return safe_divide(self.total, self.count)


def safe_divide(total, count):
    """``total / count``, or 0 where ``count == 0`` (counts may be fractional weights)."""
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1), 0.0)


LossFn = Callable[[Any, dict, jax.Array], tuple[LossOutput, dict]]

# Objective factories by name: ``OBJECTIVES.get(name)(graphdef, **options) -> loss_fn``. Every
# paired preference loss is one too, under its own name: ``jirl.preference.objective`` registers
# each as it is registered in ``PREFERENCE_LOSSES`` (``Registry.on_register``), plugins' included.
OBJECTIVES: Registry[Callable[..., LossFn]] = Registry("objective")


def token_mean(values: jax.Array, mask: jax.Array) -> LossOutput:
    """Mean over all valid tokens of the batch: ``sum_{b,t} m_bt l_bt / sum_{b,t} m_bt``."""
    mask = mask.astype(values.dtype)
    return LossOutput(total=jnp.sum(values * mask), count=jnp.sum(mask))


def sequence_mean_of_token_means(values: jax.Array, mask: jax.Array) -> LossOutput:
    """Mean over non-empty sequences of each sequence's token mean:
    ``(1/|B'|) sum_{b in B'} (sum_t m_bt l_bt / sum_t m_bt)``, B' = sequences with a valid token."""
    mask = mask.astype(values.dtype)
    tokens_per_sequence = jnp.sum(mask, axis=-1)
    per_sequence = jnp.sum(values * mask, axis=-1) / jnp.maximum(tokens_per_sequence, 1)
    return LossOutput(total=jnp.sum(per_sequence), count=jnp.sum(tokens_per_sequence > 0).astype(values.dtype))


def sequence_mean_of_token_sums(values: jax.Array, mask: jax.Array) -> LossOutput:
    """Mean over non-empty sequences of each sequence's token sum:
    ``(1/|B'|) sum_{b in B'} sum_t m_bt l_bt``."""
    mask = mask.astype(values.dtype)
    per_sequence = jnp.sum(values * mask, axis=-1)
    non_empty = jnp.sum(mask, axis=-1) > 0
    return LossOutput(total=jnp.sum(per_sequence), count=jnp.sum(non_empty).astype(values.dtype))


AGGREGATIONS = {
    "token_mean": token_mean,
    "sequence_mean": sequence_mean_of_token_means,
    "sequence_sum": sequence_mean_of_token_sums,
}
