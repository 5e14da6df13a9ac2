"""Data parallel and FSDP on 1, 2, 4 and 8 (fake) devices: same results, and what it costs.

On a CPU, XLA splits the host into N devices when ``--xla_force_host_platform_device_count=N``
is set before JAX starts; this script sets 8 itself. For each mesh it trains the same SFT
objective (a small Llama on random tokens) from the same weights on the same batches, with
the update step jitted once with explicit input and output shardings and the state donated:

- ``data=N``: the batch split N ways, parameters replicated;
- ``fsdp=N``: the batch split N ways and the parameters and optimizer state split N ways too.

Correctness: the losses and final parameters must match the 1-device run (plain SGD, so
rounding stays at rounding level). Reported as information: compile time and step time. On a
2-core CPU the fake devices share two cores, so more devices cannot run faster here; the
numbers show the overhead of the partitioned program, not a speed-up.

    python benchmarks/devices.py                                  # writes benchmarks/results/devices.json
    python benchmarks/devices.py --devices 1 2 --steps 2 --repeats 1   # smoke
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure, write_results  # noqa: E402

OPTIMIZER = optax.sgd(0.1)


def sharded_step(loss_fn, state, mesh, strategy: str):
    """The update step jitted for ``mesh``: the state placed by ``strategy``, the batch split
    over the data axes, the new state returned in the same layout (so no step recompiles)."""
    from jirl.sharding import batch_sharding, param_shardings
    from jirl.train.step import update_fn

    state_shardings = param_shardings(state, mesh, strategy)
    step = jax.jit(
        update_fn(loss_fn, OPTIMIZER), in_shardings=(state_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, None), donate_argnums=(0,),
    )
    return step, jax.device_put(state, state_shardings)


def main(argv=None) -> dict:
    from jirl.models.transformer import Transformer, TransformerConfig
    from jirl.train.sft import sft_loss
    from jirl.sharding import make_mesh
    from jirl.train.step import init_train_state

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="steps compared for equality")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps after those")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "devices.json"))
    args = parser.parse_args(argv)
    if max(args.devices) > jax.device_count():
        parser.error(f"only {jax.device_count()} devices; set XLA_FLAGS before JAX starts")

    config = TransformerConfig(vocab_size=512, family="llama", d_model=128, num_layers=2, num_heads=4, max_len=args.seq)
    graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    loss_fn = sft_loss(graphdef)
    rng = np.random.default_rng(0)
    batches = [
        {
            "tokens": rng.integers(1, config.vocab_size, (args.batch, args.seq), dtype=np.int32),
            "prompt_len": np.full((args.batch,), args.seq // 4, np.int32),
            "response_len": rng.integers(1, args.seq - args.seq // 4, (args.batch,), dtype=np.int32),
        }
        for _ in range(args.steps)
    ]

    rows, reference = [], None
    for n in args.devices:
        for strategy in ("replicate", "fsdp") if n > 1 else ("replicate",):
            mesh = make_mesh(data=n, fsdp=1, devices=jax.devices()[:n]) if strategy == "replicate" else make_mesh(data=1, fsdp=n, devices=jax.devices()[:n])
            step, state = sharded_step(loss_fn, init_train_state(params, OPTIMIZER, jax.random.key(0)), mesh, strategy)
            losses, start = [], time.perf_counter()
            for batch in batches:
                state, metrics = step(state, batch)
                losses.append(float(metrics["loss"]))
                if len(losses) == 1:
                    compile_s = time.perf_counter() - start  # the first call compiles
            final = [np.asarray(x) for x in jax.tree_util.tree_leaves(state.params)]
            holder = {"state": state}

            def run():
                holder["state"], metrics = step(holder["state"], batches[0])
                return metrics["loss"]

            timing = measure(run, repeats=args.repeats, warmup=1, block=jax.block_until_ready)
            row = {"devices": n, "mesh": "data" if strategy == "replicate" else "fsdp", **timing.summary(args.batch * args.seq, "tokens/s")}
            row["first_call_s"] = compile_s
            if reference is None:
                reference = (losses, final)
                row["max_loss_diff"], row["max_param_diff"] = 0.0, 0.0
            else:
                row["max_loss_diff"] = float(np.max(np.abs(np.asarray(losses) - np.asarray(reference[0]))))
                row["max_param_diff"] = float(max(np.max(np.abs(a - b)) for a, b in zip(final, reference[1])))
            row["equal"] = row["max_loss_diff"] <= 1e-5 and row["max_param_diff"] <= 1e-5
            rows.append(row)
            print(f"{n} device(s), {row['mesh']}: {row['rate']:.0f} tokens/s, loss diff {row['max_loss_diff']:.1e}, "
                  f"param diff {row['max_param_diff']:.1e} -> {'equal' if row['equal'] else 'DIFFERENT'}", flush=True)
    results = {"benchmark": "devices", "model": "llama 2 layers, d 128, vocab 512", "batch": args.batch, "seq": args.seq, "rows": rows}
    write_results(args.out, results)
    if not all(r["equal"] for r in rows):
        raise SystemExit("sharded runs differ from the 1-device run")
    return results


if __name__ == "__main__":
    main()
