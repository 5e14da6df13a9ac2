"""No silent NaN in RL (issue 21): a NaN learning rate makes every update NaN although the loss
and gradient are finite; the update step flags it and the RL iteration stops with an error that
carries the last good state. NaN rewards stop it too."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.mdp.tasks import make_task
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.mdp.env import sequence_rewards
from jirl.rl.loop import RLConfig, make_rl_iteration
from jirl.train.loop import NonFiniteLossError
from jirl.train.step import init_train_state

TASK = make_task("bigram", num_chars=3, horizon=3)
CONFIG = RLConfig(prompts_per_iteration=4, group_size=4)


def setup(learning_rate, reward_fn=None):
    graphdef, params = nnx.split(Transformer(gpt2_tiny(TASK.vocab_size, max_len=8, d_model=16), rngs=nnx.Rngs(0)))
    reference = jax.tree_util.tree_map(jnp.copy, params)
    optimizer = optax.adam(learning_rate)
    state = init_train_state(params, optimizer, jax.random.key(0))
    return reference, state, make_rl_iteration(TASK, graphdef, optimizer, CONFIG, reward_fn=reward_fn)


def test_a_finite_learning_rate_updates_the_policy():
    reference, state, iteration = setup(1e-2)
    new_state, metrics = iteration(state, reference, jax.random.key(1))
    assert int(new_state.step) == 1 and np.isfinite(metrics["update/loss"])


def test_a_nan_learning_rate_stops_the_rl_iteration_without_applying_the_update():
    reference, state, iteration = setup(float("nan"))
    before = jax.tree_util.tree_map(np.array, state.params)
    with pytest.raises(NonFiniteLossError, match="NaN/inf .* the update was not applied") as error:
        iteration(state, reference, jax.random.key(1))
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(np.array, error.value.state.params), before)
    assert int(error.value.state.step) == 0


def test_nan_rewards_stop_the_rl_iteration_and_say_so():
    def half_nan(tokens, prompt_lens, response_lens):
        rewards = sequence_rewards(TASK, tokens, prompt_lens, response_lens)
        return rewards.at[0].set(jnp.nan)

    reference, state, iteration = setup(1e-2, reward_fn=half_nan)
    with pytest.raises(NonFiniteLossError, match="reward function returned NaN/inf") as error:
        iteration(state, reference, jax.random.key(1))
    assert int(error.value.state.step) == 0
