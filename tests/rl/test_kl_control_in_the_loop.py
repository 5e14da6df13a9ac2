"""The KL coefficient as part of the update state (issue 22): an adaptive controller
(Ziegler et al. 2019) set from ``RLConfig`` moves the coefficient by its closed-form rule, the
update uses the state's coefficient exactly as a fixed one of the same value, and a moving
controller without a state to carry it, or with an unknown option, is an error."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.config import ConfigError, apply_overrides
from jirl.mdp.tasks import make_task
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.rl.kl import KLControllerState
from jirl.rl.loop import RLConfig, RLState, init_rl_state, make_rl_iteration, make_rl_update
from jirl.train.step import init_train_state

TASK = make_task("bigram", num_chars=3, horizon=4)
GRAPHDEF, PARAMS = nnx.split(Transformer(gpt2_tiny(TASK.vocab_size, max_len=8, d_model=16), rngs=nnx.Rngs(0)))
ADAPTIVE = RLConfig(
    prompts_per_iteration=4, group_size=4, kl_coef=0.1, kl_controller="adaptive",
    kl_controller_options={"target": 0.01, "horizon": 64.0},
)


def max_difference(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def trained_policy():
    """A policy some distance from PARAMS, so the KL to the reference is not zero."""
    return jax.tree_util.tree_map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(5), x.shape, x.dtype), PARAMS)


@pytest.mark.parametrize("kl_in", ["reward", "loss"])
def test_the_update_uses_the_states_coefficient_as_a_fixed_one_of_that_value(kl_in):
    optimizer = optax.sgd(0.1)
    adaptive = dataclasses.replace(ADAPTIVE, kl_in=kl_in)
    fixed = dataclasses.replace(adaptive, kl_coef=0.3, kl_controller="fixed", kl_controller_options={})
    key, policy = jax.random.key(7), trained_policy()
    state = init_rl_state(init_train_state(policy, optimizer, jax.random.key(1)), adaptive)
    state = state.replace(kl=KLControllerState(coef=jnp.float32(0.3)))  # as if it had moved from 0.1
    moved, moved_metrics = jax.jit(make_rl_update(TASK, GRAPHDEF, optimizer, adaptive))(state, PARAMS, key)
    plain, plain_metrics = jax.jit(make_rl_update(TASK, GRAPHDEF, optimizer, fixed))(
        init_train_state(policy, optimizer, jax.random.key(1)), PARAMS, key
    )
    assert max_difference(moved.train.params, plain.params) < 1e-6
    assert max_difference(moved.train.params, policy) > 1e-4  # it trained
    np.testing.assert_allclose(moved_metrics["update/loss"], plain_metrics["update/loss"], rtol=1e-6)
    # ... and not as the initial 0.1 would have: the coefficient matters to this update.
    initial, _ = jax.jit(make_rl_update(TASK, GRAPHDEF, optimizer, dataclasses.replace(fixed, kl_coef=0.1)))(
        init_train_state(policy, optimizer, jax.random.key(1)), PARAMS, key
    )
    assert max_difference(initial.params, plain.params) > 1e-5


def test_the_adaptive_coefficient_follows_ziegler_et_als_rule_over_iterations():
    iteration = make_rl_iteration(TASK, GRAPHDEF, optax.sgd(0.1), ADAPTIVE)
    state = init_rl_state(init_train_state(trained_policy(), optax.sgd(0.1), jax.random.key(1)), ADAPTIVE)
    coef = 0.1
    for i in range(3):
        state, metrics = iteration(state, PARAMS, jax.random.key(10 + i))
        assert metrics["kl_coef"] == pytest.approx(coef, rel=1e-6)  # the coefficient this iteration used
        error = np.clip(metrics["kl_to_reference"] / 0.01 - 1.0, -0.2, 0.2)
        coef = coef * (1.0 + error * 16 / 64.0)  # 16 samples per iteration, horizon 64
        assert float(state.kl.coef) == pytest.approx(coef, rel=1e-5)
    assert coef > 0.1  # the KL of a perturbed policy is above the tiny target: beta grows


def test_a_moving_controller_needs_its_state_and_its_options():
    update = make_rl_update(TASK, GRAPHDEF, optax.sgd(0.1), ADAPTIVE)
    with pytest.raises(ConfigError, match="init_rl_state"):
        update(init_train_state(PARAMS, optax.sgd(0.1), jax.random.key(0)), PARAMS, jax.random.key(1))
    with pytest.raises(ConfigError, match="has no option 'targt'. Did you mean 'target'.*Its options are: horizon, max_error, target"):
        dataclasses.replace(ADAPTIVE, kl_controller_options={"targt": 1.0}).validate()
    with pytest.raises(ConfigError, match="needs the option.*target"):
        dataclasses.replace(ADAPTIVE, kl_controller_options={}).validate()
    # From the command line, as the other options.
    config = apply_overrides(RLConfig(), ["kl_controller=adaptive", "kl_controller_options.target=6", "kl_coef=0.2"])
    controller = config.controller()
    assert (controller.init_coef, controller.target) == (0.2, 6) and isinstance(init_rl_state(
        init_train_state(PARAMS, optax.sgd(0.1), jax.random.key(0)), config), RLState)
