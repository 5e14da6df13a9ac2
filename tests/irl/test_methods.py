"""Every registered IRL method's learned reward is a seed-independent ``reward_model`` of its
``reward_params``: the rewards of two seeds, stacked and vmapped, equal each seed's own
``reward_fn`` (what the quickstart seed study relies on to run the seeds' RL side by side)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jirl.irl.afd import AfDConfig
from jirl.irl.methods import IRL_METHODS, AdversarialSettings, IQLearnConfig, IRLContext, MaxEntConfig
from jirl.irl.spin import SPINConfig
from jirl.mdp.demonstrations import Demonstrations, from_optimum
from jirl.mdp.tasks import make_task
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.rl.loop import RLConfig
from jirl.train.seeds import member, stack_members

TASK = make_task("bigram", num_chars=3, horizon=3)
TINY = {
    "afd": AfDConfig(steps=5, batch_size=16),
    "maxent": MaxEntConfig(steps=5),
    "spin": SPINConfig(iterations=1, steps_per_iteration=2, batch_size=8),
    "iq_learn": IQLearnConfig(steps=3, batch_size=16),
    "airl": AdversarialSettings(iterations=1, disc_steps=1, rl=RLConfig(prompts_per_iteration=4, group_size=2)),
    "gail": AdversarialSettings(iterations=1, level="token", disc_steps=1, rl=RLConfig(prompts_per_iteration=4, group_size=2)),
}


def context(seed: int) -> IRLContext:
    config = gpt2_tiny(TASK.vocab_size, max_len=TASK.prompt_width + TASK.horizon)
    graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))
    demos = from_optimum(TASK, jax.random.key(seed), 32, 0.5)
    demos = Demonstrations(demos.tokens, demos.prompt_lens, demos.response_lens, jnp.zeros((32, 0)))
    return IRLContext(TASK, demos, graphdef, config, params, params, jax.random.key(seed + 1), TASK.tree_spec())


def test_every_method_has_tiny_settings_here():
    assert set(TINY) == set(IRL_METHODS.names())


@pytest.mark.parametrize("name", sorted(TINY))
def test_two_seeds_rewards_vmapped_equal_each_seeds_reward_fn(name):
    learned = [IRL_METHODS.get(name)(context(seed), dataclasses.replace(TINY[name])) for seed in (0, 1)]
    probe = from_optimum(TASK, jax.random.key(7), 16, 2.0)  # responses to score, the same for both seeds
    args = (probe.tokens, probe.prompt_lens, probe.response_lens)
    stacked = stack_members([r.reward_params for r in learned])
    vmapped = jax.vmap(lambda params: learned[0].reward_model(params)(*args))(stacked)
    for seed, reward in enumerate(learned):
        own = np.asarray(reward.reward_fn(*args))
        assert own.shape == (16, TASK.horizon)
        np.testing.assert_allclose(vmapped[seed], own, rtol=1e-5, atol=1e-6)
        jax.tree_util.tree_map(np.testing.assert_array_equal, member(stacked, seed), reward.reward_params)
    assert not np.allclose(vmapped[0], vmapped[1])  # the seeds learned different rewards
