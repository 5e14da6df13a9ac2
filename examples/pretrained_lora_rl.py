"""Tutorial: load a pretrained model, add LoRA adapters, and run RL against a learned reward.

It runs in seconds on the tiny random Llama saved by Hugging Face transformers in
``tests/models/fixtures/tiny_llama``; ``--model smollm2-135m-instruct`` names the real one
(``experiments/hh_rlhf.py`` is the full-size study). The reward model is learned here from
preference pairs labelled by a hidden rule (responses with more even token ids win), so the
script can check that RL raised both the learned reward and the hidden one, and that the base
weights did not move.

Walk-through: docs/tutorials/pretrained_lora_rl.md.

    python examples/pretrained_lora_rl.py
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jirl.mdp.sampler import SamplingConfig, generate
from jirl.models.heads import SequenceRewardModel
from jirl.models.lora import ADAPTERS, adapter_params, add_lora
from jirl.models.pretrained import load_pretrained
from jirl.models.transformer import gpt2_tiny
from jirl.rewards.losses import preference_objective
from jirl.rewards.models import reward_model_rewards, sequence_reward_fn
from jirl.rl.loop import RLConfig, make_rl_iteration
from jirl.train.loop import train_on_arrays
from jirl.train.step import init_train_state, make_update_step

TINY_LLAMA = Path(__file__).resolve().parents[1] / "tests" / "models" / "fixtures" / "tiny_llama"
PROMPT_LEN, HORIZON = 4, 8


@dataclasses.dataclass(eq=False)
class PromptSet:
    """What an RL iteration needs of a task: ``sample_prompts``, a ``horizon`` and an ``eos_id``."""

    tokens: np.ndarray  # [N, PROMPT_LEN] token ids
    horizon: int
    eos_id: int

    def sample_prompts(self, key, batch_size: int):
        index = jax.random.choice(key, len(self.tokens), (batch_size,))
        return jnp.asarray(self.tokens)[index], jnp.full((batch_size,), self.tokens.shape[1], jnp.int32)


def hidden_score(tokens, prompt_lens, response_lens):
    """The rule the annotator follows (the learned reward never sees it): the fraction of even
    token ids in the response, ``[B]``."""
    steps = jnp.arange(tokens.shape[1])[None, :]
    in_response = (steps >= prompt_lens[:, None]) & (steps < (prompt_lens + response_lens)[:, None])
    even = in_response & (tokens % 2 == 0)
    return jnp.sum(even, axis=1) / jnp.maximum(response_lens, 1)


def preference_pairs(key, vocab_size: int, eos_id: int, count: int) -> dict:
    """``count`` pairs of random responses to random prompts, the one with the higher hidden
    score marked chosen (the pair layout of ``jirl.data.preferences``)."""
    k_prompt, k_a, k_b, k_len = jax.random.split(key, 4)
    prompt = jax.random.randint(k_prompt, (count, PROMPT_LEN), 3, vocab_size)
    lens = jax.random.randint(k_len, (2, count), 2, HORIZON + 1)
    buffers, scores = [], []
    for k, n in zip((k_a, k_b), lens):
        response = jax.random.randint(k, (count, HORIZON), 3, vocab_size)
        response = jnp.where(jnp.arange(HORIZON)[None, :] < n[:, None], response, eos_id)
        tokens = jnp.concatenate([prompt, response], axis=1)
        buffers.append(tokens)
        scores.append(hidden_score(tokens, jnp.full(count, PROMPT_LEN), n))
    a_wins = scores[0] >= scores[1]
    pick = lambda a, b: jnp.where(a_wins.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
    return {
        "chosen": np.asarray(pick(buffers[0], buffers[1])), "rejected": np.asarray(pick(buffers[1], buffers[0])),
        "prompt_len": np.full(count, PROMPT_LEN, np.int32),
        "chosen_len": np.asarray(pick(lens[0], lens[1])), "rejected_len": np.asarray(pick(lens[1], lens[0])),
    }


def mean_scores(key, graphdef, params, prompts: PromptSet, reward_fn, rounds: int = 4, rows: int = 64) -> dict:
    """Learned and hidden scores of ``rounds x rows`` sampled responses (``rows`` is the RL batch,
    so the sampler compiled for RL is reused)."""
    learned, hidden = [], []
    for r in range(rounds):
        tokens, lens = prompts.sample_prompts(jax.random.fold_in(key, 2 * r), rows)
        sampling = SamplingConfig(max_new_tokens=prompts.horizon, eos_id=prompts.eos_id)
        out = generate(graphdef, params, tokens, lens, jax.random.fold_in(key, 2 * r + 1), sampling)
        learned.append(jnp.sum(reward_fn(out.tokens, out.prompt_lens, out.response_lens), axis=1))
        hidden.append(hidden_score(out.tokens, out.prompt_lens, out.response_lens))
    return {"learned": float(jnp.mean(jnp.concatenate(learned))), "hidden": float(jnp.mean(jnp.concatenate(hidden)))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(TINY_LLAMA), help="a Hugging Face folder, a .gguf file or a preset name")
    parser.add_argument("--iterations", type=int, default=40)
    args = parser.parse_args(argv)

    # Step 1: the pretrained model, as (graphdef, params), and LoRA adapters on its attention.
    base = load_pretrained(args.model)
    vocab, eos_id = base.config.vocab_size, 2  # the tiny Llama's eos_token_id (config.json)
    if base.tokenizer is not None:
        eos_id = base.tokenizer.eos_id
    policy = add_lora(nnx.merge(base.graphdef, base.params), rank=4)  # B = 0: starts equal to the base
    graphdef, ref_params = nnx.split(policy)
    base_only = nnx.All(nnx.Param, nnx.Not(ADAPTERS))  # LoRAParam is a kind of Param: exclude it
    base_before = jax.tree_util.tree_map(np.array, nnx.filter_state(ref_params, base_only))

    # Step 2: a reward model learned from preference pairs (same token ids as the policy).
    rm_graphdef, rm_params = nnx.split(SequenceRewardModel(gpt2_tiny(vocab, d_model=32, max_len=PROMPT_LEN + HORIZON), rngs=nnx.Rngs(1)))
    pairs = preference_pairs(jax.random.key(1), vocab, eos_id, 2048)
    rm_optimizer = optax.adam(3e-3)
    rm_state = init_train_state(rm_params, rm_optimizer, jax.random.key(2))
    rm_step = make_update_step(preference_objective(sequence_reward_fn(rm_graphdef), "bt"), rm_optimizer)
    rm_state, rm_metrics = train_on_arrays(rm_state, rm_step, pairs, steps=150, batch_size=64, seed=0)
    print(f"reward model: train-batch accuracy {float(rm_metrics['accuracy']):.2f}")
    reward_fn = reward_model_rewards(rm_graphdef, rm_state.full_params, vocab, HORIZON)  # [B, horizon], at the end

    # Step 3: RLOO with the KL to the base model in the reward; only the adapters train.
    prompts = PromptSet(np.asarray(jax.random.randint(jax.random.key(3), (64, PROMPT_LEN), 3, vocab)), HORIZON, eos_id)
    rl = RLConfig(advantage="rloo", policy_loss="pg", group_size=4, prompts_per_iteration=16, kl_coef=0.05)
    optimizer = optax.adam(5e-3)
    state = init_train_state(ref_params, optimizer, jax.random.key(4), trainable=ADAPTERS)
    rl_iteration = make_rl_iteration(prompts, graphdef, optimizer, rl, reward_fn=reward_fn)
    before = mean_scores(jax.random.key(5), graphdef, ref_params, prompts, reward_fn)
    for iteration in range(args.iterations):
        state, metrics = rl_iteration(state, ref_params, jax.random.fold_in(jax.random.key(6), iteration))
        if iteration % 10 == 0 or iteration == args.iterations - 1:
            print(f"iteration {iteration:3d}: reward {metrics['reward']:+.3f}  KL {metrics['kl_to_reference']:.3f}")
    params = state.full_params
    after = mean_scores(jax.random.key(5), graphdef, params, prompts, reward_fn)
    print(f"learned reward {before['learned']:+.3f} -> {after['learned']:+.3f}; hidden score {before['hidden']:.3f} -> {after['hidden']:.3f}")

    # Step 4: the checks. The base weights are bit-for-bit unchanged; only the adapters moved.
    base_after = jax.tree_util.tree_leaves(nnx.filter_state(params, base_only))
    assert len(base_after) == len(jax.tree_util.tree_leaves(base_before)) > 0
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(base_before), base_after))
    lora_b = nnx.filter_state(adapter_params(params), nnx.PathContains("lora_b"))  # zeros before training
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(lora_b)) > 0, "the adapters did not train"
    assert after["learned"] > before["learned"] + 0.5, (before, after)
    assert after["hidden"] > before["hidden"] + 0.05, (before, after)  # the learned reward carried the real preference
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
