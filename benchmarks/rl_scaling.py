"""The RL loop's cost: many seeds in one vmapped program, and step time vs batch and length.

1. **Seeds**: one RLOO iteration (sample, score, advantages, one Adam update) of a small
   GPT-2-family policy on the ``bigram`` task, ``jax.vmap``-ed over S seeds in one jitted
   program; wall time per iteration for S = 1 and S = ``--seeds`` (target: S = 8 costs at most
   2x S = 1).
2. **Work**: the same iteration for a grid of batch sizes (prompts x group) and horizons;
   the exponent b of ``time ~ work^b`` fitted by least squares on log-log, per axis.

    python benchmarks/rl_scaling.py                    # writes benchmarks/results/rl_scaling.json
    python benchmarks/rl_scaling.py --repeats 1 --seeds 2 --batch-sizes 8 --horizons 4   # smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure, write_results  # noqa: E402


def rl_iteration_program(horizon: int, prompts: int, group: int, d_model: int = 64):
    """``(iterate, init)``: a jitted, seed-vmapped ``iterate(carry, keys) -> carry`` of one RLOO
    iteration and ``init(num_seeds)`` giving its starting carry."""
    from jirl.mdp.tasks import make_task
    from jirl.models.transformer import ModelSize, Transformer
    from jirl.rl.loop import RLConfig, collect, rl_loss

    task = make_task("bigram", num_chars=4, horizon=horizon)
    model = Transformer(ModelSize(family="gpt2", d_model=d_model).build(task.vocab_size, task.prompt_width + horizon), rngs=nnx.Rngs(0))
    graphdef, reference = nnx.split(model)
    rl = RLConfig(advantage="rloo", policy_loss="pg", prompts_per_iteration=prompts, group_size=group, kl_coef=0.1)
    loss = rl_loss(graphdef, rl, horizon)
    optimizer = optax.adam(1e-3)

    def iterate(carry, key):
        policy, opt_state = carry
        batch, _ = collect(key, task, graphdef, policy, reference, rl)
        grads = jax.grad(lambda p: loss(p, batch, None)[0].value)(policy)
        updates, opt_state = optimizer.update(grads, opt_state, policy)
        return optax.apply_updates(policy, updates), opt_state

    def init(num_seeds: int):
        policy = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num_seeds,) + x.shape), reference)
        return policy, jax.vmap(optimizer.init)(policy)

    return jax.jit(jax.vmap(iterate)), init


def time_iterations(horizon: int, prompts: int, group: int, seeds: int, repeats: int) -> dict:
    iterate, init = rl_iteration_program(horizon, prompts, group)
    state = {"carry": init(seeds), "step": 0}

    def run():
        keys = jax.random.split(jax.random.key(state["step"]), seeds)
        state["step"] += 1
        state["carry"] = iterate(state["carry"], keys)
        return state["carry"]

    return measure(run, repeats=repeats, warmup=1, block=jax.block_until_ready).summary(1.0, "iterations/s")


def fitted_exponent(work, seconds) -> float:
    """b in seconds ~ work^b (least squares on logs)."""
    slope, _ = np.polyfit(np.log(np.asarray(work, float)), np.log(np.asarray(seconds, float)), 1)
    return float(slope)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128], help="responses per iteration")
    parser.add_argument("--horizons", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "rl_scaling.json"))
    args = parser.parse_args(argv)

    base = dict(horizon=8, prompts=16 // args.group, group=args.group)
    one = time_iterations(**base, seeds=1, repeats=args.repeats)
    many = time_iterations(**base, seeds=args.seeds, repeats=args.repeats)
    seeds = {"one_seed": one, "many_seeds": many, "num_seeds": args.seeds, "ratio": many["median_s"] / one["median_s"]}
    print(f"{args.seeds} seeds vmapped: {seeds['ratio']:.2f}x the time of 1 seed", flush=True)

    by_batch = [time_iterations(8, max(1, b // args.group), args.group, 1, args.repeats) | {"batch": b} for b in args.batch_sizes]
    by_horizon = [time_iterations(h, 16 // args.group, args.group, 1, args.repeats) | {"horizon": h} for h in args.horizons]
    scaling = {
        "by_batch": by_batch, "by_horizon": by_horizon,
        "batch_exponent": fitted_exponent(args.batch_sizes, [r["median_s"] for r in by_batch]) if len(by_batch) > 1 else None,
        "horizon_exponent": fitted_exponent(args.horizons, [r["median_s"] for r in by_horizon]) if len(by_horizon) > 1 else None,
    }
    print(f"time ~ batch^{scaling['batch_exponent']}, ~ horizon^{scaling['horizon_exponent']}", flush=True)
    results = {"benchmark": "rl_scaling", "seeds": seeds, "scaling": scaling}
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
