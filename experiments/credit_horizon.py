"""``jirl run credit_horizon``: dense credit assignment for a sparse reward, as generations get longer.

The task is ``bigram`` (a hidden table scores every token given the previous one), but the
policy is told only the sequence's total ``R = sum_t score[y_{t-1}, y_t]``, once, at the end;
the true per-token credit is known, so each scheme's credit can be checked against it. For
each generation length ``H`` in ``horizons``:

1. a reference policy is SFT-trained on random full-length letter strings (it writes ``H``
   tokens and rarely stops early, like a pretrained model asked for a long answer);
2. from ``aux_samples`` of its responses, labelled with ``R``: a reward model that predicts the
   return from every prefix (its prefix scores are the potentials Phi of shaping; ABC reads its
   attention) and a DPO policy on within-prompt pairs (RTO's token rewards);
3. for every credit scheme (``jirl.credit.CREDIT_SCHEMES``), ``seeds`` RL runs in one vmapped
   program: RLOO on per-step returns (``rloo_to_go``, so dense credit matters), ``iterations``
   updates. PRIME's implicit PRM and the return-decomposition model learn online from the
   same samples. ``true`` is the upper reference: the real per-token rewards.

Reported per scheme and horizon (mean and std over seeds): the gold return of the final policy,
its fraction of the way from the reference to the best achievable return (dynamic programming
over the table), the mean of that fraction over the training samples of the whole budget
(``gold_auc``, sample efficiency), and the Pearson correlation of the scheme's token credit with the true
per-token reward on reference samples. Compared with Chan et al. 2024 ("Dense reward for free
in RLHF"), who report terminal-reward RLHF degrading and becoming unstable as generations get
longer while ABC stays stable.

    jirl run credit_horizon --set horizons=8,32 --set seeds=3 --set iterations=40
"""

from __future__ import annotations

from typing import Annotated

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from jirl.config import ConfigError, at_least, each, finite, in_range, non_empty, non_negative, positive, probability, registered
from jirl.credit.models import prefix_potentials, scores_and_attention, token_rewards
from jirl.credit.online import CreditRLPrograms, make_credit_rl_programs, online_model
from jirl.credit.schemes import credit_correlation, credit_fn
from jirl.eval.setting import Setting
from jirl.experiment import RunDir, register_experiment
from jirl.mdp.env import sequence_rewards
from jirl.mdp.responses import sample_groups
from jirl.mdp.tasks import make_task
from jirl.models.heads import SequenceRewardModel
from jirl.models.scoring import gather_response, response_mask
from jirl.models.transformer import ModelSize
from jirl.preference.implicit import implicit_token_rewards
from jirl.preference.objective import add_reference_log_probs, preference_loss
from jirl.rl.loop import RLConfig, check_update_metrics
from jirl.train.loop import train_on_arrays
from jirl.train.losses import LossOutput
from jirl.train.sft import sft_loss
from jirl.train.step import init_train_state, make_update_step

# Study scheme -> the registered credit scheme it runs ("true" feeds the real token rewards).
SCHEMES = {
    "terminal": "terminal", "uniform": "uniform", "shaping": "shaping", "abc": "abc",
    "prime": "prime", "rto": "rto", "decomposition": "decomposition", "true": "none",
}


@dataclasses.dataclass
class CreditHorizonConfig:
    seed: int = 0
    horizons: Annotated[tuple[int, ...], non_empty, each(at_least(1))] = (8, 16, 32, 64, 128)
    schemes: Annotated[tuple[str, ...], non_empty, each(registered(SCHEMES))] = tuple(SCHEMES)
    seeds: Annotated[int, at_least(1)] = 5  # RL runs per cell, vmapped in one program
    num_chars: Annotated[int, in_range(1, 26)] = 4  # bigram alphabet size
    task_seed: int = 0
    iterations: Annotated[int, at_least(1)] = 60  # a budget at which no scheme has converged yet (sample efficiency)
    prompts_per_iteration: Annotated[int, at_least(1)] = 4
    group_size: Annotated[int, at_least(2)] = 4
    learning_rate: Annotated[float, finite, positive] = 1e-3
    kl_coef: Annotated[float, finite, non_negative] = 0.0
    model: ModelSize = dataclasses.field(default_factory=lambda: ModelSize(family="gpt2", d_model=32))
    sft_steps: Annotated[int, at_least(1)] = 150  # reference: SFT on random full-length strings
    aux_samples: Annotated[int, at_least(2)] = 1024  # reference responses the reward model and the DPO policy learn from
    aux_steps: Annotated[int, at_least(1)] = 200
    abc_weight: Annotated[float, probability] = 0.5
    prime_beta: Annotated[float, finite, positive] = 1.0
    prime_coef: Annotated[float, finite, non_negative] = 1.0
    prime_learning_rate: Annotated[float, finite, positive] = 3e-3
    rto_beta: Annotated[float, finite, positive] = 1.0
    rto_clip: Annotated[float, positive] = 1.0
    decomposition_subset: Annotated[int, at_least(1)] = 8
    eval_samples: Annotated[int, at_least(2)] = 256


