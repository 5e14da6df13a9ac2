"""``jirl run overoptimization``: scaling laws for reward-model over-optimisation, laptop scale.

Gao, Schulman & Hilton (2022), "Scaling laws for reward model overoptimization": a fixed
"gold" reward model stands in for humans; proxy reward models are trained on its labels;
optimising a proxy first raises the gold reward, then the gold reward falls while the proxy
keeps rising. As a function of ``d = sqrt(KL(pi || pi_init))`` the gold reward (relative to
the initial policy) follows

    best-of-n:  R_bon(d) = d (alpha_bon - beta_bon d),
    RL:         R_RL(d)  = d (alpha_RL  - beta_RL  log d),

and larger proxies / more preference data over-optimise less (larger alpha, smaller beta,
later peak). Here:

1. Gold: the ``gold_rm`` task (a fixed random transformer scores prompt + response). The
   initial policy is a randomly initialised small transformer (close to uniform over tokens),
   as in ``rl_oracle``; it is also the reference of every KL.
2. Labels: within-prompt pairs of the initial policy's responses, labelled by a Bradley-Terry
   annotator of the gold reward (``simulate_preferences``, ``beta_ann``).
3. Proxies: ``SequenceRewardModel``s of every size in ``proxy_sizes`` trained with the BT loss
   on the first ``n`` pairs for every ``n`` in ``data_sizes`` (nested data), named
   ``d{size}_n{pairs}``; models of one size train as one vmapped program.
4. Best-of-n: a pool of ``bon_pool_per_prompt`` responses per prompt from the initial policy,
   scored by gold and every proxy; ``best_of_n_exact`` gives gold and proxy reward of
   best-of-n for n = 1..``bon_max_n``, at ``d = sqrt(log n - (n - 1)/n)`` (``best_of_n_kl``).
5. RL: RLOO with ``kl_coef = 0`` against each proxy (the proxies of one size vmapped in one
   program), evaluated every ``rl_eval_every`` iterations: gold and proxy reward of fresh
   samples and their KL to the initial policy (``jirl.rl.kl.response_kl``: the exact next-token KL
   summed over the visited states, an unbiased low-variance estimate).
6. Fits (``jirl.eval.scaling``) of the gold curves, the observed gold peak, and whether the gold
   reward peaks and falls while the proxy keeps rising (R^2 of the fits is information only).
7. Which form? (``jirl.eval.form_selection``) Every proxy is trained ``num_seeds`` times (seed 0
   is ``d{size}_n{pairs}``, seed s > 0 ``d{size}_n{pairs}_seed{s}``: its own initialisation,
   minibatch order and RL sampling noise), and best-of-n and RL run against every seed's proxy.
   Each gold curve is fitted by every candidate form (Gao's best-of-n form, Gao's RL form and two
   generic saturating curves) on ``d <= d_fit = d_fit_fraction * max(d)`` and scored by its
   RMSE on the held-out ``d > d_fit`` (extrapolation), and by AIC/BIC on all points. The winner
   of each optimiser, per proxy and per proxy size (pooling data sizes and seeds), is the form
   with the lowest mean held-out error over seeds, reported with t-intervals and a paired
   comparison with the runner-up ("decided" when its interval excludes 0).
8. Mitigations on one proxy (``mitigation_proxy``), under the same RL budget and in the same
   vmapped program as the proxies of its width: an ensemble of ``ensemble_size`` proxies
   (different initialisations and minibatch orders, same data) aggregated by ``mean - k std``
   and by ``min`` (Coste et al. 2024), and a KL penalty in the reward (``kl_coef``, Ziegler et
   al. 2019) on the single proxy. The ensemble's members are seeds of the mitigation proxy, so
   where they coincide with the ``num_seeds`` seeds they are the same models.

Rewards are reported relative to the initial policy (``R(0) = 0``, as in the paper): gold minus
its mean over the best-of-n pool, each proxy minus its own mean there.

    jirl run overoptimization --set proxy_sizes=16,64 --set rl_iterations=200
"""

from __future__ import annotations

from typing import Annotated

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from jirl.config import Check, ConfigError, at_least, each, finite, non_empty, non_negative, positive
from jirl.eval import form_selection, scaling
from jirl.eval.metrics import best_of_n_exact, best_of_n_kl, pairwise_accuracy
from jirl.eval.setting import Setting
from jirl.experiment import RunDir, register_experiment
from jirl.mdp.responses import gold_returns, sample_responses
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.mdp.tasks import TaskConfig, build_task
from jirl.models.heads import SequenceRewardModel
from jirl.models.transformer import ModelSize
from jirl.rewards.annotation import simulate_preferences
from jirl.rewards.ensemble import aggregate_ensemble
from jirl.rewards.proxies import ensemble_reward_fn, score_pool, train_proxies
from jirl.rl.kl import response_kl
from jirl.rl.loop import RLConfig, check_update_metrics, make_rl_update
from jirl.train.step import init_train_state

