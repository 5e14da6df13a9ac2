"""``jirl run irl_recovery``: which IRL method recovers the expert's reward, on several tasks.

For each task an expert pi_E = pi*_beta (over a uniform reference) writes demonstrations; a small
policy is trained on them by SFT; then every method learns a reward from the same
demonstrations (``jirl.irl.methods.IRL_METHODS``). Each learned reward is optimised exactly by
the oracle, at the method's own reference and beta (the setting whose optimum is the expert when
the reward is right), so the numbers measure the reward, not an RL run:

    gold_reward_fraction = (G(pi) - G(pi_init)) / (G(pi_E) - G(pi_init)),    G = exact gold reward,
    kl_to_expert         = KL(pi_E || pi),
    reward_correlation   = Pearson of learned and true per-token rewards after removing potential
                           shaping (``jirl.irl.recovery``), on tasks with per-token rewards.

SFT's row is the SFT policy itself, and GAIL's the policy it trained (at the game's equilibrium
its discriminator carries no reward to re-optimise).

    jirl run irl_recovery --set tasks=bigram --set methods=sft,afd_init_demo,maxent
"""

from __future__ import annotations

from typing import Annotated

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from rich.table import Table

from jirl.config import ConfigError, at_least, each, finite, non_empty, positive, registered
from jirl.experiment import RunDir, register_experiment
from jirl.irl.methods import IRL_METHODS, IRLContext, IRLSettings, check_demonstrations, train_on_demonstrations
from jirl.irl.recovery import shaping_removed_token_correlation
from jirl.mdp import oracle
from jirl.mdp.demonstrations import from_optimum
from jirl.mdp.tasks import TaskConfig, build_task
from jirl.models.scoring import logits_fn
from jirl.models.transformer import ModelSize, Transformer
from jirl.train.sft import sft_loss

TASKS = {
    "bigram": TaskConfig("bigram", ("num_chars=3", "horizon=3")),  # per-token rewards: correlation is reported
    "gold_rm": TaskConfig("gold_rm", ("num_chars=3", "horizon=3")),
    "sort": TaskConfig("sort", ("num_digits=2", "num_symbols=3")),
}
PER_TOKEN_TASKS = ("bigram",)
# method name -> (registered IRL method, settings builder from the experiment's config)
METHODS = {
    "afd_init_sft": ("afd", lambda c: dataclasses.replace(c.settings.afd, variant="init_sft")),
    "afd_init_demo": ("afd", lambda c: dataclasses.replace(c.settings.afd, variant="init_demo")),
    "afd_sft_demo": ("afd", lambda c: dataclasses.replace(c.settings.afd, variant="sft_demo")),
    "maxent": ("maxent", lambda c: c.settings.maxent),
    "spin": ("spin", lambda c: c.settings.spin),
    "iq_learn": ("iq_learn", lambda c: c.settings.iq_learn),
    "airl": ("airl", lambda c: c.settings.airl),
    "gail": ("gail", lambda c: c.settings.gail),
}


@dataclasses.dataclass
class IRLRecoveryConfig:
    seed: int = 0
    tasks: Annotated[tuple[str, ...], non_empty, each(registered(TASKS))] = tuple(TASKS)
    methods: Annotated[tuple[str, ...], non_empty, each(registered(METHODS, 'sft'))] = ("sft", *METHODS)
    expert_beta: Annotated[float, finite, positive] = 0.5
    num_demos: Annotated[int, at_least(1)] = 4096
    sft_steps: Annotated[int, at_least(1)] = 400
    sft_learning_rate: Annotated[float, finite, positive] = 3e-3
    model: ModelSize = dataclasses.field(default_factory=lambda: ModelSize(family="gpt2", d_model=32))
    settings: IRLSettings = dataclasses.field(default_factory=IRLSettings)  # per-method settings