# ---------------------------------------------------------------------------------------------
# The shared setting of one horizon


def best_return(task) -> float:
    """The largest return any response can get, averaged over prompts (dynamic programming
    over the bigram table; the last step ends the response whatever it is)."""
    score, eos = np.asarray(task.score_table, np.float64), task.eos_id
    letters = [a for a in range(task.vocab_size) if a != eos]
    value = score.max(axis=1)  # the last step
    for _ in range(task.horizon - 1):
        value = np.maximum(score[:, eos], (score[:, letters] + value[letters][None, :]).max(axis=1))
    prompts = task.prompts[0][:, 0]
    return float(value[prompts].mean())


def sample(task, graphdef, params, key, num: int, group: int):
    """``num`` responses in groups of ``group`` per prompt, with their true per-token rewards."""
    out = sample_groups(task, graphdef, params, key, num // group, group).responses
    true = sequence_rewards(task, out.tokens, out.prompt_lens, out.response_lens)
    return {"tokens": out.tokens, "prompt_len": out.prompt_lens, "response_len": out.response_lens, "true": true}


def reference_policy(setting: Setting, config: CreditHorizonConfig):
    """A policy that writes ``horizon`` random letters: the setting's initial policy after SFT on
    uniformly random strings."""
    task, graphdef, params = setting.task, setting.graphdef, setting.reference
    rng = np.random.default_rng(config.seed)
    n = 2048
    prompts, lens, _ = task.prompts
    letters = rng.integers(1, task.vocab_size, (n, task.horizon))  # every id but EOS (= 0)
    tokens = np.concatenate([prompts[rng.integers(0, len(lens), n)], letters], axis=1).astype(np.int32)
    data = {"tokens": tokens, "prompt_len": np.ones(n, np.int32), "response_len": np.full(n, task.horizon, np.int32)}
    optimizer = optax.adam(3e-3)
    state = init_train_state(params, optimizer, jax.random.key(config.seed))
    state, _ = train_on_arrays(state, make_update_step(sft_loss(graphdef), optimizer), data, config.sft_steps, 64, config.seed)
    return state.full_params


def train_reward_model(setting: Setting, config: CreditHorizonConfig, data: dict):
    """A ``SequenceRewardModel`` regressing the standardised return from every prefix of the
    response (its score on the whole response is the reward model; on a prefix, a Monte-Carlo
    value of the reference policy, i.e. a potential). Returns ``(graphdef, params, mean, std)``."""
    task = setting.task
    graphdef, params = nnx.split(SequenceRewardModel(setting.model_config, rngs=nnx.Rngs(config.seed + 1)))
    returns = np.asarray(data["true"]).sum(1)
    mean, std = float(returns.mean()), float(returns.std() + 1e-6)

    def loss_fn(params, batch, key):
        model = nnx.merge(graphdef, params)
        per_slot = model.head.per_position(model.backbone(batch["tokens"]).hidden)
        # Prefixes s_1 .. s_T (the state after each response token); s_T is the whole response.
        scores = gather_response(per_slot, batch["prompt_len"], task.horizon)
        mask = response_mask(batch["response_len"], task.horizon)
        errors = jnp.where(mask, (scores - batch["target"][:, None]) ** 2, 0.0)
        return LossOutput(total=jnp.sum(errors), count=jnp.sum(mask).astype(jnp.float32)), {}

    train = {k: np.asarray(data[k]) for k in ("tokens", "prompt_len", "response_len")}
    train["target"] = ((returns - mean) / std).astype(np.float32)
    optimizer = optax.adam(3e-3)
    state = init_train_state(params, optimizer, jax.random.key(config.seed))
    state, _ = train_on_arrays(state, make_update_step(loss_fn, optimizer), train, config.aux_steps, 64, config.seed)
    return graphdef, state.full_params, mean, std


def train_dpo(task, config: CreditHorizonConfig, graphdef, reference, data: dict):
    """DPO from the reference on within-group pairs (consecutive responses), the higher return chosen."""
    tokens, prompt_len, lens = (np.asarray(data[k]) for k in ("tokens", "prompt_len", "response_len"))
    returns = np.asarray(data["true"]).sum(1)
    first, second = np.arange(0, len(returns), 2), np.arange(1, len(returns), 2)
    keep = returns[first] != returns[second]
    first, second = first[keep], second[keep]
    better = returns[first] > returns[second]
    chosen, rejected = np.where(better, first, second), np.where(better, second, first)
    pairs = {
        "chosen": tokens[chosen], "rejected": tokens[rejected], "prompt_len": prompt_len[chosen],
        "chosen_len": lens[chosen], "rejected_len": lens[rejected],
    }
    pairs = add_reference_log_probs(graphdef, reference, pairs)
    optimizer = optax.adam(1e-3)
    state = init_train_state(reference, optimizer, jax.random.key(config.seed))
    step = make_update_step(preference_loss(graphdef, "dpo", beta=config.rto_beta), optimizer)
    state, _ = train_on_arrays(state, step, pairs, config.aux_steps, 64, config.seed)
    return state.full_params


def build_setting(config: CreditHorizonConfig, horizon: int) -> Setting:
    """Everything the RL runs of one horizon share: the task, the SFT reference and, as extras,
    ``reward_model`` (``(graphdef, params, mean, std)``: predicts R from every prefix), ``dpo``
    (the DPO policy's parameters, RTO's token rewards), ``test`` (reference samples for the
    credit correlation) and the ``reference_return`` and ``best_return`` of the gold fraction."""
    task = make_task("bigram", num_chars=config.num_chars, horizon=horizon, seed=config.task_seed)
    setting = Setting.build(task, config.model, config.seed, exact=False)
    setting = setting.with_reference(reference_policy(setting, config))
    graphdef, reference = setting.graphdef, setting.reference
    data = sample(task, graphdef, reference, jax.random.key(config.seed + 10), config.aux_samples, config.group_size)
    test = sample(task, graphdef, reference, jax.random.key(config.seed + 11), config.eval_samples, config.group_size)
    setting.extras.update(
        reward_model=train_reward_model(setting, config, data),
        dpo=train_dpo(task, config, graphdef, reference, data),
        test=test,
        reference_return=float(jnp.mean(jnp.sum(test["true"], axis=1))),
        best_return=best_return(task),
    )
    return setting


# ---------------------------------------------------------------------------------------------
# One scheme: dense rewards, its online model, the vmapped RL program


def dense_rewards(scheme: str, setting: Setting, config: CreditHorizonConfig, aux, aux_graphdef, tokens, prompt_lens, response_lens):
    """The scheme's ``[B, H]`` credit for responses whose only reward is their return."""
    task, horizon = setting.task, setting.task.horizon
    true = sequence_rewards(task, tokens, prompt_lens, response_lens)
    mask = response_mask(response_lens, horizon)
    rm_graphdef, rm_params, mean, std = setting.extras["reward_model"]
    inputs, options = {}, {}
    if scheme == "shaping":
        inputs["potentials"] = mean + std * prefix_potentials(rm_graphdef, rm_params, tokens, prompt_lens, horizon)
    elif scheme == "abc":
        inputs["attention"] = scores_and_attention(rm_graphdef, rm_params, tokens, prompt_lens, response_lens, horizon)[1]
        options["abc_weight"] = config.abc_weight
    elif scheme == "rto":
        inputs["implicit_rewards"] = implicit_token_rewards(
            setting.graphdef, setting.extras["dpo"], setting.reference, tokens, prompt_lens, response_lens, horizon, config.rto_beta
        )
        options["rto_clip"] = config.rto_clip
    elif scheme == "prime":
        inputs["process_rewards"] = implicit_token_rewards(
            setting.graphdef, aux, setting.reference, tokens, prompt_lens, response_lens, horizon, config.prime_beta
        )
        options["process_coef"] = config.prime_coef
    elif scheme == "decomposition":
        inputs["predicted_rewards"] = token_rewards(aux_graphdef, aux, tokens, prompt_lens, horizon)
    return credit_fn(SCHEMES[scheme], options)(true, mask, **inputs)


def make_programs(scheme: str, setting: Setting, config: CreditHorizonConfig) -> CreditRLPrograms:
    """Jitted, seed-vmapped ``iterate(carry, keys)`` and ``evaluate(carry, keys)`` and
    ``init(num_seeds)`` of the scheme's RL runs (``jirl.credit.online.make_credit_rl_programs``):
    RLOO on per-step returns of the scheme's credit (``dense_rewards``) plus, for PRIME and
    return decomposition, one update of the model they learn online. ``evaluate``: the gold
    return and length of fresh samples and the credit's correlation with the true per-token
    reward on the reference's test samples."""
    task, graphdef = setting.task, setting.graphdef
    rl = RLConfig(
        advantage="rloo_to_go", policy_loss="pg", prompts_per_iteration=config.prompts_per_iteration,
        group_size=config.group_size, kl_coef=config.kl_coef,
    )
    online = online_model(
        SCHEMES[scheme], setting, optax.adam(config.prime_learning_rate), seed=config.seed + 2,
        prime_beta=config.prime_beta, decomposition_subset=config.decomposition_subset,
    )
    aux_graphdef = online.graphdef if online is not None else None

    def credit(aux, tokens, prompt_lens, response_lens):
        return dense_rewards(scheme, setting, config, aux, aux_graphdef, tokens, prompt_lens, response_lens)

    def evaluate(policy, aux, key):
        samples = sample(task, graphdef, policy, key, config.eval_samples, config.group_size)
        test = setting.extras["test"]
        dense = credit(aux, test["tokens"], test["prompt_len"], test["response_len"])
        mask = response_mask(test["response_len"], task.horizon)
        return {
            "gold_return": jnp.mean(jnp.sum(samples["true"], axis=1)),
            "response_length": jnp.mean(samples["response_len"].astype(jnp.float32)),
            "credit_correlation": credit_correlation(dense, test["true"], mask),
        }

    return make_credit_rl_programs(setting, rl, optax.adam(config.learning_rate), credit, evaluate, online)


def train_scheme(scheme: str, setting: Setting, config: CreditHorizonConfig, run: RunDir, progress, bar) -> dict:
    iterate, evaluate, init = make_programs(scheme, setting, config)
    seed_keys = jax.random.split(jax.random.key(config.seed + 100), config.seeds)
    carry = init(jax.vmap(lambda k: jax.random.fold_in(k, 0))(seed_keys))  # iterations fold in 1, 2, ...
    reference_return, best_return = setting.extras["reference_return"], setting.extras["best_return"]
    fraction = lambda r: (r - reference_return) / (best_return - reference_return)  # noqa: E731
    curve = []  # [iteration, seed] gold fraction of the sampled responses
    for iteration in range(1, config.iterations + 1):
        keys = jax.vmap(lambda k: jax.random.fold_in(k, iteration))(seed_keys)
        carry, metrics = iterate(carry, keys)
        metrics = jax.device_get(metrics)
        check_update_metrics(metrics, where=f"credit_horizon {scheme} (H = {setting.task.horizon})")
        reward = np.asarray(metrics["reward"])
        curve.append(fraction(reward))
        if iteration % 10 == 0 or iteration == config.iterations:
            run.log(iteration, horizon=setting.task.horizon, scheme=scheme, reward=float(reward.mean()), reward_std=float(reward.std()))
        progress.advance(bar)
    final = {k: np.asarray(v) for k, v in evaluate(carry, jax.vmap(lambda k: jax.random.fold_in(k, config.iterations + 1))(seed_keys)).items()}
    summary = lambda x: {"mean": float(np.mean(x)), "std": float(np.std(x)), "per_seed": [float(v) for v in x]}  # noqa: E731
    curve = np.asarray(curve)
    return {
        "gold_reward": summary(final["gold_return"]),
        "gold_fraction": summary(fraction(final["gold_return"])),
        # Sample efficiency over the whole budget: the mean gold fraction of the training samples.
        "gold_auc": summary(curve.mean(axis=0)),
        "credit_correlation": summary(final["credit_correlation"]),
        "response_length": float(final["response_length"].mean()),
        "curve": [float(v) for v in curve.mean(axis=1)],
    }


@register_experiment("credit_horizon", config=CreditHorizonConfig, description="dense credit schemes for a sparse reward vs generation length")
def run(config: CreditHorizonConfig, run: RunDir) -> dict:
    unknown = sorted(set(config.schemes) - set(SCHEMES))
    if unknown:
        raise ConfigError(f"unknown credit scheme(s) {unknown}; choose from {sorted(SCHEMES)}")
    if config.seeds < 1 or config.group_size < 2 or config.aux_samples % (2 * config.group_size):
        raise ConfigError("need seeds >= 1, group_size >= 2 and aux_samples divisible by 2 * group_size")
    results = {
        "horizons": list(config.horizons), "schemes": list(config.schemes), "seeds": config.seeds,
        "gold_reward": {s: {} for s in config.schemes}, "gold_fraction": {s: {} for s in config.schemes},
        "gold_auc": {s: {} for s in config.schemes},
        "credit_correlation": {s: {} for s in config.schemes}, "curves": {s: {} for s in config.schemes},
        "reference_return": {}, "best_return": {}, "seconds": {},
    }
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=run.console) as progress:
        bar = progress.add_task("credit_horizon", total=len(config.horizons) * len(config.schemes) * config.iterations)
        for horizon in config.horizons:
            start = time.perf_counter()
            progress.update(bar, description=f"H={horizon} setting")
            setting = build_setting(config, horizon)
            results["reference_return"][str(horizon)] = setting.extras["reference_return"]
            results["best_return"][str(horizon)] = setting.extras["best_return"]
            for scheme in config.schemes:
                progress.update(bar, description=f"H={horizon} {scheme}")
                cell = train_scheme(scheme, setting, config, run, progress, bar)
                for key in ("gold_reward", "gold_fraction", "gold_auc", "credit_correlation"):
                    results[key][scheme][str(horizon)] = cell[key]
                results["curves"][scheme][str(horizon)] = cell["curve"]
            results["seconds"][str(horizon)] = time.perf_counter() - start
    print_table(run, results)
    plot(run.path_for("credit_horizon.png"), results)
    return results


