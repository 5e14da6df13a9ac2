"""Where the time of one RL iteration goes: sampling vs scoring vs the update.

The GRPO iteration of ``training.py`` (tiny Llama, ``--batch`` responses of ``--seq / 2`` new
tokens after ``--seq / 2``-token prompts) split into its three jitted phases, each timed on its
own (median of ``--repeats`` after a compiling call):

- **sample**: ``jirl.mdp.sampler.generate`` (prefill + one decode step per new token);
- **score**: the reference model's log-probs of the sampled responses and the reward;
- **update**: one ``make_update_step`` call (policy forward, backward, AdamW).

``--trace DIR`` also records one whole iteration with ``jax.profiler.trace`` for TensorBoard's
profile plugin or Perfetto (``DIR/plugins/profile/<run>/*.xplane.pb``).

    python benchmarks/profile_rl.py                       # writes benchmarks/results/profile_rl.json
    python benchmarks/profile_rl.py --batch 4 --seq 32 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure, write_results  # noqa: E402
from training import GRPO_BETA, GROUP, LEARNING_RATE, RandomPrompts, jirl_config, jirl_params, low_id_reward  # noqa: E402


def main(argv=None) -> dict:
    from jirl.mdp.sampler import SamplingConfig, generate
    from jirl.models.scoring import response_log_probs
    from jirl.rl.loop import RLConfig, collect, rl_loss
    from jirl.train.step import init_train_state, make_update_step

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trace", default=None, help="write a jax.profiler trace of one iteration here")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "profile_rl.json"))
    args = parser.parse_args(argv)

    prompt, horizon = args.seq // 2, args.seq - args.seq // 2
    graphdef, params = jirl_params(jirl_config(args.seq))
    prompts = RandomPrompts(64, prompt, horizon)
    rl = RLConfig(advantage="grpo", policy_loss="ppo", aggregation="token_mean", group_size=GROUP,
                  prompts_per_iteration=args.batch // GROUP, kl_coef=GRPO_BETA, kl_in="loss", kl_estimator="k3")
    optimizer = optax.adamw(LEARNING_RATE)
    state = init_train_state(params, optimizer, jax.random.key(0))
    step_fn = make_update_step(rl_loss(graphdef, rl, horizon), optimizer, donate=False)
    sampling = SamplingConfig(max_new_tokens=horizon, eos_id=prompts.eos_id)
    tokens, lens = prompts.sample_prompts(jax.random.key(0), args.batch)

    sample = jax.jit(lambda p, key: generate(graphdef, p, tokens, lens, key, sampling))
    out = sample(params, jax.random.key(1))

    @jax.jit
    def score(ref_params, out):
        rewards = low_id_reward(out.tokens, out.prompt_lens, out.response_lens, horizon)
        return rewards, response_log_probs(graphdef, ref_params, out.tokens, out.prompt_lens, horizon)

    reward_fn = lambda t, p, r: low_id_reward(t, p, r, horizon)  # noqa: E731
    batch, _ = jax.jit(lambda key: collect(key, prompts, graphdef, params, params, rl, reward_fn))(jax.random.key(2))

    phases = {
        "sample": measure(lambda: sample(params, jax.random.key(1)), args.repeats, block=jax.block_until_ready),
        "score": measure(lambda: score(params, out), args.repeats, block=jax.block_until_ready),
        "update": measure(lambda: step_fn(state, batch)[1]["loss"], args.repeats, block=jax.block_until_ready),
    }
    total = sum(t.median for t in phases.values())
    rows = {name: {**t.summary(), "fraction": t.median / total} for name, t in phases.items()}
    for name, row in rows.items():
        print(f"{name:>6}: {row['median_s'] * 1e3:8.1f} ms  ({row['fraction']:.0%})  first call {row['first_call_s']:.1f} s")

    if args.trace:
        with jax.profiler.trace(args.trace):
            jax.block_until_ready(step_fn(state, collect(jax.random.key(3), prompts, graphdef, params, params, rl, reward_fn)[0]))
        print(f"trace written under {args.trace} (open with TensorBoard's profile plugin or ui.perfetto.dev)")

    results = {"benchmark": "profile_rl", "batch": args.batch, "seq": args.seq, "phases": rows}
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
