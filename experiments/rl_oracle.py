"""``jirl run rl_oracle``: policy-gradient algorithms against the exact KL-regularised optimum.

Each algorithm trains a small policy on the task's true reward with the KL to the (frozen,
initial) reference in the reward at the oracle's ``beta``, so its target is exactly
pi*(y|x) ∝ pi_ref(y|x) exp(R(x,y)/beta). The oracle reports, over training,

    gap_fraction = (J(pi*) - J(pi)) / (J(pi*) - J(pi_ref)),   J = E[R] - beta KL(pi || pi_ref),

and KL(pi || pi*). Algorithms: REINFORCE with a batch-mean baseline, RLOO (both plain policy
gradient), GRPO as Shao et al. (2024) run it (group-normalised advantages, the k3 KL in the loss
at their beta = 0.04, token mean per response: its target is *not* pi*_beta, and the study
measures how far it lands), ``grpo_kl_in_reward`` (GRPO's advantage with the KL in the reward at
beta, a variant) and PPO (GAE with a separate critic, clipped policy and value losses, 2 epochs
x 2 minibatches); ``--set algorithms=remax,dr_grpo_kl_in_reward,reinforce_pp,gspo_kl_in_reward``
runs the other recipes (``ALGORITHMS`` says which paper each follows and how it deviates).

    jirl run rl_oracle --set task.name=sort --set iterations=300
"""

from __future__ import annotations

from typing import Annotated

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from rich.table import Table

from jirl.config import ConfigError, at_least, each, finite, non_empty, positive, registered
from jirl.eval.setting import Setting
from jirl.experiment import RunDir, register_experiment
from jirl.mdp import oracle
from jirl.mdp.tasks import TaskConfig
from jirl.models.heads import ValueModel
from jirl.models.transformer import ModelSize
from jirl.rl.loop import RLConfig, make_rl_iteration
from jirl.train.step import init_train_state

# Each name is one paper's recipe with that paper's defaults; a combination no paper runs gets a
# name that says how it deviates. Unless a recipe sets its own ``kl_coef``, the KL to the
# reference enters the reward (k1, per token) at the oracle's beta, as in InstructGPT-style RLHF,
# so the recipe's target is exactly pi*_beta.
ALGORITHMS = {
    # Williams (1992) with a batch-mean baseline.
    "reinforce_baseline": dict(advantage="reinforce_baseline", policy_loss="pg"),
    # Ahmadian et al. (2024): leave-one-out baseline, sequence-level, KL in the reward.
    "rloo": dict(advantage="rloo", policy_loss="pg"),
    # Shao et al. (2024, DeepSeekMath, eq. 3 and sec. 4.2): group-normalised advantage, clipped
    # ratio (eps 0.2), the k3 KL estimator *in the loss* at their beta = 0.04, token mean within
    # each response then mean over responses, one policy update per batch of samples.
    "grpo": dict(advantage="grpo", policy_loss="ppo", kl_in="loss", kl_estimator="k3", kl_coef=0.04,
                 aggregation="sequence_mean", epochs=1, minibatches=1),
    # GRPO's advantage with the KL in the reward at the oracle's beta (k1), summed over tokens,
    # 2 epochs x 2 minibatches: not a published recipe (jirl's `grpo` before 2026-12).
    "grpo_kl_in_reward": dict(advantage="grpo", policy_loss="ppo", epochs=2, minibatches=2),
    # Schulman et al. (2017) with a GAE critic (lambda 0.95) and the KL in the reward (Ziegler et
    # al. 2019; Ouyang et al. 2022).
    "ppo": dict(advantage="gae", policy_loss="ppo", epochs=2, minibatches=2, lam=0.95),
    # Also available (not in the default list):
    # Li et al. (2024): the greedy response's return as the baseline, KL in the reward.
    "remax": dict(advantage="remax", policy_loss="pg"),
    # Dr. GRPO's advantage (Liu et al. 2025: no std normalisation, token sum) with the KL in the
    # reward at the oracle's beta; Liu et al. train without a KL term.
    "dr_grpo_kl_in_reward": dict(advantage="dr_grpo", policy_loss="ppo", epochs=2, minibatches=2),
    # Hu (2025): per-token KL in the reward, batch-normalised returns-to-go, clipped ratio.
    "reinforce_pp": dict(advantage="reinforce_pp", policy_loss="ppo", epochs=2, minibatches=2),
    # GSPO's sequence-level ratio (Zheng et al. 2025) on GRPO's advantage with the KL in the
    # reward at the oracle's beta; Zheng et al. train without a KL term.
    "gspo_kl_in_reward": dict(advantage="grpo", policy_loss="gspo", epochs=2, minibatches=2),
}
DEFAULT_ALGORITHMS = ("reinforce_baseline", "rloo", "grpo", "grpo_kl_in_reward", "ppo")
CRITIC_ALGORITHMS = ("ppo",)


@dataclasses.dataclass
class RLOracleConfig:
    seed: int = 0
    task: TaskConfig = dataclasses.field(default_factory=lambda: TaskConfig("bigram", ("num_chars=3", "horizon=4")))
    algorithms: Annotated[tuple[str, ...], non_empty, each(registered(ALGORITHMS))] = DEFAULT_ALGORITHMS
    beta: Annotated[float, finite, positive] = 0.5
    iterations: Annotated[int, at_least(1)] = 200
    eval_every: Annotated[int, at_least(1)] = 25
    learning_rate: Annotated[float, finite, positive] = 3e-3  # Adam, cosine-decayed to 10% over the run (settles the SGD noise)
    prompts_per_iteration: Annotated[int, at_least(1)] = 16
    group_size: Annotated[int, at_least(2)] = 8
    model: ModelSize = dataclasses.field(default_factory=lambda: ModelSize(family="gpt2", d_model=32))


