"""Alignment from demonstrations (AfD): a reward model trained to tell "better" samples from
"worse" ones (Sun & van der Schaar 2024, "Inverse-RLignment: large language model alignment
from demonstrations through inverse reinforcement learning").

A sequence reward model r(x, y) is fitted as a Bradley-Terry discriminator on pairs
(y+ ~ P(.|x), y- ~ Q(.|x)) that answer the same prompt, always preferring the P sample. The
population optimum is the log density ratio

    r(x, y) = log P(y|x) / Q(y|x) + c(x),

since sigma(r(y) - r(y')) = P(y)Q(y') / (P(y)Q(y') + P(y')Q(y)) is then exactly the probability
that y, not y', was the P sample. KL-regularised RL against r with beta = 1 and reference Q
therefore targets pi ∝ Q exp(r) = P: the policy that produced the positives. The variants
pick P and Q:

    init_sft:  P = the SFT policy's samples,  Q = the initial policy's samples
    init_demo: P = the demonstrations,        Q = the initial policy's samples
    sft_demo:  P = the demonstrations,        Q = the SFT policy's samples

so with RL from Q at beta = 1, ``init_demo`` and ``sft_demo`` aim at the expert.
"""

from __future__ import annotations

from typing import Annotated

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jirl.config import at_least, finite, positive, registered
from jirl.data.errors import DataError
from jirl.mdp import oracle
from jirl.models.heads import SequenceRewardModel
from jirl.rewards.losses import PAIRWISE_LOSSES, preference_objective
from jirl.rewards.models import sequence_reward_fn
from jirl.train.loop import train_on_arrays
from jirl.train.step import init_train_state, make_update_step

# variant -> (positives, negatives); each names one of "demo", "sft", "init"
AFD_VARIANTS = {"init_sft": ("sft", "init"), "init_demo": ("demo", "init"), "sft_demo": ("demo", "sft")}


@dataclasses.dataclass
class AfDConfig:
    """Settings of AfD: the ``variant`` (which samples are positives and negatives, a key of
    ``AFD_VARIANTS``), the pairwise ``loss`` (a name in ``jirl.rewards.losses.PAIRWISE_LOSSES``)
    and the discriminator's optimisation (``steps``, ``batch_size``, ``learning_rate``)."""

    variant: Annotated[str, registered(AFD_VARIANTS)] = "sft_demo"  # a key of AFD_VARIANTS
    loss: Annotated[str, registered(PAIRWISE_LOSSES)] = "bt"  # a name in jirl.rewards.losses.PAIRWISE_LOSSES
    steps: Annotated[int, at_least(1)] = 600
    batch_size: Annotated[int, at_least(1)] = 128
    learning_rate: Annotated[float, finite, positive] = 3e-3


def variant_sources(variant: str) -> tuple[str, str]:
    """``(positives, negatives)`` of an AfD variant, each one of ``"demo"``, ``"sft"``,
    ``"init"`` (e.g. ``"sft_demo"`` -> ``("demo", "sft")``); ``DataError`` for an unknown
    variant."""
    if variant not in AFD_VARIANTS:
        raise DataError(f"unknown AfD variant {variant!r}; choose from {sorted(AFD_VARIANTS)}")
    return AFD_VARIANTS[variant]


def prompt_ids(tokens: np.ndarray, prompt_lens: np.ndarray) -> np.ndarray:
    """An integer id per row, equal iff two rows share the prompt (tokens and length)."""
    width = int(prompt_lens.max())
    masked = np.where(np.arange(width)[None, :] < prompt_lens[:, None], tokens[:, :width], -1)
    keys = np.concatenate([masked, prompt_lens[:, None]], axis=1)
    return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)


def discriminator_pairs(key, positives, negatives) -> dict:
    """Pair every positive with a negative answering the same prompt (drawn at random, with
    replacement). ``positives``/``negatives`` have ``tokens``, ``prompt_lens``, ``response_lens``
    (e.g. ``jirl.mdp.demonstrations.Demonstrations``) of the same buffer width. Positives whose
    prompt has no negative are dropped; if none is left this raises ``DataError``."""
    pos = {k: np.asarray(getattr(positives, k)) for k in ("tokens", "prompt_lens", "response_lens")}
    neg = {k: np.asarray(getattr(negatives, k)) for k in ("tokens", "prompt_lens", "response_lens")}
    if len(pos["tokens"]) == 0 or len(neg["tokens"]) == 0:
        raise DataError("AfD needs at least one positive and one negative sample; got an empty set")
    if pos["tokens"].shape[1] != neg["tokens"].shape[1]:
        raise DataError(f"positive and negative buffers differ in width: {pos['tokens'].shape[1]} vs {neg['tokens'].shape[1]}")
    ids = prompt_ids(np.concatenate([pos["tokens"], neg["tokens"]]), np.concatenate([pos["prompt_lens"], neg["prompt_lens"]]))
    pos_ids, neg_ids = ids[: len(pos["tokens"])], ids[len(pos["tokens"]) :]
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()[-1])
    chosen, rejected = [], []
    for prompt in np.unique(pos_ids):
        candidates = np.flatnonzero(neg_ids == prompt)
        if candidates.size:
            rows = np.flatnonzero(pos_ids == prompt)
            chosen.append(rows)
            rejected.append(rng.choice(candidates, size=rows.size))
    if not chosen:
        raise DataError("no positive shares a prompt with any negative; sample negatives for the demonstrations' prompts")
    chosen, rejected = np.concatenate(chosen), np.concatenate(rejected)
    return {
        "chosen": pos["tokens"][chosen], "rejected": neg["tokens"][rejected], "prompt_len": pos["prompt_lens"][chosen],
        "chosen_len": pos["response_lens"][chosen], "rejected_len": neg["response_lens"][rejected],
    }


def train_discriminator(key, pairs: dict, model_config, config: AfDConfig):
    """Fit a ``SequenceRewardModel`` to the pairs (positives preferred) by minibatch Adam.
    Returns ``(graphdef, params, final_metrics)``."""
    init_key, state_key, order_key = jax.random.split(key, 3)
    graphdef, params = nnx.split(SequenceRewardModel(model_config, rngs=nnx.Rngs(int(jax.random.randint(init_key, (), 0, 2**30)))))
    optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.steps, alpha=0.1))
    state = init_train_state(params, optimizer, state_key)
    step = make_update_step(preference_objective(sequence_reward_fn(graphdef), loss=config.loss, margin_key=None), optimizer)
    seed = int(jax.random.randint(order_key, (), 0, 2**30))
    state, metrics = train_on_arrays(state, step, pairs, config.steps, config.batch_size, seed)
    return graphdef, state.full_params, {k: float(v) for k, v in metrics.items() if jnp.ndim(v) == 0}


def sequence_reward_tree(spec: oracle.TreeSpec, graphdef, params) -> list:
    """A sequence reward model as an oracle reward tree: its score of the complete response on
    every terminal action, 0 on the others."""
    score = jax.jit(sequence_reward_fn(graphdef))

    def step_reward(tokens, prompt_lens, t, terminal):
        return jnp.where(terminal, score(params, jnp.asarray(tokens), jnp.asarray(prompt_lens + t + 1)), 0.0)

    return oracle.rewards_from_step_fn(spec, step_reward)