def run_task(name: str, config: IRLRecoveryConfig, run: RunDir) -> dict:
    task = build_task(TASKS[name])
    spec = task.tree_spec()
    rewards = oracle.rewards_from_step_fn(spec, task.step_reward)
    expert = oracle.solve(spec, oracle.uniform_log_probs(spec), rewards, config.expert_beta).log_probs
    keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), len(name)), 4)
    demos = from_optimum(task, keys[0], config.num_demos, config.expert_beta)
    model_config = config.model.build(task.vocab_size, task.prompt_width + task.horizon)
    check_demonstrations(demos, task.vocab_size, model_config.max_len)
    graphdef, init = nnx.split(Transformer(model_config, rngs=nnx.Rngs(config.seed)))
    init = jax.tree_util.tree_map(jnp.copy, init)
    tree_of = lambda params: oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, params))  # noqa: E731
    init_tree = tree_of(init)
    gold = lambda tree: float(oracle.expected_reward(spec, tree, rewards))  # noqa: E731
    g_init, g_expert = gold(init_tree), gold(expert)

    def score(policy_tree, learned_tree=None) -> dict:
        result = {
            "gold_reward_fraction": (gold(policy_tree) - g_init) / (g_expert - g_init),
            "kl_to_expert": float(oracle.kl_divergence(spec, expert, policy_tree)),
        }
        if learned_tree is not None and name in PER_TOKEN_TASKS:
            result["reward_correlation"] = float(shaping_removed_token_correlation(spec, learned_tree, rewards, log_probs=expert))
        return result

    sft = train_on_demonstrations(keys[1], graphdef, init, demos, sft_loss(graphdef), config.sft_steps, 64, config.sft_learning_rate)
    results = {"sft": score(tree_of(sft))} if "sft" in config.methods else {}
    context = IRLContext(task, demos, graphdef, model_config, init, sft, keys[2], spec)
    for method in config.methods:
        if method == "sft":
            continue
        registered, settings = METHODS[method]
        learned = IRL_METHODS.get(registered)(context, settings(config))
        if learned.tree is None:  # GAIL: its result is the policy it trained
            results[method] = score(tree_of(learned.policy))
        else:  # the learned reward optimised exactly, at the method's reference and beta
            policy = oracle.solve(spec, tree_of(learned.reference), learned.tree, learned.beta).log_probs
            results[method] = score(policy, learned.tree)
        run.log(0, task=name, method=method, **results[method])
    return results


@register_experiment("irl_recovery", config=IRLRecoveryConfig, description="IRL methods: reward recovery on several tasks")
def run(config: IRLRecoveryConfig, run: RunDir) -> dict:
    for kind, chosen, known in (("task", config.tasks, TASKS), ("method", config.methods, ("sft", *METHODS))):
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            raise ConfigError(f"unknown {kind}(s) {unknown}; choose from {sorted(known)}")
    per_task = {name: run_task(name, config, run) for name in config.tasks}
    methods = {m: {t: per_task[t][m] for t in config.tasks} for m in config.methods}
    results = {"expert_beta": config.expert_beta, "num_demos": config.num_demos, "methods": methods}
    print_table(run, results, config.tasks)
    plot(run.path_for("irl_recovery.png"), results, config.tasks)
    return results


def print_table(run: RunDir, results: dict, tasks) -> None:
    table = Table(title="IRL methods: the exact optimum of each learned reward (gold fraction / KL(π_E ‖ π) / reward corr.)")
    table.add_column("method")
    for task in tasks:
        table.add_column(task, justify="right")
    for method, per_task in results["methods"].items():
        cells = []
        for task in tasks:
            r = per_task[task]
            cell = f"{r['gold_reward_fraction']:.3f} / {r['kl_to_expert']:.3f}"
            if "reward_correlation" in r:
                cell += f" / {r['reward_correlation']:.3f}"
            cells.append(cell)
        table.add_row(method, *cells)
    run.console.print(table)


def plot(path, results: dict, tasks) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(results["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(tasks)
    for i, task in enumerate(tasks):
        x = np.arange(len(methods)) + i * width
        axes[0].bar(x, [results["methods"][m][task]["gold_reward_fraction"] for m in methods], width, label=task)
        axes[1].bar(x, [results["methods"][m][task]["kl_to_expert"] for m in methods], width, label=task)
    for ax, label in zip(axes, ("gold reward fraction (1 = expert)", "KL(π_E ‖ π) [nats]")):
        ax.set_xticks(np.arange(len(methods)) + 0.4 - width / 2, methods, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.legend()
    axes[0].axhline(0.9, color="k", linestyle=":", linewidth=1)
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
