"""``jirl run dpo_oracle``: direct preference losses vs the exact KL-regularised optimum.

Preference pairs of a small task are labelled by a Bradley-Terry annotator of the task's gold
reward, P(a > b) = sigma(R(a) - R(b)); under that model DPO at ``beta`` is minimised by
pi*(y|x) ∝ pi_ref(y|x) exp(R(x,y)/beta), which the oracle computes exactly. Three studies:

1. **offline**: each loss (DPO, cDPO, robust DPO, IPO, hinge, SLiC, SimPO, ORPO, KTO) trains a
   small policy from the initial model (also the reference) on ``num_pairs`` pairs read from a
   TFDS dataset, through ``fit`` (checkpoints, ``--resume``); the oracle reports KL(pi || pi*),
   the exact gold reward and KL(pi || pi_ref) over training;
2. **data size**: DPO's final KL(pi || pi*) for each of ``pair_counts`` (finite-sample error);
3. **online**: iterative DPO, sampling pairs from the current policy and labelling them with the
   gold annotator, for ``online_iterations`` iterations (checkpointed too).

    jirl run dpo_oracle --set losses=dpo,ipo --set train.steps=500
"""

from __future__ import annotations

from typing import Annotated

import dataclasses
import json

import jax
import numpy as np
from rich.table import Table

from jirl.config import ConfigError, at_least, config_to_dict, each, finite, non_negative, positive, registered
from jirl.data.builders import data_source, prepare
from jirl.data.loader import batch_iterator
from jirl.data.task_preferences import TaskPreferences
from jirl.eval.setting import Setting
from jirl.experiment import RunDir, register_experiment
from jirl.mdp.tasks import TaskConfig
from jirl.models.transformer import ModelSize
from jirl.preference.losses import PREFERENCE_LOSSES
from jirl.preference.objective import POLICY_ONLY, check_pairs, with_reference
from jirl.preference.online import OnlineConfig, online_iteration
from jirl.train.checkpoint import CheckpointManager
from jirl.train.loop import CHECKPOINT_DIR, TrainConfig, fit, make_optimizer
from jirl.train.losses import OBJECTIVES
from jirl.train.step import init_train_state, make_update_step

LOSS_OPTIONS = {"slic": {"sft_weight": 0.1}}  # SLiC-HF trains the calibration loss with an SFT term


@dataclasses.dataclass
class DPOOracleConfig:
    seed: int = 0
    task: TaskConfig = dataclasses.field(default_factory=lambda: TaskConfig("bigram", ("num_chars=3", "horizon=3")))
    beta: Annotated[float, finite, positive] = 0.5  # DPO's beta, and the oracle's
    losses: Annotated[tuple[str, ...], each(registered(PREFERENCE_LOSSES))] = ("dpo", "cdpo", "robust_dpo", "ipo", "hinge", "slic", "simpo", "orpo", "kto")
    num_pairs: Annotated[int, at_least(1)] = 4096
    pair_counts: Annotated[tuple[int, ...], each(at_least(1))] = (256, 1024, 4096)  # the data-size study (DPO); () skips it
    online_iterations: Annotated[int, non_negative] = 100  # 0 skips the online study
    online: OnlineConfig = dataclasses.field(default_factory=OnlineConfig)
    model: ModelSize = dataclasses.field(default_factory=lambda: ModelSize(family="gpt2", d_model=32))
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(steps=300, batch_size=64, learning_rate=3e-3, eval_every=50)
    )
    data_dir: str = ""  # where the pairs dataset is written (default: <run>/data)

    def validate(self) -> None:
        if self.pair_counts and max(self.pair_counts) > self.num_pairs:
            raise ConfigError(f"pair_counts {list(self.pair_counts)} must not exceed num_pairs={self.num_pairs}")


def summary(exact: dict) -> dict:
    """The three numbers reported per policy, from ``Setting.evaluate``."""
    return {"kl_to_optimal": exact["kl_to_optimal"], "gold_reward": exact["expected_reward"], "kl_to_reference": exact["kl_to_reference"]}


def objective(graphdef, loss: str, beta: float):
    return OBJECTIVES.get(loss)(graphdef, beta=beta, **LOSS_OPTIONS.get(loss, {}))


def train_offline(run: RunDir, name: str, loss: str, split: str, builder, graphdef, reference, evaluate, config) -> dict:
    """One loss on one slice of the pairs through ``fit``, in its own sub-folder (own metrics
    and checkpoints, so ``--resume`` continues every unfinished loss)."""
    sub = RunDir(run.path / "offline" / name, console=run.console)
    resume = run.resume and CheckpointManager(sub.path / CHECKPOINT_DIR).latest_step() is not None
    if not resume:  # a killed run may have left metrics of steps that were never checkpointed
        for stale in sub.path.glob("*.jsonl"):
            stale.unlink()
    optimizer = make_optimizer(config.train)
    state = init_train_state(with_reference(reference, reference), optimizer, jax.random.key(config.seed), trainable=POLICY_ONLY)
    step = make_update_step(objective(graphdef, loss, config.beta), optimizer, config.train.accumulation_steps)
    batches = batch_iterator(data_source(builder, split), config.train.batch_size, seed=config.seed)
    state = fit(
        sub, step, state, batches, config={**config_to_dict(config), "study": name}, train=config.train,
        resume=resume, evaluate=lambda s: evaluate(s.full_params["policy"]),
    )
    final = evaluate(state.full_params["policy"])
    rows = [json.loads(line) for line in (sub.path / "metrics.jsonl").read_text().splitlines()]
    final["curve"] = [
        {"step": r["step"], **{k[len("eval/"):]: v for k, v in r.items() if k.startswith("eval/")}}
        for r in rows if "eval/kl_to_optimal" in r
    ]
    return final


