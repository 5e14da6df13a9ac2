"""Light reward heads on cached embeddings ("Reusing embeddings", Sun et al. 2025).

Embeddings of every response are computed once (``jirl.rewards.embeddings``); many small heads
(linear or one-hidden-layer MLP) are then trained on them in one compiled program: full-batch
Adam inside ``lax.scan``, ``vmap``-ed over ensemble members / seeds (PureJaxRL style).
``train_mlp_reward`` is Sun et al.'s own recipe (BT-MLP / CLF-MLP: a 1024-512 MLP, minibatch
Adam, early stopping on held-out pairs).
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


# ----------------------------------------------------------------------------------------------
# The MLP recipe of Sun et al. (ICLR 2025): BT-MLP and CLF-MLP with early stopping


def init_mlp(key, d_in: int, hidden: tuple[int, ...]):
    """He-initialised ``[{"w", "b"}, ...]`` of an MLP ``d_in -> hidden... -> 1``."""
    sizes = (d_in, *hidden, 1)
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros((b,))}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp_reward(layers, x):
    """Rewards ``[N]`` of ``x [N, d]``: ReLU between layers, a linear last layer (its raw output
    is the reward, as Sun et al. read it, for BT and classification alike)."""
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return (x @ layers[-1]["w"] + layers[-1]["b"])[:, 0]


@functools.partial(jax.jit, static_argnames=("loss", "hidden", "epochs", "batch_size", "patience"))
def train_mlp_reward(
    key,
    chosen,
    rejected,
    *,
    loss: str = "bt",
    hidden: tuple[int, ...] = (1024, 512),
    epochs: int = 30,
    batch_size: int = 10240,
    learning_rate: float = 1e-3,
    patience: int = 3,
    validation_fraction: float = 0.2,
):
    """An MLP reward model on pairs of embeddings ``chosen, rejected [P, d]`` by the recipe of
    Sun, Shen & Ton (ICLR 2025, "Rethinking Bradley-Terry models in preference-based reward
    modeling"; their ``networks.py``): a ``d -> 1024 -> 512 -> 1`` ReLU MLP, Adam (no weight
    decay), ``epochs`` epochs of ``ceil(P_train / batch_size)`` steps on random minibatches, and
    early stopping on a random held-out ``validation_fraction`` of the pairs: training stops
    (keeping the current weights) once the validation loss exceeds each of the previous
    ``patience`` epochs'. ``loss`` names a ``PAIRWISE_LOSSES`` entry: ``bt`` gives BT-MLP,

        l = -log sigma(r(y+) - r(y-)),

    ``classification`` gives CLF-MLP, a binary classifier of chosen (1) vs rejected (0) single
    responses, ``l = -log sigma(r(y+)) - log(1 - sigma(r(y-)))``.

    Returns ``(layers, info)``: the MLP parameters and ``{"epochs_run", "validation_loss"}``.
    Jitted; ``vmap`` it over seeds (keys and data stacked) to train several side by side.
    """
    pairwise = PAIRWISE_LOSSES.get(loss)
    num = chosen.shape[0]
    num_val = max(1, int(round(validation_fraction * num)))
    num_train = num - num_val
    batch = min(batch_size, num_train)
    steps_per_epoch = -(-num_train // batch)
    init_key, split_key, batch_key = jax.random.split(key, 3)
    order = jax.random.permutation(split_key, num)
    train_c, train_r = chosen[order[:num_train]], rejected[order[:num_train]]
    val_c, val_r = chosen[order[num_train:]], rejected[order[num_train:]]
    optimizer = optax.adam(learning_rate)

    def mean_loss(layers, c, r):
        return jnp.mean(pairwise(mlp_reward(layers, c), mlp_reward(layers, r)))

    def step(carry, step_key):
        layers, opt_state = carry
        rows = jax.random.permutation(step_key, num_train)[:batch]
        grads = jax.grad(mean_loss)(layers, train_c[rows], train_r[rows])
        updates, opt_state = optimizer.update(grads, opt_state, layers)
        return (optax.apply_updates(layers, updates), opt_state), None

    def epoch(carry, epoch_key):
        layers, opt_state, history, stopped, epochs_run = carry
        (new_layers, new_state), _ = jax.lax.scan(step, (layers, opt_state), jax.random.split(epoch_key, steps_per_epoch))
        # A stopped run keeps its weights: the update is computed and discarded (static shapes).
        layers, opt_state = jax.tree_util.tree_map(lambda old, new: jnp.where(stopped, old, new), (layers, opt_state), (new_layers, new_state))
        val = mean_loss(layers, val_c, val_r)
        worse = jnp.all(val > history)  # history starts at +inf: no stop in the first `patience` epochs
        epochs_run = epochs_run + (~stopped).astype(jnp.int32)
        history = jnp.where(stopped, history, jnp.concatenate([history[1:], val[None]]))
        return (layers, opt_state, history, stopped | worse, epochs_run), jnp.where(stopped, jnp.nan, val)

    layers = init_mlp(init_key, chosen.shape[1], hidden)
    start = (layers, optimizer.init(layers), jnp.full((patience,), jnp.inf), jnp.array(False), jnp.array(0, jnp.int32))
    (layers, _, _, _, epochs_run), val_curve = jax.lax.scan(epoch, start, jax.random.split(batch_key, epochs))
    return layers, {"epochs_run": epochs_run, "validation_loss": val_curve}
