"""bfloat16 vs float32 compute on this machine: the matmul shapes of the benchmarks, and jirl's DPO step.

Half-width compute pays where the hardware multiplies bf16 natively (GPU tensor cores, TPUs,
CPUs with AVX512-BF16 or AMX); elsewhere XLA converts and the products cost what float32's
do, or more. This script measures it instead of assuming it, in one process:

- **matmuls**: GFLOP/s of ``jnp.dot`` in each dtype at the shapes the benchmarks run: the
  1024^3 peak, a training layer (8,192 tokens x 256 -> 688), the LM head of the DPO step
  (4,096 tokens x 256 -> 49,152) and a decoding projection of SmolLM2 at 16 rows (576 -> 1,536);
- **DPO step**: ``training.bench_jirl_dpo`` (the step of ``training.py``) with the model's
  compute dtype float32 and bfloat16 (parameters and optimizer state stay float32).

Also records whether the CPU reports bf16 instructions (``avx512_bf16``, ``amx_bf16``).

    python benchmarks/dtypes.py                              # writes benchmarks/results/dtypes.json
    python benchmarks/dtypes.py --small --repeats 1 --steps 1   # smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure, write_results  # noqa: E402

DTYPES = ("float32", "bfloat16")
# name: (rows, inner, columns)
MATMULS = {
    "peak 1024^3": (1024, 1024, 1024),
    "training layer 8192x256x688": (8192, 256, 688),
    "DPO LM head 4096x256x49152": (4096, 256, 49_152),
    "decode projection 16x576x1536": (16, 576, 1536),
}
SMALL_MATMULS = {"small 64x32x48": (64, 32, 48)}


def cpu_bf16_flags() -> list[str]:
    """The bf16 instruction sets the kernel reports for this CPU (empty: none, or not Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile")})


def matmul_rates(shapes: dict, repeats: int) -> dict:
    """GFLOP/s of each shape in each dtype, and bf16's speed relative to float32."""
    rates = {}
    for name, (m, k, n) in shapes.items():
        row = {}
        for dtype in DTYPES:
            a = jax.random.normal(jax.random.key(0), (m, k)).astype(dtype)
            b = jax.random.normal(jax.random.key(1), (k, n)).astype(dtype)
            product = jax.jit(lambda x, y: x @ y)
            timing = measure(lambda: product(a, b), repeats=repeats, warmup=2, block=jax.block_until_ready)
            row[dtype] = {"gflops_per_s": 2 * m * k * n / timing.median / 1e9, "median_ms": 1e3 * timing.median}
        row["bf16_speedup"] = row["float32"]["median_ms"] / row["bfloat16"]["median_ms"]
        rates[name] = row
        print(f"{name}: float32 {row['float32']['gflops_per_s']:.0f}, bfloat16 {row['bfloat16']['gflops_per_s']:.0f} GFLOP/s")
    return rates


def main(argv=None) -> dict:
    from training import bench_jirl_dpo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per matmul")
    parser.add_argument("--steps", type=int, default=4, help="timed DPO steps per dtype")
    parser.add_argument("--batch", type=int, default=16, help="DPO pairs per step")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--small", action="store_true", help="a tiny matmul only (smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dtypes.json"))
    args = parser.parse_args(argv)

    matmuls = matmul_rates(SMALL_MATMULS if args.small else MATMULS, args.repeats)
    dpo = {dtype: bench_jirl_dpo(args.batch, args.seq, args.steps, warmup=1, dtype=dtype) for dtype in DTYPES}
    dpo["bf16_speedup"] = dpo["float32"]["median_s"] / dpo["bfloat16"]["median_s"]
    print(f"DPO step: float32 {dpo['float32']['rate']:.0f}, bfloat16 {dpo['bfloat16']['rate']:.0f} tokens/s")
    results = {
        "benchmark": "dtypes", "cpu_bf16_flags": cpu_bf16_flags(), "matmuls": matmuls,
        "dpo_step": dpo, "dpo_shape": {"batch": args.batch, "seq": args.seq},
    }
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
