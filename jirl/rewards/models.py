"""Reward models on jirl backbones, used through the training engine.

``SequenceRewardModel`` (a transformer plus a scalar head read at the last real token) lives in
``jirl.models.heads``; here are the pure functions and filters that plug it into objectives:

    graphdef, params = nnx.split(SequenceRewardModel(config, rngs=nnx.Rngs(0)))
    loss_fn = preference_objective(sequence_reward_fn(graphdef), loss="bt")
    state = init_train_state(params, optimizer, key, trainable=HEAD_ONLY)   # frozen backbone
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jirl.config import JirlError

HEAD_ONLY = nnx.PathContains("head")  # train the head, freeze the backbone
EVERYTHING = nnx.Everything()


def sequence_reward_fn(graphdef):
    """``reward_fn(params, tokens [B, L], lengths [B]) -> [B]`` of a split ``SequenceRewardModel``."""

    def reward_fn(params, tokens, lengths):
        return nnx.merge(graphdef, params)(tokens, lengths)

    return reward_fn


def check_same_tokenizer(reward_vocab_size: int, policy_vocab_size: int, what: str = "reward model") -> None:
    """Refuse to pair a reward model and a policy that tokenize differently: token ids would
    mean different strings to each."""
    if reward_vocab_size != policy_vocab_size:
        raise JirlError(
            f"the {what} has vocab_size {reward_vocab_size} but the policy has {policy_vocab_size}: they use "
            "different tokenizers. Re-tokenize the text for one of them, or build both on the same tokenizer."
        )


def terminal_rewards(scores, response_lens, horizon: int):
    """Sparse ``[B, horizon]`` rewards: ``scores [B]`` on each response's last step, 0
    elsewhere (DESIGN.md contract 4). Empty responses get nothing."""
    steps = jnp.arange(horizon)[None, :]
    return jnp.where(steps == (response_lens[:, None] - 1), scores[:, None], 0.0)


def reward_model_rewards(graphdef, params, policy_vocab_size: int, horizon: int):
    """The RL loop's ``reward_fn(tokens, prompt_lens, response_lens) -> [B, horizon]`` from a
    split ``SequenceRewardModel``: its score of prompt + response, given at the last response
    step. Refuses a reward model whose vocabulary differs from the policy's."""
    model_vocab = nnx.merge(graphdef, params).backbone.config.vocab_size
    check_same_tokenizer(model_vocab, policy_vocab_size)
    score = jax.jit(sequence_reward_fn(graphdef))

    def reward_fn(tokens, prompt_lens, response_lens):
        return terminal_rewards(score(params, tokens, prompt_lens + response_lens), response_lens, horizon)

    return reward_fn


def warm_start_critic(critic_params, reward_params):
    """Critic parameters initialised from a sequence reward model's (Ouyang et al. 2022 start
    PPO's value function from the reward model). ``ValueModel`` and ``SequenceRewardModel``
    share the backbone and the scalar projection, so ``V(s)`` starts as the reward model's
    score of the prefix ``s``. Returns a copy; raises if the two trees differ."""
    critic_tree = jax.tree_util.tree_structure(critic_params)
    reward_tree = jax.tree_util.tree_structure(reward_params)
    shapes = lambda tree: [x.shape for x in jax.tree_util.tree_leaves(tree)]  # noqa: E731
    if critic_tree != reward_tree or shapes(critic_params) != shapes(reward_params):
        raise JirlError(
            "cannot warm-start the critic from this reward model: their parameter trees differ. "
            "Build the ValueModel with the reward model's TransformerConfig."
        )
    return jax.tree_util.tree_map(jnp.copy, reward_params)
