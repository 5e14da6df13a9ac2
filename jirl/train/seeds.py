"""Many seeds (and hyper-parameters) of one small model in a single compiled program.

PureJaxRL style: the train state gets a leading "member" axis and the pure update is
``jax.vmap``-ed over it, so 8 seeds cost one compile and, on small models, little more wall
time than one.

    states = init_members(init, jax.random.split(key, 8))          # [8, ...] train states
    step = make_multi_seed_step(loss_fn, optimizer)                 # one jit over all members
    states, metrics = step(states, batch)                           # metrics["loss"]: [8]

A hyper-parameter axis works the same way when the optimizer keeps it in its state, e.g.
``optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)``: pass one value per member to
``init_members`` (``hyperparams={"learning_rate": values}``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jirl.train.losses import LossFn
from jirl.train.step import TrainState, update_fn


def init_members(init: Callable[[jax.Array], TrainState], keys: jax.Array, hyperparams: dict | None = None) -> TrainState:
    """Stacked train states, one per key: ``init(key)`` vmapped over ``keys``.

    ``hyperparams`` maps names of ``optax.inject_hyperparams`` values in the optimizer state
    to one value per member.
    """
    states = jax.vmap(init)(keys)
    if hyperparams:
        states = states.replace(opt_state=set_hyperparams(states.opt_state, hyperparams, len(keys)))
    return states


def stack_members(trees: list):
    """Pytrees of one structure (train states, parameters, reward trees) stacked leaf by leaf
    along a new leading member axis: for members built on the host one at a time."""
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def member(stacked, i: int):
    """Member ``i`` of a stacked pytree (row ``i`` of every leaf)."""
    return jax.tree_util.tree_map(lambda leaf: leaf[i], stacked)


def set_hyperparams(opt_state, values: dict, num_members: int):
    """Replace ``opt_state.hyperparams[name]`` (found anywhere in a chain) with per-member values."""

    replaced = []

    def visit(node):
        if hasattr(node, "hyperparams") and hasattr(node, "_replace"):  # optax.inject_hyperparams state
            hyperparams = dict(node.hyperparams)
            unknown = sorted(set(values) - set(hyperparams))
            if unknown:
                raise ValueError(f"hyperparameters {unknown} are not injected; the optimizer has {sorted(hyperparams)}")
            replaced.append(node)
            for name, value in values.items():
                value = jnp.asarray(value, hyperparams[name].dtype)
                if value.shape != (num_members,):
                    raise ValueError(f"hyperparameter {name!r} needs {num_members} values, got shape {value.shape}")
                hyperparams[name] = value
            return node._replace(hyperparams=hyperparams)
        if isinstance(node, tuple) and not hasattr(node, "_fields"):
            return tuple(visit(child) for child in node)
        return node

    new_state = visit(opt_state)
    if not replaced:
        raise ValueError("no optax.inject_hyperparams state found; wrap the optimizer with optax.inject_hyperparams")
    return new_state


def make_multi_seed_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, shared_batch: bool = True, accumulation_steps: int = 1):
    """One jitted ``step(states, batch)`` for all members. ``shared_batch``: every member sees the
    same batch (else the batch has a leading member axis)."""
    step = update_fn(loss_fn, optimizer, accumulation_steps)
    return jax.jit(jax.vmap(step, in_axes=(0, None if shared_batch else 0)), donate_argnums=(0,))
