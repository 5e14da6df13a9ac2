"""Reward models on jirl backbones, used through the training engine.

``SequenceRewardModel`` (a transformer plus a scalar head read at the last real token) lives in
``jirl.models.heads``; here are the pure functions and filters that plug it into objectives:

    graphdef, params = nnx.split(SequenceRewardModel(config, rngs=nnx.Rngs(0)))
    loss_fn = preference_objective(sequence_reward_fn(graphdef), loss="bt")
    state = init_train_state(params, optimizer, key, trainable=HEAD_ONLY)   # frozen backbone
"""

from __future__ import annotations

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