def train_online(run: RunDir, task, graphdef, reference, evaluate, config) -> dict:
    """Iterative DPO with the gold annotator, checkpointed every ``eval_every`` iterations."""
    optimizer = make_optimizer(dataclasses.replace(config.train, steps=config.online_iterations * config.online.updates_per_iteration))
    state = init_train_state(with_reference(reference, reference), optimizer, jax.random.key(config.seed), trainable=POLICY_ONLY)
    step = make_update_step(objective(graphdef, "dpo", config.beta), optimizer)
    curve, start = [{"iteration": 0, **evaluate(reference)}], 0
    with CheckpointManager(run.path / "online" / "checkpoints") as manager:
        if run.resume and manager.latest_step() is not None:
            state, metadata = manager.restore(jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
            start, curve = metadata["iteration"], metadata["curve"]
        for iteration in range(start + 1, config.online_iterations + 1):
            key = jax.random.fold_in(jax.random.key(config.seed + 1), iteration)
            state, metrics = online_iteration(key, task, graphdef, state, step, config.online)
            if iteration % config.train.eval_every == 0 or iteration == config.online_iterations:
                point = {"iteration": iteration, "sampled_reward": metrics["reward"], **evaluate(state.full_params["policy"])}
                curve.append(point)
                run.log(iteration, study="online", **{k: v for k, v in point.items() if k != "iteration"})
                manager.save(iteration, state, {"iteration": iteration, "curve": curve})
    return {**curve[-1], "iterations": config.online_iterations, "curve": curve}


@register_experiment("dpo_oracle", config=DPOOracleConfig, description="DPO-family losses vs the exact optimum", resumable=True)
def run(config: DPOOracleConfig, run: RunDir) -> dict:
    setting = Setting.build(config.task, config.model, config.seed)
    task, graphdef, reference = setting.task, setting.graphdef, setting.reference
    optimum = setting.optimum(config.beta)
    evaluate = lambda params: summary(setting.evaluate(params, config.beta, optimum))  # noqa: E731

    # Pairs from a near-uniform pool, labelled with P(a > b) = sigma(R(a) - R(b)).
    builder = prepare(
        TaskPreferences, config.data_dir or run.path / "data", task=config.task.name, task_args=config.task.args,
        num_train=config.num_pairs, num_test=0, beta_ann=1.0, seed=config.seed,
    )
    source = data_source(builder, "train")
    check_pairs({k: np.stack([source[i][k] for i in range(len(source))]) for k in ("chosen", "rejected", "prompt_len", "chosen_len", "rejected_len")})

    results = {"task": task.name, "beta": config.beta, "num_pairs": config.num_pairs, "steps": config.train.steps}
    results["optimum"] = summary(setting.evaluate_tree(optimum, config.beta, optimum))
    results["reference"] = evaluate(reference)
    results["losses"] = {
        loss: train_offline(run, loss, loss, "train", builder, graphdef, reference, evaluate, config) for loss in config.losses
    }
    results["data_curve"] = []
    for count in config.pair_counts:
        name = f"dpo_{count}_pairs"
        final = train_offline(run, name, "dpo", f"train[:{count}]", builder, graphdef, reference, evaluate, config)
        results["data_curve"].append({"num_pairs": count, **{k: v for k, v in final.items() if k != "curve"}})
    if config.online_iterations:
        results["online"] = train_online(run, task, graphdef, reference, evaluate, config)
    print_table(run, results)
    plot(run.path_for("dpo_oracle.png"), results)
    return results


def print_table(run: RunDir, results: dict) -> None:
    table = Table(title=f"preference losses vs the exact optimum on {results['task']!r} (beta = {results['beta']:g}, "
                        f"{results['num_pairs']} pairs, {results['steps']} steps)")
    for column in ("policy", "KL(π ‖ π*)", "gold reward", "KL(π ‖ π_ref)"):
        table.add_column(column, justify="right")
    rows = [("π* (exact)", results["optimum"]), ("reference", results["reference"])]
    rows += list(results["losses"].items())
    rows += [(f"dpo, {p['num_pairs']} pairs", p) for p in results["data_curve"]]
    if "online" in results:
        rows.append((f"online dpo, {results['online']['iterations']} it.", results["online"]))
    for name, r in rows:
        table.add_row(name, f"{r['kl_to_optimal']:.4f}", f"{r['gold_reward']:.4f}", f"{r['kl_to_reference']:.4f}")
    run.console.print(table)


def plot(path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, r in results["losses"].items():
        steps = [p["step"] for p in r["curve"]]
        axes[0].semilogy(steps, [max(p["kl_to_optimal"], 1e-5) for p in r["curve"]], "o-", label=name)
        axes[1].plot([p["kl_to_reference"] for p in r["curve"]], [p["gold_reward"] for p in r["curve"]], ".-", label=name)
    opt = results["optimum"]
    axes[1].plot([opt["kl_to_reference"]], [opt["gold_reward"]], "k*", markersize=14, label="π*")
    if "online" in results:
        curve = results["online"]["curve"]
        axes[1].plot([p["kl_to_reference"] for p in curve], [p["gold_reward"] for p in curve], "k--", label="online dpo")
    if results["data_curve"]:
        counts = [p["num_pairs"] for p in results["data_curve"]]
        axes[2].loglog(counts, [p["kl_to_optimal"] for p in results["data_curve"]], "o-")
    axes[0].set(xlabel="step", ylabel="KL(π ‖ π*) [nats, exact]", title="offline losses over training")
    axes[1].set(xlabel="KL(π ‖ π_ref)", ylabel="gold reward (exact)", title="reward vs KL over training")
    axes[2].set(xlabel="preference pairs", ylabel="DPO's final KL(π ‖ π*)", title="finite data")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
