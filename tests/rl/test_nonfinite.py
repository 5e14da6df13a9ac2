"""No silent NaN in RL (issue 21): a NaN learning rate makes every update NaN although the loss
and gradient are finite; the update step flags it and ``rl_iteration`` stops with an error."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.mdp.tasks import make_task
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.rl.loop import RLConfig, rl_iteration, rl_loss
from jirl.train.loop import NonFiniteLossError
from jirl.train.step import init_train_state, make_update_step

TASK = make_task("bigram", num_chars=3, horizon=3)
CONFIG = RLConfig(prompts_per_iteration=4, group_size=4)


def setup(learning_rate):
    graphdef, params = nnx.split(Transformer(gpt2_tiny(TASK.vocab_size, max_len=8, d_model=16), rngs=nnx.Rngs(0)))
    reference = jax.tree_util.tree_map(jnp.copy, params)
    optimizer = optax.adam(learning_rate)
    state = init_train_state(params, optimizer, jax.random.key(0))
    return graphdef, reference, state, make_update_step(rl_loss(graphdef, CONFIG, TASK.horizon), optimizer, donate=False)


def test_a_finite_learning_rate_updates_the_policy():
    graphdef, reference, state, step = setup(1e-2)
    new_state, metrics = rl_iteration(jax.random.key(1), TASK, graphdef, state, reference, step, CONFIG)
    assert int(new_state.step) == 1 and np.isfinite(metrics["update/loss"])


def test_a_nan_learning_rate_stops_the_rl_iteration_without_applying_the_update():
    graphdef, reference, state, step = setup(float("nan"))
    before = jax.tree_util.tree_map(np.array, state.params)
    with pytest.raises(NonFiniteLossError, match="NaN/inf .* the update was not applied"):
        rl_iteration(jax.random.key(1), TASK, graphdef, state, reference, step, CONFIG)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(np.array, state.params), before)
