"""``jirl run oracle``: the exact reward/KL frontier of a task.

For each beta the exact oracle computes pi*(y|x) ∝ pi_ref(y|x) exp(R(x,y)/beta) and its
expected gold reward E[R] and KL(pi* || pi_ref). Sweeping beta traces the best achievable
reward at every KL budget: the curve every RL/IRL method in jirl is measured against.
It also draws demonstrations from pi* at ``demo_beta`` (the expert later issues imitate) and
checks their Monte-Carlo mean reward against the exact value.

    jirl run oracle --set task.name=sort --set betas=0.05,0.5,5
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import jax
import numpy as np
from flax import nnx
from rich.table import Table

from jirl.config import each, finite, non_empty, non_negative, positive
from jirl.experiment import RunDir, register_experiment
from jirl.mdp import oracle
from jirl.mdp.tasks import Task, TaskConfig, build_task
from jirl.models.scoring import logits_fn
from jirl.models.transformer import Transformer, llama_tiny

DEFAULT_BETAS = tuple(float(b) for b in np.round(np.logspace(-2, 1, 13), 4))


@dataclasses.dataclass
class OracleConfig:
    seed: int = 0
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    reference: Literal["model", "uniform"] = "model"  # a random tiny Llama, or uniform tokens
    betas: Annotated[tuple[float, ...], non_empty, each(positive), each(finite)] = DEFAULT_BETAS
    demo_beta: Annotated[float, finite, positive] = 0.1
    num_demos: Annotated[int, non_negative] = 2000
    show_demos: Annotated[int, non_negative] = 5


def reference_log_probs(task: Task, spec: oracle.TreeSpec, kind: str, seed: int):
    if kind == "uniform":
        return oracle.uniform_log_probs(spec)
    config = llama_tiny(task.vocab_size, max_len=max(16, task.prompt_width + task.horizon))
    graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))
    return oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, params))


def frontier(spec, ref, rewards, betas):
    """Exact (beta, E[R], KL, J) of pi*_beta for every beta."""
    rows = []
    for beta in betas:
        solution = oracle.solve(spec, ref, rewards, beta)
        metrics = oracle.evaluate(spec, solution.log_probs, ref, rewards, beta)
        rows.append({"beta": beta, **{k: float(v) for k, v in metrics.items()}})
    return rows


def plot_frontier(path, rows, reference_reward, task_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kl = [r["kl_to_reference"] for r in rows]
    reward = [r["expected_reward"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(kl, reward, "o-")
    for r in rows[:: max(1, len(rows) // 4)]:
        left.annotate(
            f"β={r['beta']:.2g}", (r["kl_to_reference"], r["expected_reward"]),
            xytext=(6, -12), textcoords="offset points", fontsize=8,
        )
    left.axhline(reference_reward, color="gray", ls="--", label="reference policy")
    left.set(xlabel="KL(π* ‖ π_ref) [nats]", ylabel="expected gold reward", title=f"{task_name}: exact frontier")
    left.legend()
    betas = [r["beta"] for r in rows]
    right.semilogx(betas, reward, "o-", label="E[R]")
    right.semilogx(betas, kl, "s-", label="KL")
    right.set(xlabel="β", title="reward and KL of π*_β")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@register_experiment("oracle", config=OracleConfig, description="Exact reward/KL frontier of a task from the oracle")
def run(config: OracleConfig, run: RunDir) -> dict:
    task = build_task(config.task)
    spec = task.tree_spec()
    ref = reference_log_probs(task, spec, config.reference, config.seed)
    rewards = oracle.rewards_from_step_fn(spec, task.step_reward)

    rows = frontier(spec, ref, rewards, config.betas)
    for i, row in enumerate(rows):
        run.log(i, **row)
    reference_reward = float(oracle.expected_reward(spec, ref, rewards))
    greedy_limit = frontier(spec, ref, rewards, [1e-4])[0]["expected_reward"]

    # Expert demonstrations sampled from pi* at demo_beta; their mean reward is a Monte-Carlo
    # estimate of the exact E[R].
    expert = oracle.solve(spec, ref, rewards, config.demo_beta)
    demos = oracle.sample(jax.random.key(config.seed), spec, expert.log_probs, config.num_demos)
    demo_returns = np.asarray(oracle.step_values(spec, rewards, demos)).sum(axis=1)
    exact_demo_reward = float(oracle.expected_reward(spec, expert.log_probs, rewards))

    plot_frontier(run.path_for("frontier.png"), rows, reference_reward, task.name)
    print_summary(run, task, rows, reference_reward, greedy_limit, demos, demo_returns, config.show_demos)
    return {
        "task": task.name,
        "reference": config.reference,
        "num_prompts": int(spec.num_prompts),
        "num_sequences_per_prompt": int(spec.total_sequences),
        "reference_reward": reference_reward,
        "max_reward": greedy_limit,
        "frontier": rows,
        "demo_beta": config.demo_beta,
        "demo_mean_reward": float(demo_returns.mean()),
        "demo_exact_reward": exact_demo_reward,
    }


def print_summary(run, task, rows, reference_reward, max_reward, demos, demo_returns, show):
    table = Table(title=f"exact oracle on {task.name!r}: π*_β ∝ π_ref exp(R/β)")
    for column in ("β", "E[R]", "KL(π*‖π_ref)", "J = E[R] - β KL"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['beta']:g}", f"{r['expected_reward']:.4f}", f"{r['kl_to_reference']:.4f}", f"{r['objective']:.4f}")
    run.console.print(table)
    run.console.print(f"reference policy E[R] = {reference_reward:.4f}; reward-maximising limit (β→0) = {max_reward:.4f}")
    tokens, prompt_lens, response_lens = (np.asarray(x) for x in (demos.tokens, demos.prompt_lens, demos.response_lens))
    for i in range(min(show, len(tokens))):
        prompt = task.decode(tokens[i], prompt_lens[i])
        response = task.decode(tokens[i, prompt_lens[i]:], response_lens[i])
        run.console.print(f"  demo {i}: {prompt!r} -> {response!r}  (reward {demo_returns[i]:.3f})", soft_wrap=True)