MITIGATIONS = ("plain", "ensemble_mean_minus_std", "ensemble_min", "kl_penalty")


@dataclasses.dataclass
class OveroptimizationConfig:
    seed: int = 0
    # 8 letters, up to 8 response tokens: ~10^7 responses per prompt, so best-of-1000 is far
    # from exhausting the initial policy.
    task: TaskConfig = dataclasses.field(default_factory=lambda: TaskConfig("gold_rm", ("num_chars=8", "horizon=8")))
    policy: ModelSize = dataclasses.field(default_factory=lambda: ModelSize(family="gpt2", d_model=32))
    # Proxies: llama-family SequenceRewardModels (the gold's family) of these widths.
    proxy_sizes: Annotated[tuple[int, ...], non_empty, each(at_least(1))] = (16, 32, 64)
    proxy_layers: Annotated[int, at_least(1)] = 2
    data_sizes: Annotated[tuple[int, ...], non_empty, each(at_least(1))] = (250, 1000, 4000)  # preference pairs (nested subsets)
    beta_ann: Annotated[float, finite, non_negative] = 5.0  # BT annotator P(a > b) = sigmoid(beta_ann (g(a) - g(b)))
    label_pool_per_prompt: Annotated[int, at_least(2)] = 2048  # initial-policy responses the pairs are drawn from
    rm_steps: Annotated[int, at_least(1)] = 200
    rm_batch_size: Annotated[int, at_least(1)] = 64
    rm_learning_rate: Annotated[float, finite, positive] = 1e-3
    rm_weight_decay: Annotated[float, finite, non_negative] = 1e-2
    # Best-of-n.
    bon_pool_per_prompt: Annotated[int, at_least(1)] = 4096
    bon_max_n: Annotated[int, at_least(1)] = 1000
    # RL (RLOO, no KL penalty unless a mitigation adds one).
    rl_iterations: Annotated[int, at_least(1)] = 500
    rl_eval_every: Annotated[int, at_least(1)] = 10
    rl_eval_samples: Annotated[int, at_least(1)] = 512
    prompts_per_iteration: Annotated[int, at_least(1)] = 16
    group_size: Annotated[int, at_least(2)] = 8
    rl_learning_rate: Annotated[float, finite, positive] = 1e-3
    # Seeds of every proxy (initialisation, minibatch order and RL sampling noise): the form
    # selection's intervals are over them.
    num_seeds: Annotated[int, at_least(1)] = 3
    # Forms are fitted on d <= d_fit_fraction * max(d) and scored on the rest: with 2/3 they
    # extrapolate by a factor 1.5 in d (best-of-n: from n ~ 37 to n = 1000 at bon_max_n=1000).
    d_fit_fraction: Annotated[float, finite, Check(lambda v: 0.0 < v < 1.0, "in (0, 1)")] = form_selection.DEFAULT_FIT_FRACTION
    # Mitigations, on one proxy.
    mitigation_proxy: str = "d32_n1000"
    ensemble_size: Annotated[int, at_least(1)] = 4
    ensemble_k: Annotated[float, finite, non_negative] = 1.0  # mean - k std
    kl_coef: Annotated[float, finite, non_negative] = 0.05
    # "Falls": the gold reward ends at least this far (gold units) below its peak.
    falls_tolerance: Annotated[float, finite, non_negative] = 0.1


def proxy_name(size: int, pairs: int, seed: int = 0) -> str:
    """``d{size}_n{pairs}`` for seed 0 (the name every consumer reads), ``..._seed{seed}`` else."""
    return f"d{size}_n{pairs}" + (f"_seed{seed}" if seed else "")


def seed_names(config: OveroptimizationConfig, size: int, pairs: int) -> list[str]:
    return [proxy_name(size, pairs, seed) for seed in range(config.num_seeds)]


# ---------------------------------------------------------------------------------------------
# Proxy reward models


def proxy_graph(config: OveroptimizationConfig, task, size: int, seed: int):
    model_config = ModelSize(family="llama", d_model=size, num_layers=config.proxy_layers).build(
        task.vocab_size, task.prompt_width + task.horizon
    )
    return nnx.split(SequenceRewardModel(model_config, rngs=nnx.Rngs(seed)))


def proxies_of_width(config: OveroptimizationConfig, task, size: int, members: list[tuple[int, int]], pool: dict, pairs):
    """One proxy of width ``size`` per ``(num_pairs, seed)`` member, trained as one vmapped
    program (``jirl.rewards.proxies.train_proxies``): member ``m`` sees the first ``num_pairs``
    labelled pairs only, and starts from its own initialisation. Returns ``graphdef`` and the
    stacked parameters ``[members, ...]``."""
    graphdef, _ = proxy_graph(config, task, size, 0)
    params = train_proxies(
        graphdef,
        [proxy_graph(config, task, size, 100_000 * config.seed + 1000 * seed + size)[1] for _, seed in members],
        pool, pairs, [n for n, _ in members],
        optimizer=optax.adamw(config.rm_learning_rate, weight_decay=config.rm_weight_decay),
        steps=config.rm_steps, batch_size=config.rm_batch_size, key=jax.random.key(config.seed + size),
        order_seeds=[(config.seed, size, n, seed) for n, seed in members],
    )
    return graphdef, params