def train_algorithm(name: str, config, setting: Setting, optimum, run: RunDir) -> list[dict]:
    task, graphdef, ref_params = setting.task, setting.graphdef, setting.reference
    recipe = {"kl_coef": config.beta} | ALGORITHMS[name]  # a recipe's own KL weight wins
    rl = RLConfig(prompts_per_iteration=config.prompts_per_iteration, group_size=config.group_size, **recipe)
    updates = config.iterations * rl.epochs * rl.minibatches
    optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, updates, alpha=0.1))
    critic_graphdef, params = None, ref_params
    if name in CRITIC_ALGORITHMS:
        model_config = config.model.build(task.vocab_size, task.prompt_width + task.horizon)
        critic_graphdef, critic_params = nnx.split(ValueModel(model_config, rngs=nnx.Rngs(config.seed + 1)))
        params = nnx.State({"policy": ref_params, "critic": critic_params})
    state = init_train_state(params, optimizer, jax.random.key(config.seed))
    rl_iteration = make_rl_iteration(task, graphdef, optimizer, rl, critic_graphdef=critic_graphdef)
    j_star = setting.evaluate_tree(optimum, config.beta)["objective"]
    j_ref = setting.evaluate_tree(setting.ref_tree, config.beta)["objective"]
    curve = []
    for iteration in range(1, config.iterations + 1):
        key = jax.random.fold_in(jax.random.key(config.seed), iteration)
        state, metrics = rl_iteration(state, ref_params, key)
        if iteration % config.eval_every == 0 or iteration == config.iterations:
            policy_params = state.full_params["policy"] if critic_graphdef is not None else state.full_params
            exact = setting.evaluate(policy_params, config.beta, optimum)
            point = {
                "iteration": iteration,
                "gap_fraction": (j_star - exact["objective"]) / (j_star - j_ref),
                "kl_to_optimal": exact["kl_to_optimal"],
                "expected_reward": exact["expected_reward"],
                "kl_to_reference": exact["kl_to_reference"],
                "sampled_reward": metrics["reward"],
            }
            curve.append(point)
            run.log(iteration, algorithm=name, **{k: v for k, v in point.items() if k != "iteration"})
    return curve


@register_experiment("rl_oracle", config=RLOracleConfig, description="RL algorithms vs the exact KL-regularised optimum")
def run(config: RLOracleConfig, run: RunDir) -> dict:
    unknown = sorted(set(config.algorithms) - set(ALGORITHMS))
    if unknown:
        raise ConfigError(f"unknown algorithm(s) {unknown}; choose from {sorted(ALGORITHMS)}")
    setting = Setting.build(config.task, config.model, config.seed)
    optimum = setting.optimum(config.beta)
    results = {"task": setting.task.name, "beta": config.beta, "seed": config.seed, "algorithms": {}}
    for name in config.algorithms:
        curve = train_algorithm(name, config, setting, optimum, run)
        final = curve[-1]
        results["algorithms"][name] = {
            "recipe": {"kl_coef": config.beta} | ALGORITHMS[name],
            "gap_fraction": final["gap_fraction"],
            "kl_to_optimal": final["kl_to_optimal"],
            "expected_reward": final["expected_reward"],
            "kl_to_reference": final["kl_to_reference"],
            "steps": config.iterations,
            "curve": curve,
        }
    results["optimum"] = setting.evaluate_tree(optimum, config.beta)
    print_table(run, results)
    plot(run.path_for("rl_oracle.png"), results, setting.spec, setting.ref_tree, setting.rewards)
    return results


def print_table(run: RunDir, results: dict) -> None:
    table = Table(title=f"RL vs the exact optimum on {results['task']!r} (beta = {results['beta']:g})")
    for column in ("algorithm", "iterations", "gap fraction", "KL(π ‖ π*)", "E[R]", "KL(π ‖ π_ref)"):
        table.add_column(column, justify="right")
    for name, r in results["algorithms"].items():
        table.add_row(name, str(r["steps"]), f"{r['gap_fraction']:.4f}", f"{r['kl_to_optimal']:.4f}",
                      f"{r['expected_reward']:.4f}", f"{r['kl_to_reference']:.4f}")
    optimum = results["optimum"]
    table.add_row("π* (exact)", "", "0", "0", f"{optimum['expected_reward']:.4f}", f"{optimum['kl_to_reference']:.4f}")
    run.console.print(table)


def plot(path, results: dict, spec, ref_tree, rewards) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results["algorithms"].items():
        its = [p["iteration"] for p in r["curve"]]
        left.semilogy(its, [max(p["gap_fraction"], 1e-5) for p in r["curve"]], "o-", label=name)
        right.plot([p["kl_to_reference"] for p in r["curve"]], [p["expected_reward"] for p in r["curve"]], "o-", label=name)
    betas = jnp.logspace(-1.5, 1.5, 15)
    frontier = [oracle.evaluate(spec, oracle.solve(spec, ref_tree, rewards, float(b)).log_probs, ref_tree, rewards, float(b)) for b in betas]
    right.plot([float(f["kl_to_reference"]) for f in frontier], [float(f["expected_reward"]) for f in frontier], "k--", label="exact frontier")
    opt = results["optimum"]
    right.plot([opt["kl_to_reference"]], [opt["expected_reward"]], "k*", markersize=12, label=f"π* (β={results['beta']:g})")
    left.set(xlabel="iteration", ylabel="gap fraction (exact)", title="(J* - J) / (J* - J_ref)")
    right.set(xlabel="KL(π ‖ π_ref)", ylabel="expected gold reward", title="reward / KL over training")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
