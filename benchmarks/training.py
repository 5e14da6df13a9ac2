"""Training-step throughput: jirl vs TRL on the same tiny Llama, same process, same shapes.

Model: a Llama-family transformer, 4 layers, d_model 256, 4 heads, SwiGLU width 688, tied
embeddings, SmolLM2's 49,152-token vocabulary, float32, randomly initialised (the same
architecture in both libraries: ``transformers.LlamaForCausalLM`` for TRL).

1. **DPO step** (sigmoid loss, beta 0.1, AdamW): ``--batch`` pairs of prompt 128 + response 128
   tokens (sequence 256), the reference scored inside the step in both (TRL's default; jirl's
   ``with_reference`` + ``POLICY_ONLY``). jirl is told the response bound
   (``preference_loss(..., response_horizon=128)``) so its LM head runs at the responses only;
   TRL runs its default fused LM head. Tokens/s counts ``2 x batch x 256`` tokens per step.
2. **GRPO iteration**: ``--batch`` responses (``--batch / 4`` prompts x 4) of 128 new tokens
   after 128-token prompts: sample, reward, reference log-probs, group-normalised advantages,
   one update with the KL in the loss (beta 0.04, k3). TRL: ``GRPOTrainer`` with the same
   settings and a Python reward; jirl: ``make_rl_iteration`` with ``advantage="grpo"``.

Model-FLOPs utilisation is the FLOPs a step needs (PaLM's accounting, see
``harness.forward_flops_per_token``: a forward token costs F, a trained token 3F; DPO counts the
policy's forward-backward and the reference's forward, GRPO also the sampled tokens) over the
step time and the measured matmul peak (``harness.matmul_peak_flops``). A step needs every layer
at every token but the LM head (2 x d x vocab per token, three quarters of this model's FLOPs)
only where a log-prob is read, i.e. at the response tokens; a library that also runs the head
over the prompt does more work than counted, and the same count is used for both libraries.

Times are step-to-step intervals: TRL's through a ``TrainerCallback`` at each ``on_step_end``
(data loading, the step and its logging all inside, as a user would run it); jirl's around one
``step_fn`` call fed a host batch. The first ``--warmup`` steps (compilation; PyTorch's first
allocations) are reported apart.

    python benchmarks/training.py                         # writes benchmarks/results/training.json
    python benchmarks/training.py --steps 2 --warmup 1 --batch 4 --seq 32 --no-peer   # smoke

Needs the ``bench`` extra (PyTorch CPU build, transformers, TRL) for the peer.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Timing, forward_flops_per_token, matmul_peak_flops, measure, write_results  # noqa: E402

VOCAB = 49_152  # SmolLM2's tokenizer, used by TRL's side to make text of known length
GROUP = 4  # GRPO responses per prompt
DPO_BETA, GRPO_BETA, LEARNING_RATE = 0.1, 0.04, 1e-5


def jirl_config(seq: int, dtype: str = "float32"):
    from jirl.models.transformer import TransformerConfig

    return TransformerConfig(
        vocab_size=VOCAB, family="llama", d_model=256, num_layers=4, num_heads=4, max_len=seq, tie_embeddings=True, dtype=dtype
    )


def jirl_params(config):
    from jirl.models.transformer import Transformer

    return nnx.split(Transformer(config, rngs=nnx.Rngs(0)))


def timing_of(intervals: list[float], warmup: int) -> Timing:
    if len(intervals) <= warmup:
        raise ValueError(f"need more than --warmup={warmup} steps to time, got {len(intervals)}")
    return Timing(first_call_s=sum(intervals[:warmup]), seconds=intervals[warmup:])


# --------------------------------------------------------------------------- DPO


def pair_batches(rng, count: int, batch: int, prompt: int, response: int) -> list[dict]:
    """Host pair batches of full-length buffers (prompt + response tokens, no padding)."""
    width = prompt + response
    return [
        {
            "chosen": rng.integers(1, VOCAB, (batch, width), dtype=np.int32),
            "rejected": np.concatenate(
                [np.zeros((batch, prompt), np.int32), rng.integers(1, VOCAB, (batch, response), dtype=np.int32)], axis=1
            ),
            "prompt_len": np.full((batch,), prompt, np.int32),
            "chosen_len": np.full((batch,), response, np.int32),
            "rejected_len": np.full((batch,), response, np.int32),
        }
        for _ in range(count)
    ]


def bench_jirl_dpo(batch: int, seq: int, steps: int, warmup: int, dtype: str = "float32") -> dict:
    """jirl's DPO step; ``dtype`` is the compute dtype (parameters stay float32)."""
    from jirl.preference.objective import POLICY_ONLY, preference_loss, with_reference
    from jirl.train.step import init_train_state, make_update_step

    graphdef, params = jirl_params(jirl_config(seq, dtype))
    optimizer = optax.adamw(LEARNING_RATE)
    state = init_train_state(with_reference(params, params), optimizer, jax.random.key(0), trainable=POLICY_ONLY)
    # The data's response bound, so the LM head runs at the responses only (as the FLOPs count).
    loss_fn = preference_loss(graphdef, "dpo", beta=DPO_BETA, response_horizon=seq - seq // 2)
    step_fn = make_update_step(loss_fn, optimizer)
    batches = pair_batches(np.random.default_rng(0), 4, batch, seq // 2, seq - seq // 2)
    for b in batches:  # the pairs share their prompt, as check_pairs requires
        b["rejected"][:, : seq // 2] = b["chosen"][:, : seq // 2]
    holder = {"state": state, "i": 0}

    def run():
        holder["state"], metrics = step_fn(holder["state"], batches[holder["i"] % len(batches)])
        holder["i"] += 1
        return metrics["loss"]

    return measure(run, repeats=steps, warmup=warmup, block=jax.block_until_ready).summary(2 * batch * seq, "tokens/s")


def word_tokens(tokenizer) -> list[str]:
    """Words that are one token each with a leading space, so ``n`` of them joined make ``n``
    tokens: text of a known token length for TRL's tokenising data path."""
    words = []
    for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if token.startswith("Ġ") and token[1:].isalpha() and token[1:].islower() and len(token) > 3:
            words.append(token[1:])
    return words


def text_of(rng, words: list[str], n: int) -> str:
    return "".join(" " + words[i] for i in rng.integers(0, len(words), n))


def hf_model_and_tokenizer(seq: int) -> tuple[str, object]:
    """A randomly initialised ``LlamaForCausalLM`` of the benchmark's shape, saved to a folder
    (returned) with SmolLM2's tokenizer."""
    import torch
    import transformers

    from jirl.models.gguf import smollm2_gguf_path

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    path = smollm2_gguf_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=jirl_config(seq).ff_dim, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=max(seq, 512), tie_word_embeddings=True,
        rms_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # TRL builds the reference model from a path, so the model goes through a folder, as a user's would.
    folder = Path(tempfile.mkdtemp(prefix="jirl-bench-llama-"))
    transformers.LlamaForCausalLM(config).float().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), tokenizer


class StepClock:
    """A ``transformers.TrainerCallback`` recording the interval between consecutive step ends
    (the first from ``on_train_begin``)."""

    def __new__(cls):
        import transformers

        class _Clock(transformers.TrainerCallback):
            def __init__(self):
                self.intervals, self._last = [], None

            def on_train_begin(self, args, state, control, **kwargs):
                self._last = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                now = time.perf_counter()
                self.intervals.append(now - self._last)
                self._last = now

        return _Clock()


def common_trainer_args(steps: int, batch: int) -> dict:
    return dict(
        output_dir="/tmp/jirl-bench-trl", per_device_train_batch_size=batch, max_steps=steps, learning_rate=LEARNING_RATE,
        logging_steps=10**6, save_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=0, seed=0,
        bf16=False, fp16=False, disable_tqdm=True,
        # TRL 1.x turns gradient checkpointing on by default (recomputing activations in the
        # backward pass); off, TRL is faster at this size, so the peer runs its fastest setting.
        gradient_checkpointing=False,
    )


def bench_trl_dpo(batch: int, seq: int, steps: int, warmup: int) -> dict:
    import datasets
    import trl

    model_path, tokenizer = hf_model_and_tokenizer(seq)
    words, rng = word_tokens(tokenizer), np.random.default_rng(0)
    prompt, response = seq // 2, seq - seq // 2
    # Responses are longer than needed: max_length cuts every sequence to exactly `seq` tokens.
    rows = [
        {"prompt": text_of(rng, words, prompt), "chosen": text_of(rng, words, response + 8), "rejected": text_of(rng, words, response + 8)}
        for _ in range(batch * (steps + warmup))
    ]
    config = trl.DPOConfig(beta=DPO_BETA, loss_type=["sigmoid"], max_length=seq, **common_trainer_args(steps + warmup, batch))
    clock = StepClock()
    trainer = trl.DPOTrainer(model=model_path, args=config, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer, callbacks=[clock])
    lengths = [len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in trainer.train_dataset.select(range(8))]
    if min(lengths) < seq:
        raise RuntimeError(f"TRL's sequences are shorter than {seq} tokens ({lengths}); the comparison would be unfair")
    trainer.train()
    return timing_of(clock.intervals, warmup).summary(2 * batch * seq, "tokens/s")


# --------------------------------------------------------------------------- GRPO


class RandomPrompts:
    """What an RL iteration needs of a task: fixed random prompts of one length."""

    def __init__(self, count: int, prompt: int, horizon: int, seed: int = 0):
        self.tokens = np.random.default_rng(seed).integers(1, VOCAB, (count, prompt), dtype=np.int32)
        self.lens = np.full((count,), prompt, np.int32)
        self.horizon, self.eos_id = horizon, 0

    def sample_prompts(self, key, batch_size: int):
        index = jax.random.choice(key, len(self.lens), (batch_size,))
        return jnp.asarray(self.tokens)[index], jnp.asarray(self.lens)[index]


def low_id_reward(tokens, prompt_lens, response_lens, horizon: int):
    """A verifiable-style reward on device: the fraction of response tokens in the lower half of
    the vocabulary, paid at the last token (the TRL side computes the same in Python)."""
    from jirl.models.scoring import gather_response, response_mask

    response = gather_response(tokens, prompt_lens, horizon, shift=0)
    mask = response_mask(response_lens, horizon)
    score = jnp.sum((response < VOCAB // 2) & mask, axis=1) / jnp.maximum(response_lens, 1)
    last = jax.nn.one_hot(response_lens - 1, horizon)
    return score[:, None] * last


def bench_jirl_grpo(batch: int, seq: int, steps: int, warmup: int) -> dict:
    from jirl.rl.loop import RLConfig, make_rl_iteration
    from jirl.train.step import init_train_state

    prompt, horizon = seq // 2, seq - seq // 2
    graphdef, params = jirl_params(jirl_config(seq))
    prompts = RandomPrompts(64, prompt, horizon)
    rl = RLConfig(
        advantage="grpo", policy_loss="ppo", aggregation="token_mean", group_size=GROUP, prompts_per_iteration=batch // GROUP,
        kl_coef=GRPO_BETA, kl_in="loss", kl_estimator="k3",
    )
    optimizer = optax.adamw(LEARNING_RATE)
    state = init_train_state(params, optimizer, jax.random.key(0))
    rl_iteration = make_rl_iteration(prompts, graphdef, optimizer, rl, reward_fn=lambda t, p, r: low_id_reward(t, p, r, horizon))
    holder = {"state": state, "i": 0}

    def run():
        key = jax.random.fold_in(jax.random.key(1), holder["i"])
        holder["state"], metrics = rl_iteration(holder["state"], params, key)
        holder["i"] += 1
        return holder["state"].step

    return measure(run, repeats=steps, warmup=warmup, block=jax.block_until_ready).summary(batch * seq, "tokens/s")


def bench_trl_grpo(batch: int, seq: int, steps: int, warmup: int) -> dict:
    import datasets
    import trl

    model_path, tokenizer = hf_model_and_tokenizer(seq)
    words, rng = word_tokens(tokenizer), np.random.default_rng(0)
    prompt, horizon = seq // 2, seq - seq // 2
    rows = [{"prompt": text_of(rng, words, prompt)} for _ in range(64)]
    lengths = [len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows[:8]]
    if set(lengths) != {prompt}:
        raise RuntimeError(f"prompts should be {prompt} tokens, got {lengths}")

    def low_id_reward_trl(completion_ids, **kwargs):
        return [sum(t < VOCAB // 2 for t in ids) / max(len(ids), 1) for ids in completion_ids]

    config = trl.GRPOConfig(
        num_generations=GROUP, max_completion_length=horizon, temperature=1.0, top_p=1.0, top_k=0, beta=GRPO_BETA,
        loss_type="dapo", num_iterations=1, **common_trainer_args(steps + warmup, batch),
    )
    clock = StepClock()
    trainer = trl.GRPOTrainer(
        model=model_path, reward_funcs=low_id_reward_trl, args=config, train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer, callbacks=[clock],
    )
    trainer.train()
    return timing_of(clock.intervals, warmup).summary(batch * seq, "tokens/s")


# --------------------------------------------------------------------------- where a DPO step goes


def dpo_breakdown(batch: int, seq: int, repeats: int) -> dict:
    """Milliseconds of the parts of jirl's DPO step on its ``2 x batch`` sequences, each jitted
    apart: the transformer layers (forward; forward + backward) and the LM head with the
    log-softmax normaliser over the vocabulary at the response tokens, as the step computes it
    (``head_log_probs``; forward; forward + backward), with each part's FLOPs over its time."""
    from jirl.models.scoring import head_log_probs
    from jirl.models.transformer import forward

    config = jirl_config(seq)
    graphdef, params = jirl_params(config)
    rows, response = 2 * batch, seq - seq // 2
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, VOCAB, (rows, seq)), jnp.int32)
    hidden = jax.random.normal(jax.random.key(0), (rows, response, config.d_model))
    embedding = nnx.merge(graphdef, params).head_weight()  # the matrix the step's head uses
    trunk = lambda p, t: jnp.sum(forward(graphdef, p, t).hidden ** 2)  # noqa: E731
    targets = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (rows, response)), jnp.int32)
    head = lambda h, e: jnp.sum(head_log_probs(h, e, targets))  # noqa: E731
    parts = {
        "layers_forward": (jax.jit(trunk), (params, tokens), 1),
        "layers_forward_backward": (jax.jit(jax.grad(trunk)), (params, tokens), 3),
        "head_forward": (jax.jit(head), (hidden, embedding), 1),
        "head_forward_backward": (jax.jit(jax.grad(head, argnums=(0, 1))), (hidden, embedding), 3),
    }
    layer_flops = rows * seq * forward_flops_per_token(config, seq, head=False)
    head_flops = rows * response * 2 * config.d_model * config.vocab_size
    result = {}
    for name, (fn, args, passes) in parts.items():
        median = measure(lambda: fn(*args), repeats=repeats, warmup=1, block=jax.block_until_ready).median
        flops = passes * (layer_flops if name.startswith("layers") else head_flops)
        result[name] = {"ms": 1e3 * median, "gflops_per_s": flops / median / 1e9}
    return result


# --------------------------------------------------------------------------- report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="pairs per DPO step; responses per GRPO iteration")
    parser.add_argument("--seq", type=int, default=256, help="prompt + response tokens")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (compilation)")
    parser.add_argument("--only", choices=["dpo", "grpo"], nargs="+", default=["dpo", "grpo"])
    parser.add_argument("--no-peer", action="store_true", help="skip TRL (jirl only)")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of jirl's DPO step (layers, LM head)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "training.json"))
    args = parser.parse_args(argv)
    if args.batch % GROUP:
        parser.error(f"--batch must be a multiple of {GROUP} (GRPO's group size)")

    peak = matmul_peak_flops()
    config, response = jirl_config(args.seq), args.seq - args.seq // 2
    # One sequence's forward: every layer at all tokens, the LM head at the response tokens.
    forward = args.seq * forward_flops_per_token(config, args.seq, head=False) + response * 2 * config.d_model * config.vocab_size
    # Per step: DPO trains 2B sequences (3 forwards' worth each) and scores them with the
    # reference (1); GRPO samples B sequences (1), scores them with the reference (1) and trains (3).
    step_flops = {"dpo": 2 * args.batch * 4 * forward, "grpo": args.batch * 5 * forward}
    contenders = {"dpo": (bench_jirl_dpo, bench_trl_dpo), "grpo": (bench_jirl_grpo, bench_trl_grpo)}
    rows = []
    for name in args.only:
        ours, peer = contenders[name]
        row = {"step": name, "flops_per_step": step_flops[name], "jirl": ours(args.batch, args.seq, args.steps, args.warmup)}
        row["jirl"]["mfu"] = step_flops[name] / row["jirl"]["median_s"] / peak
        if not args.no_peer:
            row["trl"] = peer(args.batch, args.seq, args.steps, args.warmup)
            row["trl"]["mfu"] = step_flops[name] / row["trl"]["median_s"] / peak
            row["speedup"] = row["trl"]["median_s"] / row["jirl"]["median_s"]
        rows.append(row)
        peer_text = f"; TRL {row['trl']['rate']:.0f} tokens/s (MFU {row['trl']['mfu']:.1%}), x{row['speedup']:.2f}" if "speedup" in row else ""
        print(f"{name}: jirl {row['jirl']['rate']:.0f} tokens/s (MFU {row['jirl']['mfu']:.1%}, first steps {row['jirl']['first_call_s']:.1f} s){peer_text}", flush=True)
    breakdown = dpo_breakdown(args.batch, args.seq, args.steps) if args.breakdown else None
    for name, part in (breakdown or {}).items():
        print(f"DPO step part {name}: {part['ms']:.0f} ms, {part['gflops_per_s']:.0f} GFLOP/s (peak {peak / 1e9:.0f})", flush=True)
    results = {
        "benchmark": "training", "dpo_breakdown": breakdown, "model": "llama 4 layers, d 256, 4 heads, ff 688, vocab 49152, float32",
        "batch": args.batch, "seq": args.seq, "matmul_peak_flops": peak, "rows": rows,
        "median_spread_note": "rate at the median step; rate_min/rate_max at the slowest/fastest step",
    }
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