def rl_members(config: OveroptimizationConfig, proxies: dict, size: int) -> dict:
    """The RL runs against the proxies of width ``size``, each as the ensemble its reward is
    (``jirl.rewards.proxies.ensemble_reward_fn``): ``params`` (``[K, ...]`` stacked proxies),
    ``min`` / ``k`` (the ensemble aggregation), ``kl_coef`` and ``seed`` (the RL sampling noise's,
    ``train_rl``). A single proxy is K copies of itself with ``k = 0`` (its mean is itself); every
    seed of every proxy is a member; the mitigation proxy's width also gets the mitigations (at
    seed 0), so all of one width run as one program."""
    mitigation = config.mitigation_proxy
    ensemble = [mitigation] + [f"{mitigation}_seed{s}" for s in range(1, config.ensemble_size)]
    copies = len(ensemble) if mitigation in proxies and proxies[mitigation][2] == size else 1
    stack = lambda names: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[proxies[n][1] for n in names])  # noqa: E731
    single = lambda name, seed=0: {"params": stack([name] * copies), "min": False, "k": 0.0, "kl_coef": 0.0, "seed": seed}  # noqa: E731
    members = {proxy_name(size, n, s): single(proxy_name(size, n, s), s) for s in range(config.num_seeds) for n in config.data_sizes}
    if copies > 1:
        members["ensemble_mean_minus_std"] = {"params": stack(ensemble), "min": False, "k": config.ensemble_k, "kl_coef": 0.0, "seed": 0}
        members["ensemble_min"] = {"params": stack(ensemble), "min": True, "k": 0.0, "kl_coef": 0.0, "seed": 0}
        members["kl_penalty"] = {**single(mitigation), "kl_coef": config.kl_coef}
    return members


# ---------------------------------------------------------------------------------------------
# RL against proxies


def make_rl_programs(config: OveroptimizationConfig, setting: Setting, reward_graphdef, penalised: bool):
    """Jitted, member-vmapped ``iterate(states, members, keys)`` (one RLOO iteration of
    ``make_rl_update``, Ahmadian et al. 2024) and ``evaluate(states, members, keys)`` (gold, proxy
    and exact KL of fresh samples).
    ``penalised``: some member has a KL penalty (else its log-ratio is not computed at all)."""
    task, graphdef, reference = setting.task, setting.graphdef, setting.reference
    rl = RLConfig(advantage="rloo", policy_loss="pg", prompts_per_iteration=config.prompts_per_iteration, group_size=config.group_size)
    update = make_rl_update(task, graphdef, optax.adam(config.rl_learning_rate), rl)
    sampling = SamplingConfig(max_new_tokens=task.horizon, eos_id=task.eos_id)

    def iterate(state, member, key):
        reward_fn = ensemble_reward_fn(setting, reward_graphdef, member, policy=state.full_params if penalised else None)
        return update(state, reference, key, reward_fn=reward_fn)

    def evaluate(state, member, key):
        prompt_key, sample_key = jax.random.split(key)
        prompts, lens = task.sample_prompts(prompt_key, config.rl_eval_samples)
        out = generate(graphdef, state.full_params, prompts, lens, sample_key, sampling)
        proxy = ensemble_reward_fn(setting, reward_graphdef, member)(out.tokens, out.prompt_lens, out.response_lens)
        kl = response_kl(graphdef, state.full_params, reference, out.tokens, out.prompt_lens, out.response_mask)
        return {
            "gold": jnp.mean(gold_returns(task, out.tokens, out.prompt_lens, out.response_lens)),
            "proxy": jnp.mean(jnp.sum(proxy, axis=1)),
            "kl": jnp.mean(kl),
            "response_length": jnp.mean(out.response_lens.astype(jnp.float32)),
        }

    return jax.jit(jax.vmap(iterate), donate_argnums=0), jax.jit(jax.vmap(evaluate))


