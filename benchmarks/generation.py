"""Generation throughput: jirl's sampler vs Hugging Face ``transformers.generate``, same process.

SmolLM2-135M-Instruct in float32 (both load the same Q4_1 GGUF, dequantised), the same chat
prompts, ``--batch-sizes`` rows, ``--new-tokens`` sampled tokens per row (temperature 1, no
top-k/top-p). Tokens/s counts the tokens actually generated. jirl's first call (compilation)
is reported apart. Also jirl's fraction of two rooflines at batch B:

- compute: FLOPs per generated token (2 x matmul parameters + attention over the context) x
  tokens/s over the measured matmul peak (``harness.matmul_peak_flops``);
- memory: every decode step reads all weights once, so ``steps/s x weight bytes`` over the
  measured memory bandwidth (``harness.memory_bandwidth``).

    python benchmarks/generation.py                       # batch 1, 16, 64; writes benchmarks/results/generation.json
    python benchmarks/generation.py --batch-sizes 1 --new-tokens 4 --repeats 1 --no-peer   # smoke

Needs the ``bench`` extra (PyTorch CPU build, transformers) for the peer.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import forward_flops_per_token, matmul_peak_flops, measure, memory_bandwidth, write_results  # noqa: E402

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a neural network is in one sentence.",
    "Give me three tips for sleeping better.",
)


def chat_prompts(tokenizer, batch: int) -> list[list[int]]:
    """``batch`` chat-formatted prompts, cycling through ``PROMPTS``."""
    return [tokenizer.encode_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in range(batch)]


def left_aligned(ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(x) for x in ids)
    tokens = np.full((len(ids), width), pad_id, np.int32)
    for row, x in enumerate(ids):
        tokens[row, : len(x)] = x
    return tokens, np.array([len(x) for x in ids], np.int32)


def weight_bytes(params) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))


def bench_jirl(model, batch: int, new_tokens: int, repeats: int) -> dict:
    from jirl.mdp.sampler import SamplingConfig, generate

    tokens, lens = left_aligned(chat_prompts(model.tokenizer, batch), model.tokenizer.eos_id)
    # EOS = id 0 (<|endoftext|>), which the chat model does not emit mid-reply, so every row
    # generates new_tokens tokens, as transformers does with min_new_tokens.
    sampling = SamplingConfig(max_new_tokens=new_tokens, eos_id=0, temperature=1.0)
    keys = iter(jax.random.split(jax.random.key(0), repeats + 2))
    generated = []

    def run():
        out = generate(model.graphdef, model.params, tokens, lens, next(keys), sampling)
        generated.append(out.response_lens)
        return out.tokens

    timing = measure(run, repeats=repeats, warmup=1, block=jax.block_until_ready)
    per_call = float(np.mean([np.sum(np.asarray(n)) for n in generated[1:]]))
    result = timing.summary(per_call, "tokens/s")
    result["tokens_per_call"] = per_call
    result["prompt_len_mean"] = float(lens.mean())
    return result


def bench_transformers(batch: int, new_tokens: int, repeats: int) -> dict:
    import torch
    import transformers

    from jirl.models.gguf import smollm2_gguf_path

    torch.set_num_threads(os.cpu_count() or 1)
    path = smollm2_gguf_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.padding_side = "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], tokenize=False, add_generation_prompt=True)
        for i in range(batch)
    ]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)

    def run():
        with torch.inference_mode():
            return model.generate(
                **inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )

    timing = measure(run, repeats=repeats, warmup=1)
    return timing.summary(batch * new_tokens, "tokens/s")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true", help="skip transformers (jirl only)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation.json"))
    args = parser.parse_args(argv)

    from jirl.models.pretrained import load_pretrained

    model = load_pretrained("smollm2-135m-instruct", max_len=256)
    peak, bandwidth = matmul_peak_flops(), memory_bandwidth()
    rows = []
    for batch in args.batch_sizes:
        row = {"batch": batch, "jirl": bench_jirl(model, batch, args.new_tokens, args.repeats)}
        context = row["jirl"]["prompt_len_mean"] + args.new_tokens / 2
        tokens_per_s = row["jirl"]["rate"]
        row["jirl"]["compute_roofline_fraction"] = forward_flops_per_token(model.config, context) * tokens_per_s / peak
        row["jirl"]["memory_roofline_fraction"] = (tokens_per_s / batch) * weight_bytes(model.params) / bandwidth
        if not args.no_peer:
            row["transformers"] = bench_transformers(batch, args.new_tokens, args.repeats)
            row["speedup"] = tokens_per_s / row["transformers"]["rate"]
        rows.append(row)
        peer = f", transformers {row['transformers']['rate']:.1f} tokens/s, x{row['speedup']:.2f}" if "speedup" in row else ""
        print(f"batch {batch}: jirl {tokens_per_s:.1f} tokens/s (compile {row['jirl']['first_call_s']:.1f} s){peer}", flush=True)
    results = {
        "benchmark": "generation", "model": "smollm2-135m-instruct (Q4_1 GGUF dequantised to float32)",
        "new_tokens": args.new_tokens, "matmul_peak_flops": peak, "memory_bandwidth_bytes_per_s": bandwidth,
        "weight_bytes": weight_bytes(model.params), "rows": rows,
    }
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