def print_table(run: RunDir, results: dict) -> None:
    table = Table(title=f"Gold fraction (mean ± std over {results['seeds']} seeds) and credit correlation with the truth")
    table.add_column("scheme")
    for horizon in results["horizons"]:
        table.add_column(f"H={horizon}", justify="right")
    for scheme in results["schemes"]:
        cells = []
        for horizon in map(str, results["horizons"]):
            g, c = results["gold_fraction"][scheme][horizon], results["credit_correlation"][scheme][horizon]
            cells.append(f"{g['mean']:.2f}±{g['std']:.2f} (ρ {c['mean']:.2f})")
        table.add_row(scheme, *cells)
    run.console.print(table)


def plot(path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizons = results["horizons"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for scheme in results["schemes"]:
        style = "k--" if scheme == "true" else "o-"
        for ax, key in zip(axes[:2], ("gold_fraction", "credit_correlation")):
            mean = [results[key][scheme][str(h)]["mean"] for h in horizons]
            std = [results[key][scheme][str(h)]["std"] for h in horizons]
            ax.errorbar(horizons, mean, yerr=std, fmt=style, capsize=3, label=scheme)
        longest = results["curves"][scheme][str(horizons[-1])]
        axes[2].plot(np.arange(1, len(longest) + 1), longest, "k--" if scheme == "true" else "-", label=scheme)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    axes[0].set(xscale="log", xlabel="generation length H", ylabel="gold fraction", title="gold return after a fixed budget (± std over seeds)")
    axes[1].set(xscale="log", xlabel="generation length H", ylabel="Pearson ρ", title="token credit vs true per-token reward")
    axes[2].set(xlabel="iteration", ylabel="gold fraction of the samples", title=f"learning curves, H = {horizons[-1]} (mean over seeds)")
    for ax in axes[:2]:
        ax.set_xticks(horizons, [str(h) for h in horizons])
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