def train_rl(config, setting, reward_graphdef, members: dict, run: RunDir, progress, bar) -> dict:
    """RL from the initial policy against every member of ``members`` at once (one vmapped
    program); returns each member's curve ``{iteration, kl, gold, proxy, response_length}``
    (rewards raw, not yet relative to the initial policy). Members of one ``seed`` see the same
    prompts and sampling noise (common random numbers); seed 0 the run's keys, seed s > 0 those
    keys folded with s."""
    iterate, evaluate = make_rl_programs(config, setting, reward_graphdef, any(m["kl_coef"] > 0 for m in members.values()))
    names, count = list(members), len(members)
    seeds = [int(m["seed"]) for m in members.values()]
    members = {name: {k: v for k, v in m.items() if k != "seed"} for name, m in members.items()}
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *members.values())
    optimizer = optax.adam(config.rl_learning_rate)
    policies = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (count,) + x.shape), setting.reference)
    states = jax.vmap(lambda p, k: init_train_state(p, optimizer, k))(policies, jax.random.split(jax.random.key(config.seed + 7), count))
    member_keys = jax.jit(lambda key: jnp.stack([key if s == 0 else jax.random.fold_in(key, s) for s in seeds]))
    curves = {name: [] for name in names}
    failed = {"nonfinite_rewards": 0, "update/nonfinite": 0}
    for iteration in range(config.rl_iterations + 1):
        if iteration % config.rl_eval_every == 0 or iteration == config.rl_iterations:
            check_update_metrics(jax.device_get(failed), where="overoptimization RL")  # any NaN since the last evaluation
            point = evaluate(states, stacked, member_keys(jax.random.key(config.seed + 10_000 + iteration)))
            point = {k: np.asarray(v) for k, v in point.items()}
            for m, name in enumerate(names):
                curves[name].append({"iteration": iteration, **{k: float(v[m]) for k, v in point.items()}})
                run.log(iteration, stage="rl", run=name, **{k: float(v[m]) for k, v in point.items()})
        if iteration < config.rl_iterations:
            states, metrics = iterate(states, stacked, member_keys(jax.random.fold_in(jax.random.key(config.seed + 1), iteration)))
            failed = {k: failed[k] + metrics[k] for k in failed}  # summed on device, read at evaluations
            progress.advance(bar)
    return curves


# ---------------------------------------------------------------------------------------------
# Curves, fits, peaks


def summarize_curve(form: str, d, gold, proxy, tolerance: float) -> dict:
    """Fit of the gold curve, its fitted and observed peak, and whether the gold reward falls
    (by more than ``tolerance`` below its peak by the end) while the proxy keeps rising."""
    fit = scaling.fit_bon(d, gold) if form == "bon" else scaling.fit_rl(d, gold)
    fit_peak = scaling.peak(form, fit["alpha"], fit["beta"])
    peak_d, peak_gold = scaling.observed_peak(d, gold)
    at_peak = int(np.argmax(gold))
    falls = bool(peak_gold - gold[-1] > tolerance and proxy[-1] > proxy[at_peak])
    return {
        **fit,
        "fit_peak_d": fit_peak if math.isfinite(fit_peak) else None,
        "gold_peak_d": peak_d,
        "gold_peak": peak_gold,
        "gold_final": float(gold[-1]),
        "proxy_final": float(proxy[-1]),
        "gold_falls_while_proxy_rises": falls,
    }


def select_forms(config: OveroptimizationConfig, results: dict) -> dict:
    """The ``form_selection`` section (module docstring, step 7; ``jirl.eval.form_selection``):
    ``d_fit_fraction``, ``level``, ``num_seeds``, ``forms`` (name -> equation) and, for ``bon``
    and ``rl``, ``proxies`` (per proxy name, over its seeds' gold curves) and ``sizes`` (per width
    ``d{size}``, over all its data sizes' and seeds' curves, each curve one unit; the data sizes
    are nested subsets, so read its interval as indicative) and ``all`` (every proxy's curves,
    likewise). Each entry is a ``select_over_seeds`` result plus ``curves`` (the curves' names);
    a curve too short to fit and hold out points is left out and listed in ``skipped``, and an
    entry with no usable curve is ``{"curves", "winner": None, "error"}``. Each curve is fitted
    on ``d <= d_fit_fraction * max(d)`` of its own ``d``. Undefined numbers (one seed's
    interval, a failed fit) are None."""
    section = {
        "d_fit_fraction": config.d_fit_fraction, "level": 0.95, "num_seeds": config.num_seeds,
        "forms": {name: form.equation for name, form in form_selection.FORMS.items()},
    }
    curves = results["curves"]

    def gold_curve(optimiser: str, name: str):
        d = curves["bon"]["d"] if optimiser == "bon" else curves["rl"][name]["d"]
        return np.asarray(d, dtype=np.float64), np.asarray(curves[optimiser][name]["gold"], dtype=np.float64)

    def select(optimiser: str, names: list[str]) -> dict:
        pairs = [gold_curve(optimiser, name) for name in names]
        try:
            chosen = form_selection.select_over_seeds(
                pairs, [config.d_fit_fraction * float(np.max(d)) for d, _ in pairs], level=section["level"], skip_invalid=True
            )
        except ValueError as error:
            return {"curves": names, "winner": None, "error": str(error)}
        chosen["skipped"] = [{"curve": names[i], "reason": reason} for i, reason in chosen["skipped"]]
        return json_safe({"curves": names, **chosen})

    for optimiser in ("bon", "rl"):
        per_proxy, per_size = {}, {}
        for size in config.proxy_sizes:
            for n in config.data_sizes:
                per_proxy[proxy_name(size, n)] = select(optimiser, seed_names(config, size, n))
            per_size[f"d{size}"] = select(optimiser, [seeded for n in config.data_sizes for seeded in seed_names(config, size, n)])
        everything = [seeded for size in config.proxy_sizes for n in config.data_sizes for seeded in seed_names(config, size, n)]
        section[optimiser] = {"proxies": per_proxy, "sizes": per_size, "all": select(optimiser, everything)}
    return section


