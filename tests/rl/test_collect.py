"""What ``collect`` hands the update: ReMax baselines, learned-reward rewards, truncation flags,
and a critic warm-started from a reward model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jirl.config import JirlError
from jirl.mdp.env import sequence_rewards
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.mdp.tasks import make_task
from jirl.models.heads import SequenceRewardModel, ValueModel
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.rewards.models import reward_model_rewards, terminal_rewards, warm_start_critic
from jirl.rl.kl import kl_penalized_rewards
from jirl.models.scoring import response_log_probs
from jirl.rl.loop import RLConfig, collect, critic_values

TASK = make_task("bigram", num_chars=3, horizon=4, seed=1)
CONFIG = gpt2_tiny(TASK.vocab_size, max_len=8, d_model=32)


def policy(seed=0):
    graphdef, params = nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(seed)))
    return graphdef, params


def test_remax_advantage_is_the_return_minus_the_greedy_rollouts_return():
    graphdef, params = policy()
    _, ref_params = policy(seed=5)
    config = RLConfig(advantage="remax", kl_coef=0.3, prompts_per_iteration=3, group_size=4)
    key = jax.random.key(7)
    batch, _ = collect(key, TASK, graphdef, params, ref_params, config)

    # Independent recomputation: decode each prompt greedily, score it with the same KL shaping.
    prompt_key, sample_key = jax.random.split(key)
    prompts, lens = TASK.sample_prompts(prompt_key, 3)
    sampling = SamplingConfig(max_new_tokens=TASK.horizon, eos_id=TASK.eos_id, greedy=True)
    greedy = generate(graphdef, params, prompts, lens, sample_key, sampling)
    ref = response_log_probs(graphdef, ref_params, greedy.tokens, greedy.prompt_lens, TASK.horizon)
    shaped = kl_penalized_rewards(
        sequence_rewards(TASK, greedy.tokens, greedy.prompt_lens, greedy.response_lens),
        greedy.log_probs, ref, greedy.response_mask, 0.3,
    )
    greedy_return = np.repeat(np.asarray(jnp.sum(shaped * greedy.response_mask, axis=1)), 4)

    sampled = sequence_rewards(TASK, batch["tokens"], batch["prompt_len"], batch["mask"].sum(1))
    sampled = kl_penalized_rewards(sampled, batch["old_log_probs"], batch["ref_log_probs"], batch["mask"], 0.3)
    sampled_return = np.asarray(jnp.sum(sampled * batch["mask"], axis=1))
    expected = (sampled_return - greedy_return)[:, None] * np.asarray(batch["mask"])
    np.testing.assert_allclose(np.asarray(batch["advantages"]), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected).max() > 0  # the check is not vacuous


def constant_policy(token: int):
    """A GPT-2 policy whose final LayerNorm outputs a fixed vector aligned with ``token``'s
    embedding, so it emits ``token`` at every step with probability ~1."""
    graphdef, params = policy()
    embedding = params["embed"]["embedding"][...]
    params["final_norm"]["scale"][...] = jnp.zeros(CONFIG.d_model)
    params["final_norm"]["bias"][...] = 50.0 * embedding[token] / jnp.linalg.norm(embedding[token])
    return graphdef, params


def test_a_response_that_never_ends_is_cut_at_the_horizon_and_flagged():
    graphdef, params = constant_policy(token=1)
    batch, metrics = collect(jax.random.key(0), TASK, graphdef, params, params, RLConfig(prompts_per_iteration=2, group_size=4))
    assert metrics["truncated_fraction"] == 1.0
    assert metrics["response_length"] == TASK.horizon
    assert bool(jnp.all(batch["mask"]))

    graphdef, params = constant_policy(token=TASK.eos_id)
    _, metrics = collect(jax.random.key(0), TASK, graphdef, params, params, RLConfig(prompts_per_iteration=2, group_size=4))
    assert metrics["truncated_fraction"] == 0.0 and metrics["response_length"] == 1.0


def reward_model(vocab_size=TASK.vocab_size):
    config = gpt2_tiny(vocab_size, max_len=8, d_model=32)
    return config, *nnx.split(SequenceRewardModel(config, rngs=nnx.Rngs(3)))


def test_learned_reward_model_rewards_are_its_score_on_the_last_step():
    _, rm_graphdef, rm_params = reward_model()
    reward_fn = reward_model_rewards(rm_graphdef, rm_params, TASK.vocab_size, TASK.horizon)
    graphdef, params = policy()
    config = RLConfig(advantage="rloo", prompts_per_iteration=2, group_size=4)
    batch, metrics = collect(jax.random.key(1), TASK, graphdef, params, params, config, reward_fn=reward_fn)
    lens = batch["mask"].sum(1)
    scores = nnx.merge(rm_graphdef, rm_params)(batch["tokens"], batch["prompt_len"] + lens)
    for row in range(8):  # a plain loop: the score sits on step len - 1, zeros elsewhere
        expected = np.zeros(TASK.horizon)
        expected[int(lens[row]) - 1] = float(scores[row])
        got = np.asarray(reward_fn(batch["tokens"][row : row + 1], batch["prompt_len"][row : row + 1], lens[row : row + 1]))[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert metrics["reward"] == pytest.approx(float(jnp.mean(scores)), rel=1e-5)


def test_a_reward_model_with_another_tokenizer_is_refused():
    _, rm_graphdef, rm_params = reward_model(vocab_size=257)
    with pytest.raises(JirlError, match="different tokenizers"):
        reward_model_rewards(rm_graphdef, rm_params, TASK.vocab_size, TASK.horizon)


def test_terminal_rewards_put_the_score_on_the_last_valid_step():
    rewards = terminal_rewards(jnp.array([2.0, -1.0, 5.0]), jnp.array([1, 3, 0]), 3)
    np.testing.assert_array_equal(np.asarray(rewards), [[2, 0, 0], [0, 0, -1], [0, 0, 0]])


def test_critic_warm_started_from_a_reward_model_values_states_by_the_reward_model_score():
    config, rm_graphdef, rm_params = reward_model()
    critic_graphdef, critic_params = nnx.split(ValueModel(config, rngs=nnx.Rngs(9)))
    critic_params = warm_start_critic(critic_params, rm_params)
    tokens = jax.random.randint(jax.random.key(0), (5, 1 + TASK.horizon), 1, TASK.vocab_size)
    prompt_lens = jnp.ones(5, jnp.int32)
    values = critic_values(critic_graphdef, critic_params, tokens, prompt_lens, TASK.horizon)
    for t in range(TASK.horizon):  # V(s_t) is the RM's score of the prefix ending at slot t
        score = nnx.merge(rm_graphdef, rm_params)(tokens, prompt_lens + t)
        np.testing.assert_allclose(np.asarray(values[:, t]), np.asarray(score), rtol=1e-5, atol=1e-6)

    _, other = nnx.split(ValueModel(gpt2_tiny(TASK.vocab_size, max_len=8, d_model=64), rngs=nnx.Rngs(0)))
    with pytest.raises(JirlError, match="parameter trees differ"):
        warm_start_critic(other, rm_params)
