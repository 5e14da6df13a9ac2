"""Tutorial: a new task with a gold reward, solved exactly and learned with RL.

The task is ``echo`` (``examples/plugins/echo_task.py``): repeat the prompt letter. This script

1. imports the plugin and checks the reward on hand-written responses;
2. solves the task exactly with the oracle and checks the optimum against what the reward
   says it must be;
3. trains a policy on it with ``jirl --plugin ... run rl_oracle --set task.name=echo`` and
   asserts that RL gets close to the exact optimum.

Walk-through: docs/tutorials/new_task.md.

    python examples/new_task.py --out runs/new_task
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import jax
import numpy as np

from jirl import cli
from jirl.mdp import oracle
from jirl.mdp.env import sequence_rewards
from jirl.mdp.tasks import TASKS, make_task

PLUGIN = Path(__file__).resolve().parent / "plugins" / "echo_task.py"
TASK_ARGS = {"num_chars": 3, "horizon": 3}
BETA = 0.5  # rl_oracle's default KL coefficient


def buffers(task, pairs: list[tuple[str, str]]):
    """Left-aligned (prompt, response) buffers; ``"$"`` in a response stands for EOS."""
    tokens = np.zeros((len(pairs), task.prompt_width + task.horizon), np.int32)
    prompt_lens, response_lens = [], []
    for row, (prompt, response) in enumerate(pairs):
        ids = task.tokenizer.encode(prompt) + [task.eos_id if ch == "$" else task.tokenizer.encode(ch)[0] for ch in response]
        tokens[row, : len(ids)] = ids
        prompt_lens.append(len(prompt))
        response_lens.append(len(response))
    return tokens, np.array(prompt_lens), np.array(response_lens)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="run folder (default: a temporary folder)")
    parser.add_argument("--iterations", type=int, default=60)
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="jirl-new-task-"))

    # Step 1: register the task (what `--plugin` does) and test its reward by hand.
    cli.load_plugin(str(PLUGIN))
    assert "echo" in TASKS
    task = make_task("echo", **TASK_ARGS)
    cases = {("a", "aaa"): 3.0, ("b", "bb$"): 2.0, ("a", "ab$"): 0.0, ("c", "$"): 0.0, ("c", "abc"): -1.0}
    tokens, prompt_lens, response_lens = buffers(task, list(cases))
    rewards = np.asarray(sequence_rewards(task, tokens, prompt_lens, response_lens))  # [batch, horizon]
    assert np.allclose(rewards.sum(axis=1), list(cases.values())), rewards
    assert np.all(rewards[np.arange(len(cases)), response_lens - 1] == rewards.sum(axis=1))  # sparse: all at the end

    # Step 2: solve it exactly, from a uniform reference policy.
    spec = task.tree_spec()
    reward_tree = oracle.rewards_from_step_fn(spec, task.step_reward)
    uniform = oracle.uniform_log_probs(spec)
    exact = {}
    for beta in (0.05, BETA, 5.0):
        optimum = oracle.solve(spec, uniform, reward_tree, beta)
        exact[beta] = {k: float(v) for k, v in oracle.evaluate(spec, optimum.log_probs, uniform, reward_tree, beta).items()}
    reference = {k: float(v) for k, v in oracle.evaluate(spec, uniform, uniform, reward_tree, BETA).items()}
    print("exact E[R] of pi*_beta:", {beta: round(e["expected_reward"], 3) for beta, e in exact.items()},
          f"reference: {reference['expected_reward']:.3f}")
    assert exact[0.05]["expected_reward"] > task.horizon - 0.01  # near beta = 0: always "xxx", R = horizon
    assert exact[0.05]["expected_reward"] > exact[BETA]["expected_reward"] > exact[5.0]["expected_reward"] > reference["expected_reward"]
    samples = oracle.sample(jax.random.key(0), spec, oracle.solve(spec, uniform, reward_tree, 0.05).log_probs, 4)
    print("samples of pi*_0.05:", [task.decode(row, p + n) for row, p, n in zip(samples.tokens, samples.prompt_lens, samples.response_lens)])

    # Step 3: train a policy on it through the command line; rl_oracle builds the task by name.
    overrides = [
        "task.name=echo", "task.args=" + ",".join(f"{k}={v}" for k, v in TASK_ARGS.items()),
        "algorithms=rloo", f"iterations={args.iterations}", f"eval_every={args.iterations}", f"beta={BETA}",
    ]
    code = cli.main(["--plugin", str(PLUGIN), "run", "rl_oracle", "--out", str(out), "--set", *overrides])
    assert code == 0, f"jirl run failed with exit code {code}"
    results = json.loads((out / "results.json").read_text())
    rloo = results["algorithms"]["rloo"]
    final = rloo["curve"][-1]
    report = {"gap_fraction": rloo["gap_fraction"], "kl_to_optimal": rloo["kl_to_optimal"],
              "expected_reward": final["expected_reward"], "optimum_reward": results["optimum"]["expected_reward"]}
    print(json.dumps(report, indent=2))
    # rl_oracle's reference is its small randomly initialised transformer (near uniform), so
    # gap_fraction = (J(pi*) - J(pi)) / (J(pi*) - J(pi_ref)) measures how much of the way RL went.
    assert rloo["gap_fraction"] < 0.2, report
    assert final["expected_reward"] > 0.8 * results["optimum"]["expected_reward"], report
    print(f"OK: RLOO closed {1 - rloo['gap_fraction']:.0%} of the gap to the exact optimum")
    return report


if __name__ == "__main__":
    main()
