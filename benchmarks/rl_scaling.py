"""The RL loop's cost: many seeds in one vmapped program, and step time vs batch and length.

1. **Seeds**: one RLOO iteration (``jirl.rl.loop.make_rl_update``: sample, score, advantages,
   one Adam update) of a small GPT-2-family policy on the ``bigram`` task, ``jax.vmap``-ed over
   S seeds in one jitted program. Compared with one seed at S times the batch (the same rows
   per call): target, S = 8 vmapped seeds cost at most 1.1x one seed at 8x the batch. One seed
   at the small batch is timed too.
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
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure, write_results  # noqa: E402


def rl_iteration_program(horizon: int, prompts: int, group: int, d_model: int = 64):
    """``(iterate, init)``: the jitted, seed-vmapped library update ``iterate(states, keys) ->
    (states, metrics)`` of one RLOO iteration and ``init(num_seeds)`` giving its starting states."""
    from jirl.mdp.tasks import make_task
    from jirl.models.transformer import ModelSize, Transformer
    from jirl.rl.loop import RLConfig, make_rl_update
    from jirl.train.step import init_train_state

    task = make_task("bigram", num_chars=4, horizon=horizon)
    model = Transformer(ModelSize(family="gpt2", d_model=d_model).build(task.vocab_size, task.prompt_width + horizon), rngs=nnx.Rngs(0))
    graphdef, reference = nnx.split(model)
    rl = RLConfig(advantage="rloo", policy_loss="pg", prompts_per_iteration=prompts, group_size=group, kl_coef=0.1)
    optimizer = optax.adam(1e-3)
    update = make_rl_update(task, graphdef, optimizer, rl)

    def init(num_seeds: int):
        return jax.vmap(lambda k: init_train_state(reference, optimizer, k))(jax.random.split(jax.random.key(0), num_seeds))

    iterate = jax.jit(jax.vmap(lambda state, key: update(state, reference, key)), donate_argnums=0)
    return iterate, init


def time_iterations(horizon: int, prompts: int, group: int, seeds: int, repeats: int) -> dict:
    iterate, init = rl_iteration_program(horizon, prompts, group)
    state = {"states": init(seeds), "step": 0}

    def run():
        keys = jax.random.split(jax.random.key(state["step"]), seeds)
        state["step"] += 1
        state["states"], metrics = iterate(state["states"], keys)
        return metrics["reward"]

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

    prompts = 16 // args.group
    one = time_iterations(8, prompts, args.group, seeds=1, repeats=args.repeats)
    one_big = time_iterations(8, prompts * args.seeds, args.group, seeds=1, repeats=args.repeats)
    many = time_iterations(8, prompts, args.group, seeds=args.seeds, repeats=args.repeats)
    seeds = {
        "one_seed": one, "one_seed_same_rows": one_big, "many_seeds": many, "num_seeds": args.seeds, "rows_per_seed": prompts * args.group,
        "ratio": many["median_s"] / one["median_s"], "ratio_to_same_rows": many["median_s"] / one_big["median_s"], "target_ratio_to_same_rows": 1.1,
    }
    print(
        f"{args.seeds} seeds vmapped: {seeds['ratio']:.2f}x one seed, {seeds['ratio_to_same_rows']:.2f}x one seed at "
        f"{args.seeds}x the batch (target <= 1.1)", flush=True,
    )

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
