"""Light reward heads on cached embeddings ("Reusing embeddings", Sun et al. 2025).

Embeddings of every response are computed once (``jirl.rewards.embeddings``); many small heads
(linear or one-hidden-layer MLP) are then trained on them in one compiled program: full-batch
Adam inside ``lax.scan``, ``vmap``-ed over ensemble members / seeds (PureJaxRL style).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from jirl.rewards.losses import PAIRWISE_LOSSES


def init_head(key, d_in: int, hidden: int = 0):
    """Parameters of ``r(x) = w . x + b`` (``hidden=0``) or ``w2 . relu(W1 x + b1) + b2``."""
    if hidden == 0:
        return {"w": jax.random.normal(key, (d_in,)) / jnp.sqrt(d_in), "b": jnp.zeros(())}
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (d_in, hidden)) * jnp.sqrt(2.0 / d_in),
        "b1": jnp.zeros((hidden,)),
        "w2": jax.random.normal(k2, (hidden,)) / jnp.sqrt(hidden),
        "b2": jnp.zeros(()),
    }


def head_reward(params, x):
    """Rewards ``[N]`` of embeddings ``x [N, d]``."""
    if "w" in params:
        return x @ params["w"] + params["b"]
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def standardize(train_x, *others):
    """Scale features by the training set's mean and std (heads train much faster on them)."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    return tuple((x - mean) / std for x in (train_x, *others))


@functools.partial(jax.jit, static_argnames=("loss", "num_members", "hidden", "steps"))
def train_heads(
    key,
    chosen,
    rejected,
    *,
    loss: str = "bt",
    num_members: int = 1,
    hidden: int = 0,
    steps: int = 500,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-4,
    margin=0.0,
):
    """Train ``num_members`` heads (different initialisations) on pairs of embeddings
    ``chosen, rejected [P, d]`` with the pairwise loss ``loss``; returns stacked parameters
    (leading axis = member) and the per-step mean training loss ``[members, steps]``."""
    pairwise = PAIRWISE_LOSSES.get(loss)
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)

    def objective(params):
        return jnp.mean(pairwise(head_reward(params, chosen), head_reward(params, rejected), margin))

    def train_one(member_key):
        params = init_head(member_key, chosen.shape[1], hidden)

        def step(carry, _):
            params, opt_state = carry
            value, grads = jax.value_and_grad(objective)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
        return params, losses

    return jax.vmap(train_one)(jax.random.split(key, num_members))


def member_rewards(stacked_params, x):
    """``[members, N]`` rewards of every member on embeddings ``x [N, d]``."""
    return jax.vmap(head_reward, in_axes=(0, None))(stacked_params, x)
