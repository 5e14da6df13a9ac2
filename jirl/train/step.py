"""Train state and the compiled update step (DESIGN.md contracts 1 and 2).

``make_update_step(loss_fn, optimizer)`` turns any objective

    loss_fn(params, batch, key) -> (LossOutput, metrics)

into one jitted ``step(state, batch) -> (state, metrics)`` with the state donated. The PRNG
key lives in the state (so a checkpoint resumes the exact random stream); each step splits it.

Gradient accumulation splits the batch into ``accumulation_steps`` micro-batches, sums the
gradients of the loss *totals* and the counts, and divides once at the end, so the update
equals the full-batch one for any aggregation (token-mean, sequence-mean, ...). Under
``jax.jit`` with a batch sharded over devices the sums run over the global batch, so data
parallelism gives the same update too.

Mixed precision: build the model with ``TransformerConfig(dtype="bfloat16")``; parameters,
gradients and optimizer state stay float32 (master weights), matmuls run in bf16.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jirl.train.losses import LossFn, safe_divide


@struct.dataclass
class TrainState:
    """The state an update step carries: trainable ``params`` and ``frozen`` parameters (nnx
    states), the optimizer state ``opt_state``, the number of updates applied ``step`` (int32)
    and the typed PRNG ``key`` (split once per step)."""

    params: Any  # trainable parameters (an nnx.State)
    frozen: Any  # parameters that are never updated (an nnx.State, possibly empty)
    opt_state: Any
    step: jax.Array  # int32 scalar: number of updates applied
    key: jax.Array  # typed PRNG key, split once per step

    @property
    def full_params(self):
        """Trainable and frozen parameters together, as the model expects them."""
        return nnx.merge_state(self.params, self.frozen)


def everything(path, value) -> bool:
    """The default ``trainable`` filter: every parameter is trained."""
    return True


def init_train_state(params, optimizer: optax.GradientTransformation, key, trainable=everything) -> TrainState:
    """Split ``params`` into trainable and frozen parts by the nnx filter ``trainable``
    (e.g. ``nnx.PathContains("lm_head")`` or ``lambda path, value: ...``) and init the optimizer
    on the trainable part only."""
    # The state owns copies: donating it to the step then never invalidates the caller's arrays
    # (for example a reference model built from the same initial parameters).
    params = jax.tree_util.tree_map(jnp.copy, params)
    trainable_params, frozen = nnx.split_state(params, trainable, ...)
    if not jax.tree_util.tree_leaves(trainable_params):
        raise ValueError("the trainable filter matched no parameters; nothing would be trained")
    return TrainState(
        params=trainable_params,
        frozen=frozen,
        opt_state=optimizer.init(trainable_params),
        step=jnp.zeros((), jnp.int32),
        key=jax.random.clone(key),  # a copy too: the caller may reuse its key after the state is donated
    )


def split_micro_batches(batch: dict, num: int) -> dict:
    """``[B, ...] -> [num, B/num, ...]``, micro-batch ``j`` taking rows ``j, j+num, ...`` (strided,
    so each micro-batch of a device-sharded batch stays spread over all devices)."""

    def split(x):
        if x.shape[0] % num:
            raise ValueError(
                f"batch size {x.shape[0]} is not divisible by accumulation_steps={num}; "
                "pick a batch size that is a multiple of it"
            )
        return jnp.swapaxes(x.reshape((x.shape[0] // num, num) + x.shape[1:]), 0, 1)

    return jax.tree_util.tree_map(split, batch)


def accumulate_gradients(loss_fn: LossFn, params, frozen, batch: dict, key, num_micro_batches: int):
    """Summed gradient of the loss totals over micro-batches, with the summed total and count
    and the per-micro-batch mean of the objective's own metrics."""

    def total_and_aux(trainable, micro_batch, micro_key):
        out, metrics = loss_fn(nnx.merge_state(trainable, frozen), micro_batch, micro_key)
        return out.total, (out, metrics)

    grad_fn = jax.grad(total_and_aux, has_aux=True)
    if num_micro_batches == 1:
        grads, (out, metrics) = grad_fn(params, batch, key)
        return grads, out.total, out.count, metrics

    def body(carry, inputs):
        grads_sum, total, count = carry
        micro_batch, micro_key = inputs
        grads, (out, metrics) = grad_fn(params, micro_batch, micro_key)
        grads_sum = jax.tree_util.tree_map(jnp.add, grads_sum, grads)
        return (grads_sum, total + out.total, count + out.count), metrics

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    micro = (split_micro_batches(batch, num_micro_batches), jax.random.split(key, num_micro_batches))
    (grads, total, count), metrics = jax.lax.scan(body, (zeros, 0.0, 0.0), micro)
    return grads, total, count, jax.tree_util.tree_map(lambda m: jnp.mean(m, axis=0), metrics)


def make_update_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, accumulation_steps: int = 1, donate: bool = True
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Compile ``loss_fn`` and ``optimizer`` into ``step(state, batch) -> (state, metrics)``
    (``update_fn`` under ``jax.jit``, the state donated)."""
    step = update_fn(loss_fn, optimizer, accumulation_steps)
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def update_fn(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, accumulation_steps: int = 1
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The pure (un-jitted) update ``step(state, batch) -> (state, metrics)``.

    Metrics: ``loss`` (= sum of totals / sum of counts, exact), ``count``, ``grad_norm``,
    ``nonfinite`` (True when the loss, gradient or update was NaN/inf, e.g. a NaN learning rate:
    the update is then skipped and
    the state returned unchanged apart from the key, so the caller can stop with the last good
    state), and the objective's own metrics (mean over micro-batches).
    """
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")

    def step(state: TrainState, batch: dict):
        key, step_key = jax.random.split(state.key)
        grads, total, count, objective_metrics = accumulate_gradients(
            loss_fn, state.params, state.frozen, batch, step_key, accumulation_steps
        )
        grads = jax.tree_util.tree_map(lambda g: safe_divide(g, count), grads)
        loss = safe_divide(total, count)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
        keep_if_bad = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = state.replace(
            params=keep_if_bad(params, state.params),
            opt_state=keep_if_bad(opt_state, state.opt_state),
            step=state.step + finite.astype(jnp.int32),
            key=key,
        )
        metrics = {"loss": loss, "count": count, "grad_norm": grad_norm, "nonfinite": ~finite, **objective_metrics}
        return new_state, metrics

    return step
