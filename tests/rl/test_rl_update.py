"""One RL iteration as one pure function (issue 22, item 1): the scanned epochs x minibatches
equal a Python loop of update steps, vmapped seeds equal separate runs, and the policy loss's
options reach the loss and are checked."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.quickstart import QuickstartConfig
from jirl.config import ConfigError, apply_overrides, validate_config
from jirl.mdp.tasks import make_task
from jirl.models.scoring import response_log_probs
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.rl.loop import RLConfig, collect, make_minibatch_update, make_rl_update, rl_loss
from jirl.train.step import init_train_state, make_update_step

TASK = make_task("bigram", num_chars=3, horizon=4)
GRAPHDEF, PARAMS = nnx.split(Transformer(gpt2_tiny(TASK.vocab_size, max_len=8, d_model=16), rngs=nnx.Rngs(0)))
CONFIG = RLConfig(policy_loss="ppo", prompts_per_iteration=4, group_size=4, epochs=2, minibatches=2, kl_coef=0.1)


def max_difference(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_scanned_epochs_and_minibatches_equal_a_python_loop_of_steps():
    optimizer = optax.adam(1e-2)
    batch, _ = collect(jax.random.key(0), TASK, GRAPHDEF, PARAMS, PARAMS, CONFIG)
    key = jax.random.key(1)
    scanned, metrics = jax.jit(make_minibatch_update(rl_loss(GRAPHDEF, CONFIG, TASK.horizon), optimizer, CONFIG))(
        init_train_state(PARAMS, optimizer, jax.random.key(2)), batch, key
    )
    step = make_update_step(rl_loss(GRAPHDEF, CONFIG, TASK.horizon), optimizer, donate=False)
    looped = init_train_state(PARAMS, optimizer, jax.random.key(2))
    for epoch in range(CONFIG.epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), 16))
        for rows in np.split(order, CONFIG.minibatches):
            looped, _ = step(looped, {k: v[rows] for k, v in batch.items()})
    assert int(scanned.step) == int(looped.step) == 4 and not bool(metrics["nonfinite"])
    assert max_difference(scanned.params, looped.params) < 1e-6
    assert max_difference(scanned.params, PARAMS) > 1e-3  # it trained


def test_vmapped_seeds_equal_separate_runs():
    # SGD: Adam turns the batched matmuls' rounding differences in near-zero gradients into
    # updates of +-learning rate, so it would compare rounding, not the program.
    optimizer = optax.sgd(0.1)
    update = make_rl_update(TASK, GRAPHDEF, optimizer, CONFIG)
    keys = jax.random.split(jax.random.key(3), 2)
    states = jax.vmap(lambda k: init_train_state(PARAMS, optimizer, k))(keys)
    together, metrics = jax.jit(jax.vmap(lambda s, k: update(s, PARAMS, k)))(states, keys)
    for seed in range(2):
        alone, alone_metrics = jax.jit(update)(init_train_state(PARAMS, optimizer, keys[seed]), PARAMS, keys[seed])
        row = jax.tree_util.tree_map(lambda x: x[seed], together)
        assert max_difference(row.params, alone.params) < 1e-5
        np.testing.assert_allclose(metrics["reward"][seed], alone_metrics["reward"], rtol=1e-6)


@pytest.mark.parametrize("clip", [0.1, 0.3])
def test_the_ppo_clip_option_reaches_the_loss(clip):
    """Ratios of exp(0.2) ~ 1.22 with advantage 1 on every token: the clipped surrogate is
    -(1 + clip) per token for clip < 0.22 and -exp(0.2) above it."""
    config = RLConfig(policy_loss="ppo", aggregation="token_mean", policy_loss_options={"clip_low": clip, "clip_high": clip})
    batch, _ = collect(jax.random.key(0), TASK, GRAPHDEF, PARAMS, PARAMS, RLConfig(prompts_per_iteration=2, group_size=2))
    log_probs = response_log_probs(GRAPHDEF, PARAMS, batch["tokens"], batch["prompt_len"], TASK.horizon)
    batch = {**batch, "old_log_probs": log_probs - 0.2, "advantages": jnp.where(batch["mask"], 1.0, 0.0)}
    out, _ = rl_loss(GRAPHDEF, config, TASK.horizon)(PARAMS, batch, None)
    expected = -min(1.0 + clip, float(np.exp(0.2)))
    np.testing.assert_allclose(float(out.value), expected, rtol=1e-5)


def test_a_misspelt_option_is_refused_before_any_work_and_a_right_one_is_set():
    config = apply_overrides(QuickstartConfig(), ["rl.policy_loss=ppo", "rl.policy_loss_options.clip_low=0.1"])
    assert config.rl.policy_loss_options == {"clip_low": 0.1}
    validate_config(config)
    wrong = apply_overrides(QuickstartConfig(), ["rl.policy_loss=ppo", "rl.policy_loss_options.cilp_low=0.1"])
    with pytest.raises(ConfigError, match="has no option 'cilp_low'. Did you mean 'clip_low'"):
        validate_config(wrong)
    with pytest.raises(ConfigError, match="Its options are: eps"):
        RLConfig(advantage="grpo", advantage_options={"epsilon": 1e-4}).validate()