def json_safe(value):
    """``value`` with every non-finite float (and NumPy scalar) made JSON-safe: nan/inf -> None."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def bon_ns(max_n: int, points: int = 60) -> np.ndarray:
    """Log-spaced n in 1..max_n (the curve is stored and fitted there, so large n, which crowd
    together in d, do not dominate the fit)."""
    return np.unique(np.round(np.geomspace(1, max_n, points)).astype(int))


def best_of_n_curves(pool: dict, scores: dict[str, np.ndarray], max_n: int) -> dict:
    """Gold and proxy reward of best-of-n under each proxy, relative to n = 1, at ``bon_ns``."""
    ns = bon_ns(max_n)
    ids, gold = jnp.asarray(pool["prompt_id"]), jnp.asarray(pool["gold"])
    pick = lambda curve: np.asarray(curve)[ns - 1] - float(curve[0])  # noqa: E731
    curves = {"n": ns.tolist(), "d": np.sqrt(np.maximum(np.asarray(best_of_n_kl(ns)), 0.0)).tolist()}
    curves["gold_selected_by_gold"] = pick(best_of_n_exact(gold, gold, max_n, ids)).tolist()
    for name, score in scores.items():
        proxy = jnp.asarray(score)
        curves[name] = {
            "gold": pick(best_of_n_exact(proxy, gold, max_n, ids)).tolist(),
            "proxy": pick(best_of_n_exact(proxy, proxy, max_n, ids)).tolist(),
        }
    return curves


def relative_rl_curve(points: list[dict], gold0: float, proxy0: float) -> dict:
    """An RL curve with rewards relative to the initial policy and ``d = sqrt(KL)``."""
    return {
        "iteration": [p["iteration"] for p in points],
        "kl": [p["kl"] for p in points],
        "d": [math.sqrt(max(p["kl"], 0.0)) for p in points],
        "gold": [p["gold"] - gold0 for p in points],
        "proxy": [p["proxy"] - proxy0 for p in points],
        "response_length": [p["response_length"] for p in points],
    }


# ---------------------------------------------------------------------------------------------
# The experiment


def check_config(config: OveroptimizationConfig, task) -> None:
    if not hasattr(task, "gold_model"):
        raise ConfigError(f"overoptimization needs a task with a gold reward model (gold_rm), got {task.name!r}")
    names = [proxy_name(s, n) for s in config.proxy_sizes for n in config.data_sizes]
    if config.mitigation_proxy not in names:
        raise ConfigError(f"mitigation_proxy={config.mitigation_proxy!r} is not one of the proxies {names}")
    if config.bon_max_n < 3 or config.rl_iterations < 2 * config.rl_eval_every or config.ensemble_size < 2:
        raise ConfigError("need bon_max_n >= 3, rl_iterations >= 2 * rl_eval_every and ensemble_size >= 2")
    if config.group_size < 2:
        raise ConfigError("RLOO needs group_size >= 2")


@register_experiment("overoptimization", config=OveroptimizationConfig, description="reward-model over-optimisation scaling laws (Gao et al. 2022): best-of-n and RL vs proxy size and data")
def run(config: OveroptimizationConfig, run: RunDir) -> dict:
    task = build_task(config.task)
    check_config(config, task)
    seconds = {}
    start = time.perf_counter()
    setting = Setting.build(task, config.policy, config.seed, exact=False)
    graphdef, reference = setting.graphdef, setting.reference
    num_prompts = len(task.prompts[1])
    key = jax.random.key(config.seed)

    # Labelled pairs from the initial policy; a separate pool for best-of-n (and test pairs).
    label_pool = sample_responses(task, graphdef, reference, jax.random.fold_in(key, 1), np.repeat(np.arange(num_prompts), config.label_pool_per_prompt))
    bon_pool = sample_responses(task, graphdef, reference, jax.random.fold_in(key, 2), np.repeat(np.arange(num_prompts), config.bon_pool_per_prompt))
    chosen, rejected, _ = simulate_preferences(
        jax.random.fold_in(key, 3), jnp.asarray(label_pool["gold"]), jnp.asarray(label_pool["prompt_id"]), max(config.data_sizes), config.beta_ann
    )
    pairs = (np.asarray(chosen), np.asarray(rejected))
    test_a, test_b = gold_ordered_pairs(jax.random.fold_in(key, 4), bon_pool)
    seconds["samples"] = time.perf_counter() - start

    # Proxies: one vmapped training program per width, every seed of every proxy; the mitigation
    # ensemble's members are seeds of the mitigation proxy (trained once where they are also
    # one of the num_seeds seeds).
    mitigation_size, mitigation_pairs = (int(x) for x in config.mitigation_proxy[1:].split("_n"))
    proxies, scores, proxy_info = {}, {}, {}
    start = time.perf_counter()
    extra = max(config.ensemble_size - config.num_seeds, 0)
    run.console.print(
        f"training {len(config.proxy_sizes) * len(config.data_sizes)} proxies x {config.num_seeds} seeds"
        + (f" and {extra} more ensemble members" if extra else "")
    )
    for size in config.proxy_sizes:
        members = [(n, seed) for seed in range(config.num_seeds) for n in config.data_sizes]
        if size == mitigation_size:
            members += [(mitigation_pairs, seed) for seed in range(1, config.ensemble_size) if (mitigation_pairs, seed) not in members]
        proxy_graphdef, params = proxies_of_width(config, task, size, members, label_pool, pairs)
        pool_scores = score_pool(proxy_graphdef, params, bon_pool)
        for m, (n, seed) in enumerate(members):
            name = proxy_name(size, n, seed)
            proxies[name] = (proxy_graphdef, jax.tree_util.tree_map(lambda x, m=m: x[m], params), size)
            scores[name] = pool_scores[m]
            accuracy = float(pairwise_accuracy(pool_scores[m][test_a], pool_scores[m][test_b]))
            proxy_info[name] = {"d_model": size, "pairs": n, "seed": seed, "test_accuracy": accuracy}
            run.log(0, stage="proxy", proxy=name, test_accuracy=accuracy)
    seconds["proxies"] = time.perf_counter() - start
    names = [proxy_name(s, n) for s in config.proxy_sizes for n in config.data_sizes]
    seeds = {proxy_name(s, n): seed_names(config, s, n) for s in config.proxy_sizes for n in config.data_sizes}

    # Best-of-n on the pool.
    start = time.perf_counter()
    bon = best_of_n_curves(bon_pool, {seeded: scores[seeded] for name in names for seeded in seeds[name]}, config.bon_max_n)
    seconds["best_of_n"] = time.perf_counter() - start
    gold0 = float(np.mean(bon_pool["gold"]))  # equal prompts, so this is E_init[gold]

    # RL: one vmapped program per proxy width (the mitigations run with their proxy's width).
    start = time.perf_counter()
    rl_raw = {}
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=run.console) as progress:
        bar = progress.add_task("RL", total=len(config.proxy_sizes) * config.rl_iterations)
        for size in config.proxy_sizes:
            members = rl_members(config, proxies, size)
            progress.update(bar, description=f"RL vs d{size} proxies ({len(members)} runs)")
            rl_raw.update(train_rl(config, setting, proxies[proxy_name(size, config.data_sizes[0])][0], members, run, progress, bar))
    seconds["rl"] = time.perf_counter() - start

    proxy0 = {name: float(np.mean(scores[name])) for name in scores}
    ensemble = [config.mitigation_proxy] + [f"{config.mitigation_proxy}_seed{s}" for s in range(1, config.ensemble_size)]
    ens_scores = np.stack([scores[name] for name in ensemble])
    proxy0["ensemble_mean_minus_std"] = float(np.mean(aggregate_ensemble(ens_scores, "mean_minus_std", config.ensemble_k)))
    proxy0["ensemble_min"] = float(np.mean(aggregate_ensemble(ens_scores, "min")))
    proxy0["kl_penalty"] = proxy0[config.mitigation_proxy]

    # Seed-0 names keep the keys they always had (bon, rl, gold_peak_d, ...); every seed's curves
    # are in curves and its summary in seeds.
    results = {
        "task": task.name, "task_args": list(config.task.args), "proxies": names, "proxy_info": proxy_info,
        "gold_initial": gold0, "bon": {}, "rl": {}, "gold_peak_d": {}, "gold_falls_while_proxy_rises": {},
        "curves": {"bon": bon, "rl": {}, "mitigations": {}}, "mitigations": {}, "num_seeds": config.num_seeds, "seeds": {},
    }
    for name in names:
        by_seed = {"proxies": seeds[name], "test_accuracy": [], "bon_gold_peak": [], "rl_gold_peak_d": [], "rl_gold_falls_while_proxy_rises": []}
        for seeded in seeds[name]:
            bon_fit = summarize_curve("bon", bon["d"], bon[seeded]["gold"], bon[seeded]["proxy"], config.falls_tolerance)
            curve = relative_rl_curve(rl_raw[seeded], gold0, proxy0[seeded])
            results["curves"]["rl"][seeded] = curve
            rl_fit = summarize_curve("rl", curve["d"], curve["gold"], curve["proxy"], config.falls_tolerance)
            if seeded == name:
                results["bon"][name], results["rl"][name] = bon_fit, rl_fit
            by_seed["test_accuracy"].append(proxy_info[seeded]["test_accuracy"])
            by_seed["bon_gold_peak"].append(bon_fit["gold_peak"])
            by_seed["rl_gold_peak_d"].append(rl_fit["gold_peak_d"])
            by_seed["rl_gold_falls_while_proxy_rises"].append(rl_fit["gold_falls_while_proxy_rises"])
        results["seeds"][name] = by_seed
        results["gold_peak_d"][name] = results["rl"][name]["gold_peak_d"]
        results["gold_falls_while_proxy_rises"][name] = results["rl"][name]["gold_falls_while_proxy_rises"]
    results["form_selection"] = select_forms(config, results)
    for mitigation in MITIGATIONS:
        source = config.mitigation_proxy if mitigation == "plain" else mitigation
        curve = relative_rl_curve(rl_raw[source], gold0, proxy0[source])
        results["curves"]["mitigations"][mitigation] = curve
        results["mitigations"][mitigation] = {
            "final_gold": curve["gold"][-1], "peak_gold": max(curve["gold"]), "final_kl": curve["kl"][-1],
            "final_proxy": curve["proxy"][-1],
        }
    results["mitigation_setting"] = {
        "proxy": config.mitigation_proxy, "ensemble_size": config.ensemble_size, "ensemble_k": config.ensemble_k, "kl_coef": config.kl_coef,
    }
    results["seconds"] = seconds
    print_tables(run, results)
    print_form_selection(run, results["form_selection"])
    plot(run.path_for("overoptimization.png"), results, config)
    return results


def gold_ordered_pairs(key, pool: dict, num: int = 20_000):
    """Random within-prompt pairs of the pool with different gold rewards, the better first
    (a held-out test of the proxies' pairwise accuracy against the gold order)."""
    a, b = (np.asarray(x) for x in jax.random.randint(key, (2, num), 0, len(pool["gold"])))
    keep = (pool["prompt_id"][a] == pool["prompt_id"][b]) & (pool["gold"][a] != pool["gold"][b])
    a, b = a[keep], b[keep]
    a_better = pool["gold"][a] > pool["gold"][b]
    return np.where(a_better, a, b), np.where(a_better, b, a)


# ---------------------------------------------------------------------------------------------
# Output


def print_tables(run: RunDir, results: dict) -> None:
    fmt = lambda x: "inf" if x is None else f"{x:.2f}"  # noqa: E731
    for form, title in (("bon", "best-of-n"), ("rl", "RL (RLOO, no KL penalty)")):
        table = Table(title=f"{title}: gold reward vs d = sqrt(KL), fit of Gao et al. (2022)")
        table.add_column("proxy", no_wrap=True)
        for column in ("test acc", "α", "β", "R²", "peak d fit/seen", "gold peak→end", "falls*"):
            table.add_column(column, justify="right")
        for name in results["proxies"]:
            f = results[form][name]
            table.add_row(
                name, f"{results['proxy_info'][name]['test_accuracy']:.3f}", f"{f['alpha']:.3f}", f"{f['beta']:.3f}",
                f"{f['r2']:.3f}", f"{fmt(f['fit_peak_d'])}/{f['gold_peak_d']:.2f}", f"{f['gold_peak']:.2f}→{f['gold_final']:.2f}",
                "yes" if f["gold_falls_while_proxy_rises"] else "no",
            )
        run.console.print(table)
    run.console.print("* the gold reward ends below its peak (by more than falls_tolerance) while the proxy rose past it")
    setting = results["mitigation_setting"]
    mitigations = Table(title=f"Mitigations on {setting['proxy']} (RL, same budget; ensemble of {setting['ensemble_size']}, k = {setting['ensemble_k']:g}, KL coef {setting['kl_coef']:g})")
    for column in ("run", "final gold", "peak gold", "final proxy", "final KL [nats]"):
        mitigations.add_column(column, justify="right")
    for mitigation, m in results["mitigations"].items():
        mitigations.add_row(mitigation, f"{m['final_gold']:.3f}", f"{m['peak_gold']:.3f}", f"{m['final_proxy']:.3f}", f"{m['final_kl']:.2f}")
    run.console.print(mitigations)


def print_form_selection(run: RunDir, section: dict) -> None:
    """One table per optimiser: each form's mean held-out (extrapolation) RMSE ± the half-width
    of its interval over seeds, the winner, the paired runner-up-minus-winner difference, and
    how often each form has the lowest BIC."""
    forms = list(section["forms"])
    short = {f: f.replace("_saturation", "_sat") for f in forms}
    pm = lambda m, lo, hi: "–" if m is None else f"{m:.3f}" + ("" if lo is None else f"±{(hi - lo) / 2:.3f}")  # noqa: E731
    for optimiser, title in (("bon", "best-of-n"), ("rl", "RL")):
        table = Table(title=(
            f"{title}: which form extrapolates? RMSE on held-out d > {section['d_fit_fraction']:.2f} max d, "
            f"mean ± {section['level']:.0%} t-interval over seeds"
        ))
        for column in ("proxy", "curves", *short.values(), "winner", "runner-up − winner", "BIC wins"):
            table.add_column(column, justify="left" if column in ("proxy", "winner") else "right", no_wrap=column == "proxy")
        cells = section[optimiser]
        rows = [*cells["proxies"].items(), *((f"{size} (all)", cell) for size, cell in cells["sizes"].items()), ("all", cells["all"])]
        for name, cell in rows:
            if "error" in cell:
                table.add_row(name, "0", *["–"] * len(forms), "none", cell["error"], "")
                continue
            held, paired = cell["held_out_rmse"], cell["paired"]
            difference = "" if paired["runner_up"] is None else (
                f"{pm(paired['mean'], paired['low'], paired['high'])} vs {short[paired['runner_up']]}"
                + (" decided" if paired["decided"] else "")
            )
            bic = " ".join(f"{short[f]}:{c}" for f, c in cell["bic_winner_counts"].items() if c)
            table.add_row(
                name, str(cell["num_seeds"]), *[pm(held[f]["mean"], held[f]["low"], held[f]["high"]) for f in forms],
                short.get(cell["winner"], "none"), difference, bic,
            )
        run.console.print(table)
    run.console.print(
        "forms: " + "; ".join(f"{name} = {eq}" for name, eq in section["forms"].items())
        + f". Each fitted on d <= {section['d_fit_fraction']:.2f} max d. 'decided': the paired interval of the runner-up's "
        "minus the winner's held-out RMSE excludes 0. BIC (fit on all points, Gaussian residuals) is in-sample; R² in the "
        "fit tables above is information only."
    )


def plot(path, results: dict, config: OveroptimizationConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(config.proxy_sizes)
    fig, axes = plt.subplots(2, len(sizes) + 1, figsize=(4.2 * (len(sizes) + 1), 8), squeeze=False)
    colours = plt.cm.viridis(np.linspace(0.0, 0.85, len(config.data_sizes)))
    bon = results["curves"]["bon"]
    for row, form in enumerate(("bon", "rl")):
        for col, size in enumerate(sizes):
            ax = axes[row, col]
            for colour, n in zip(colours, config.data_sizes):
                name = proxy_name(size, n)
                curve = bon[name] if form == "bon" else results["curves"]["rl"][name]
                d = np.asarray(bon["d"] if form == "bon" else curve["d"])
                fit = results[form][name]
                ax.plot(d, curve["gold"], "o-", color=colour, ms=3, label=f"gold, n={n}")
                ax.plot(d, curve["proxy"], ":", color=colour, label=f"proxy, n={n}")
                grid = np.linspace(0.0, d.max(), 100)
                ax.plot(grid, scaling.predict(form, grid, fit["alpha"], fit["beta"]), "--", color=colour, lw=1)
            ax.axhline(0.0, color="gray", lw=0.5)
            title = "best-of-n" if form == "bon" else "RL (RLOO, no KL penalty)"
            ax.set(xlabel="d = sqrt(KL) [nats^1/2]", ylabel="reward − initial", title=f"{title}: proxy d_model={size}")
            if col == 0:
                ax.legend(fontsize=7)
    ax = axes[0, -1]
    for colour_index, size in enumerate(sizes):
        for form, marker in (("bon", "o-"), ("rl", "s--")):
            alphas = [results[form][proxy_name(size, n)]["alpha"] for n in config.data_sizes]
            ax.plot(config.data_sizes, alphas, marker, color=plt.cm.tab10(colour_index), label=f"{form} α, d_model={size}")
    ax.set(xscale="log", xlabel="preference pairs", ylabel="fitted α (gold)", title="fitted α vs data (solid bon, dashed RL)")
    ax.set_xticks(config.data_sizes, [str(n) for n in config.data_sizes], minor=False)
    ax.minorticks_off()
    ax.legend(fontsize=7)
    ax = axes[1, -1]
    for mitigation, curve in results["curves"]["mitigations"].items():
        line = ax.plot(curve["d"], curve["gold"], "o-", ms=3, label=f"{mitigation} gold")[0]
        ax.plot(curve["d"], curve["proxy"], ":", color=line.get_color())
    ax.axhline(0.0, color="gray", lw=0.5)
    ax.set(xlabel="d = sqrt(KL)", ylabel="reward − initial", title=f"mitigations on {results['mitigation_setting']['proxy']} (dotted: proxy)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
