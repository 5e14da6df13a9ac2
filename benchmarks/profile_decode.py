"""Where one decoding step of the sampler goes: SmolLM2-135M at batch 16 on this machine.

Each part is its own jitted program, timed apart (median of ``--repeats`` after two warm-up
calls), so the parts can be compared with the whole step and with the machine's floors:

- **step**: ``jirl.mdp.sampler.generate`` of ``--new-tokens`` tokens, per token;
- **forward**: one decoding forward pass (30 layers + LM head, the KV cache written in place);
- **layer matmuls**: the same ``[batch, d]`` activations through every projection of every layer
  with the model's real weight shapes (no attention, no norms): what the dense algebra costs at
  ``batch`` rows, and the rate it streams the weights at;
- **LM head**: ``hidden @ embedding.T`` (49,152 x 576);
- **attention**: ``transformer.heads_major_attention`` of one query over the cache, times the layers;
- **sampling**: ``choose_tokens`` (temperature 1) and ``token_log_probs`` on ``[batch, vocab]``.

The memory floor is the weight bytes over the measured bandwidth (``harness.memory_bandwidth``):
a decoding step must read every weight once.

    python benchmarks/profile_decode.py                 # writes benchmarks/results/profile_decode.json
    python benchmarks/profile_decode.py --tiny --repeats 1 --new-tokens 2   # smoke (random tiny model)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure, memory_bandwidth, write_results  # noqa: E402


def median_ms(fn, *args, repeats: int) -> float:
    return 1e3 * measure(lambda: fn(*args), repeats=repeats, warmup=2, block=jax.block_until_ready).median


def layer_matmuls(config):
    """``x -> x`` through every projection shape of every layer (q, k, v, o, gate, up, down)."""
    d, q, kv, ff = config.d_model, config.num_heads * config.dims_per_head, config.kv_heads * config.dims_per_head, config.ff_dim
    shapes = [(d, q), (d, kv), (d, kv), (q, d), (d, ff), (d, ff), (ff, d)]
    weights = [jnp.full((config.num_layers, *s), 1e-3, jnp.float32) for s in shapes]

    def run(x, weights):
        def layer(x, w):
            wq, wk, wv, wo, wg, wu, wd = w
            x = x + (x @ wq) @ wo + jnp.sum(x @ wk) + jnp.sum(x @ wv)
            return x + (jax.nn.silu(x @ wg) * (x @ wu)) @ wd, None

        return jax.lax.scan(layer, x, weights)[0]

    return jax.jit(run), weights, sum(w.size * 4 for w in weights)


def main(argv=None) -> dict:
    from jirl.mdp.sampler import SamplingConfig, choose_tokens, generate
    from jirl.models.scoring import token_log_probs
    from jirl.models.transformer import KVCache, Transformer, forward, heads_major_attention, llama_tiny

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=40, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="a random tiny Llama instead of SmolLM2 (smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "profile_decode.json"))
    args = parser.parse_args(argv)

    if args.tiny:
        graphdef, params = nnx.split(Transformer(llama_tiny(512, max_len=args.prompt + args.new_tokens), rngs=nnx.Rngs(0)))
        name = "random tiny llama"
    else:
        from jirl.models.pretrained import load_pretrained

        model = load_pretrained("smollm2-135m-instruct", max_len=256)
        graphdef, params, name = model.graphdef, model.params, "smollm2-135m-instruct (float32)"
    config = nnx.merge(graphdef, params).config
    b, width = args.batch, args.prompt + args.new_tokens
    parts = {}

    prompts = jnp.ones((b, args.prompt), jnp.int32)
    lens = jnp.full((b,), args.prompt, jnp.int32)
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, eos_id=0, temperature=1.0)  # all rows ending early is vanishingly rare
    parts["step"] = median_ms(lambda: generate(graphdef, params, prompts, lens, jax.random.key(0), sampling).tokens, repeats=args.repeats) / args.new_tokens

    decode = jax.jit(lambda p, t, pos, cache: forward(graphdef, p, t, pos, cache), donate_argnums=3)
    holder = {"cache": KVCache.zeros(config, b, width)}  # donated each call
    token, position = jnp.ones((b, 1), jnp.int32), jnp.full((b, 1), args.prompt, jnp.int32)

    def one_forward():
        out = decode(params, token, position, holder["cache"])
        holder["cache"] = out.cache
        return out.logits

    parts["forward"] = median_ms(one_forward, repeats=args.repeats)

    matmuls, weights, matmul_bytes = layer_matmuls(config)
    x = jnp.ones((b, config.d_model), jnp.float32)
    parts["layer_matmuls"] = median_ms(matmuls, x, weights, repeats=args.repeats)
    embedding = nnx.merge(graphdef, params).embed.embedding[...]
    parts["lm_head"] = median_ms(jax.jit(lambda h, e: h @ e.T), x, embedding, repeats=args.repeats)

    q = jnp.ones((b, 1, config.num_heads, config.dims_per_head), jnp.float32)
    kv = jnp.ones((b, config.kv_heads, width, config.dims_per_head), jnp.float32)  # the cache's layout
    slots = jnp.broadcast_to(jnp.arange(width), (b, width))
    one_attention = jax.jit(lambda q, k, v: heads_major_attention(q, k, v, position, slots)[0])
    parts["attention"] = config.num_layers * median_ms(one_attention, q, kv, kv, repeats=args.repeats)

    logits = jax.random.normal(jax.random.key(1), (b, config.vocab_size))
    sample = jax.jit(lambda key, logits: token_log_probs(logits, choose_tokens(key, logits, sampling)))
    parts["sampling"] = median_ms(sample, jax.random.key(2), logits, repeats=args.repeats)

    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
    bandwidth = memory_bandwidth()
    results = {
        "benchmark": "profile_decode", "model": name, "batch": b, "cache_slots": width, "milliseconds": parts,
        "weight_bytes": weight_bytes, "memory_bandwidth_bytes_per_s": bandwidth,
        "memory_floor_ms": 1e3 * weight_bytes / bandwidth,
        "layer_matmul_gb_per_s": matmul_bytes / parts["layer_matmuls"] / 1e6,
        "lm_head_gb_per_s": embedding.size * 4 / parts["lm_head"] / 1e6,
    }
    for part, ms in parts.items():
        print(f"{part:>14}: {ms:7.2f} ms" + (f"  ({ms / parts['step']:.0%} of a step)" if part != "step" else ""))
    print(f"memory floor {results['memory_floor_ms']:.1f} ms; layer matmuls stream weights at {results['layer_matmul_gb_per_s']:.1f} GB/s, "
          f"the LM head at {results['lm_head_gb_per_s']:.1f} GB/s (measured bandwidth {bandwidth / 1e9:.1f} GB/s)", flush=True)
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
