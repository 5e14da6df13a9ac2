"""Write ``docs/results.md``: every experiment's command, runtime, key table, plot and published
comparison, read from the run folders under ``runs/``.

    python scripts/make_results_page.py [--runs runs] [--out docs/results.md]

Each experiment was run as ``jirl run NAME --out runs/FOLDER [--set ...]``, which writes
``results.json`` (the numbers), ``run.json`` (``experiment``, ``overrides``, ``elapsed_seconds``)
and a plot. The page shows, per run, the command rebuilt from ``run.json``, the measured runtime,
tables rendered from ``results.json`` and the plot (copied to ``figures/`` next to the page).
Every number on the page comes from those files; the published side of each comparison is text
(what the paper reports). A run folder without ``results.json`` is rendered as "not run yet"
with its command and no numbers; a key missing from a ``results.json`` shows as a visible
"missing" marker instead of a crash.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# Reading results without crashing on a missing key


@dataclasses.dataclass(frozen=True)
class Missing:
    """A key path that is not in a results file; renders as a visible marker."""

    path: tuple

    def __str__(self) -> str:
        return "⚠ missing `" + ".".join(str(p) for p in self.path) + "`"


def dig(data: Any, *path) -> Any:
    """``data[path[0]][path[1]]...``, or ``Missing(path)`` where any step is absent."""
    for key in path:
        in_dict = isinstance(data, dict) and key in data
        in_list = isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data)
        if in_dict or in_list:
            data = data[key]
        else:
            return Missing(path)
    return data


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def num(x: Any, digits: int = 3) -> str:
    """A number at ``digits`` decimals (integers with thousands separators); markers otherwise."""
    if isinstance(x, Missing):
        return str(x)
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if not is_number(x):
        return f"⚠ not a number `{x!r}`"
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}f}"


def pm(cell: Any, digits: int = 3) -> str:
    """``mean ± std`` of a ``{"mean", "std"}`` cell."""
    if isinstance(cell, Missing):
        return str(cell)
    return f"{num(dig(cell, 'mean'), digits)} ± {num(dig(cell, 'std'), digits)}"


def keys_of(data: Any) -> list:
    return list(data) if isinstance(data, dict) else []


def code(x: Any) -> str:
    """``x`` as inline code, or the missing-key marker as it is."""
    return str(x) if isinstance(x, Missing) else f"`{x}`"


def table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def short(text: Any, limit: int = 220) -> str:
    """One line of free text (model replies) at most ``limit`` characters, safe inside markdown."""
    text = " ".join(str(text).split()).replace("<", "&lt;").replace(">", "&gt;")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def span(values: list) -> str:
    """``min–max`` of the numbers among ``values``."""
    numbers = [v for v in values if is_number(v) and math.isfinite(v)]
    return f"{num(min(numbers))}–{num(max(numbers))}" if numbers else "⚠ no values"


# ---------------------------------------------------------------------------------------------
# Renderers: results dict -> markdown (tables), headline, measured side of the comparison


def render_oracle(r: dict) -> str:
    rows = [
        [num(dig(row, "beta"), 4), num(dig(row, "expected_reward"), 4), num(dig(row, "kl_to_reference"), 4), num(dig(row, "objective"), 4)]
        for row in (dig(r, "frontier") if isinstance(dig(r, "frontier"), list) else [])
    ] or [[str(dig(r, "frontier"))] * 4]
    frontier = table(["β", "E[R] of π*_β", "KL(π*_β ‖ π_ref)", "J = E[R] − β KL"], rows)
    facts = table(
        ["task", "reference", "E[R] of the reference", "E[R] as β → 0", "demonstrations at β", "demo mean reward (Monte Carlo)", "exact E[R] at that β"],
        [[str(dig(r, "task")), str(dig(r, "reference")), num(dig(r, "reference_reward"), 4), num(dig(r, "max_reward"), 4),
          num(dig(r, "demo_beta"), 3), num(dig(r, "demo_mean_reward"), 4), num(dig(r, "demo_exact_reward"), 4)]],
    )
    return frontier + "\n\n" + facts


def headline_oracle(r: dict) -> str:
    return f"E[R]: reference {num(dig(r, 'reference_reward'))} → β→0 limit {num(dig(r, 'max_reward'))}"


def measured_oracle(runs: dict) -> str:
    r = runs["oracle"] if "oracle" in runs else next(iter(runs.values()))
    mean, exact = dig(r, "demo_mean_reward"), dig(r, "demo_exact_reward")
    diff = num(mean - exact, 4) if is_number(mean) and is_number(exact) else "⚠ n/a"
    frontier = dig(r, "frontier")
    rewards = [dig(row, "expected_reward") for row in frontier] if isinstance(frontier, list) else []
    monotone = all(is_number(a) and is_number(b) and a >= b - 1e-6 for a, b in pairwise(rewards))
    return (
        f"Demonstrations sampled from π* at β = {num(dig(r, 'demo_beta'), 3)}: Monte-Carlo mean reward "
        f"{num(mean, 4)} vs exact {num(exact, 4)} (difference {diff}). E[R] of π*_β "
        f"{'falls monotonically' if monotone and rewards else '**does not fall monotonically**'} as β grows, "
        f"from {num(dig(r, 'max_reward'), 4)} towards the reference's {num(dig(r, 'reference_reward'), 4)}."
    )


def render_quickstart(r: dict) -> str:
    rows = [
        ["expert π*", num(dig(r, "gold_reward", "expert"), 4), "0"],
        ["SFT policy", num(dig(r, "gold_reward", "sft_policy"), 4), num(dig(r, "kl_expert_policy"), 4)],
        [f"IRL policy ({dig(r, 'irl', 'method')} reward, {num(dig(r, 'irl', 'rl_iterations'))} RL iterations)",
         num(dig(r, "irl", "policy", "gold_reward"), 4), num(dig(r, "irl", "policy", "kl_expert_policy"), 4)],
        ["exact optimum of the learned reward", num(dig(r, "irl", "reward_optimum", "gold_reward"), 4),
         num(dig(r, "irl", "reward_optimum", "kl_expert_policy"), 4)],
        ["untrained reference", num(dig(r, "gold_reward", "reference"), 4), num(dig(r, "kl_expert_reference"), 4)],
    ]
    note = (
        f"Task {code(dig(r, 'task'))}, expert β = {num(dig(r, 'expert_beta'), 2)}, {num(dig(r, 'num_demos'))} demonstrations, "
        f"{num(dig(r, 'steps'))} SFT steps; discriminator accuracy {num(dig(r, 'irl', 'discriminator_accuracy'))}."
    )
    return table(["policy", "gold reward E[R]", "KL(expert ‖ policy) [nats]"], rows) + "\n\n" + note


def headline_quickstart(r: dict) -> str:
    return (
        f"KL(expert ‖ SFT) {num(dig(r, 'kl_expert_policy'))}; gold reward SFT {num(dig(r, 'gold_reward', 'sft_policy'))} "
        f"→ IRL {num(dig(r, 'irl', 'policy', 'gold_reward'))} (expert {num(dig(r, 'gold_reward', 'expert'))})"
    )


def measured_quickstart(runs: dict) -> str:
    r = next(iter(runs.values()))
    sft, irl = dig(r, "gold_reward", "sft_policy"), dig(r, "irl", "policy", "gold_reward")
    kl_sft, kl_irl = dig(r, "kl_expert_policy"), dig(r, "irl", "policy", "kl_expert_policy")
    kl_opt = dig(r, "irl", "reward_optimum", "kl_expert_policy")
    better = "beats" if is_number(sft) and is_number(irl) and irl > sft else "does **not** beat"
    closer = "gets closer to" if is_number(kl_sft) and is_number(kl_irl) and kl_irl < kl_sft else "does **not** get closer to"
    text = (
        f"The policy trained against the learned reward {better} the SFT policy on gold reward ({num(irl, 4)} vs "
        f"{num(sft, 4)}) and {closer} the expert in KL ({num(kl_irl, 4)} vs {num(kl_sft, 4)} nats); the learned "
        f"reward's exact optimum is at KL {num(kl_opt, 4)} from the expert"
    )
    if is_number(kl_opt) and is_number(kl_irl) and kl_opt >= kl_irl:
        text += ", so perfect RL on this reward would not close the gap either: the remaining error is the reward's"
    return text + "."


def noise_levels(r: dict) -> list:
    return keys_of(dig(r, "accuracy", keys_of(dig(r, "accuracy"))[0])) if keys_of(dig(r, "accuracy")) else []


def render_rm_noise(r: dict) -> str:
    methods = dig(r, "methods") if isinstance(dig(r, "methods"), list) else keys_of(dig(r, "accuracy"))
    synthetic = "bon_gain" in r
    header = ["method", "flip rate", "HH held-out accuracy"]
    if synthetic:
        header = ["method", "flip rate", "synthetic accuracy", "HH held-out accuracy", "best-of-N gold gain"]
    rows = []
    for method in methods:
        for noise in keys_of(dig(r, "accuracy", method)):
            hh = pm(dig(r, "accuracy", method, noise, "hh"))
            if synthetic:
                rows.append([method, noise, pm(dig(r, "accuracy", method, noise, "synthetic")), hh, pm(dig(r, "bon_gain", method, noise))])
            else:
                rows.append([method, noise, hh])
    out = table(header, rows or [["⚠ missing `accuracy`"] + [""] * (len(header) - 1)])
    hh = dig(r, "hh")
    notes = [
        f"HH-RLHF harmless: {num(dig(hh, 'train'))} training / {num(dig(hh, 'test'))} held-out pairs "
        f"({num(dig(hh, 'kept'))} kept), embeddings from the {code(dig(hh, 'backbone') if 'backbone' in hh else 'transformer')} backbone."
        if isinstance(hh, dict) else str(hh)
    ]
    if synthetic:
        notes.append(
            f"Synthetic: task {code(dig(r, 'synthetic', 'task'))}, best-of-{num(dig(r, 'synthetic', 'best_of_n'))}; selecting by the "
            f"gold reward itself gains {num(dig(r, 'bon_gain_oracle'))}."
        )
    return out + "\n\n" + " ".join(notes)


def headline_rm_noise(r: dict) -> str:
    levels = noise_levels(r)
    if not levels:
        return str(dig(r, "accuracy"))
    part = "synthetic" if "bon_gain" in r else "hh"
    noise = levels[-1] if part == "synthetic" else levels[0]
    return (
        f"{'synthetic' if part == 'synthetic' else 'HH'} accuracy at flip rate {noise}: BT {num(dig(r, 'accuracy', 'bt', noise, part, 'mean'))}, "
        f"classification {num(dig(r, 'accuracy', 'classification', noise, part, 'mean'))}"
    )


def compare_cells(a: Any, b: Any) -> str:
    """Whether two ``{mean, std}`` cells differ by more than the larger std."""
    ma, sa, mb, sb = dig(a, "mean"), dig(a, "std"), dig(b, "mean"), dig(b, "std")
    if not all(is_number(x) for x in (ma, sa, mb, sb)):
        return "⚠ cannot compare"
    return "within one std of each other" if abs(ma - mb) <= max(sa, sb) else "more than one std apart"


def measured_rm_noise(runs: dict) -> str:
    parts = []
    if "rm_noise" in runs:
        r = runs["rm_noise"]
        levels = noise_levels(r)
        if levels:
            top = levels[-1]
            bt, cls = dig(r, "accuracy", "bt", top, "synthetic"), dig(r, "accuracy", "classification", top, "synthetic")
            bt_hh, cls_hh = dig(r, "accuracy", "bt", top, "hh"), dig(r, "accuracy", "classification", top, "hh")
            parts.append(
                f"At flip rate {top}, synthetic accuracy: classification {pm(cls)} vs BT {pm(bt)} ({compare_cells(cls, bt)}); "
                f"HH: {pm(cls_hh)} vs {pm(bt_hh)} ({compare_cells(cls_hh, bt_hh)}). Hinge at flip rate {top}: "
                f"{pm(dig(r, 'accuracy', 'hinge', top, 'synthetic'))} (synthetic)."
            )
            if compare_cells(cls, bt) == compare_cells(cls_hh, bt_hh) == "within one std of each other":
                parts.append("So the reported robustness advantage of the classification model is **not** reproduced here.")
            elif is_number(dig(cls, "mean")) and is_number(dig(bt, "mean")) and dig(cls, "mean") > dig(bt, "mean"):
                parts.append("The classification model is ahead of BT at the highest noise, in the direction reported.")
    if "rm_noise_minilm" in runs:
        r = runs["rm_noise_minilm"]
        levels = noise_levels(r)
        if levels:
            clean = levels[0]
            parts.append(
                f"With the pretrained MiniLM encoder (flip rate {clean}) HH accuracy is BT {pm(dig(r, 'accuracy', 'bt', clean, 'hh'))}, "
                f"classification {pm(dig(r, 'accuracy', 'classification', clean, 'hh'))}."
            )
    return " ".join(parts) or "⚠ no runs"


RL_ORACLE_TASK = {"rl_oracle_bigram": "bigram", "rl_oracle_sort": "sort", "rl_oracle_gold_rm": "gold_rm"}


def render_rl_oracle(r: dict) -> str:
    rows = [
        [name, num(dig(a, "gap_fraction"), 4), num(dig(a, "kl_to_optimal"), 4), num(dig(a, "steps"))]
        for name, a in (dig(r, "algorithms") if isinstance(dig(r, "algorithms"), dict) else {}).items()
    ] or [[str(dig(r, "algorithms")), "", "", ""]]
    out = table(["algorithm", "gap fraction (J* − J)/(J* − J_ref)", "KL(π ‖ π*) [nats]", "iterations"], rows)
    return out + (
        f"\n\nTask {code(dig(r, 'task'))}, β = {num(dig(r, 'beta'), 2)}; the exact optimum π* has E[R] "
        f"{num(dig(r, 'optimum', 'expected_reward'), 4)} and KL(π* ‖ π_ref) {num(dig(r, 'optimum', 'kl_to_reference'), 4)}."
    )


def headline_rl_oracle(r: dict) -> str:
    algos = dig(r, "algorithms")
    gaps = {k: dig(v, "gap_fraction") for k, v in algos.items()} if isinstance(algos, dict) else {}
    gaps = {k: v for k, v in gaps.items() if is_number(v)}
    if not gaps:
        return f"⚠ no gap fractions ({algos})"
    worst = max(gaps, key=gaps.get)
    best = min(gaps, key=gaps.get)
    return f"{code(dig(r, 'task'))} final gap: best {best} {num(gaps[best], 4)}, worst {worst} {num(gaps[worst], 4)}"


def measured_rl_oracle(runs: dict) -> str:
    parts = []
    for r in runs.values():
        algos = dig(r, "algorithms") if isinstance(dig(r, "algorithms"), dict) else {}
        if not algos:
            parts.append(f"{code(dig(r, 'task'))}: {dig(r, 'algorithms')}")
            continue
        far = [f"{k} ({num(dig(v, 'gap_fraction'), 3)})" for k, v in algos.items() if not (is_number(dig(v, "gap_fraction")) and dig(v, "gap_fraction") <= 0.05)]
        parts.append(f"{code(dig(r, 'task'))}: " + (f"gap > 0.05 for {', '.join(far)}" if far else "every algorithm within gap 0.05 of π*"))
    text = "; ".join(parts) + "."
    pairs = [
        f"{code(dig(r, 'task'))} {num(dig(r, 'algorithms', 'rloo', 'gap_fraction'), 4)} vs {num(dig(r, 'algorithms', 'ppo', 'gap_fraction'), 4)}"
        for r in runs.values() if {"rloo", "ppo"} <= set(keys_of(dig(r, "algorithms")))
    ]
    if pairs:
        text += " Final gap, RLOO vs PPO: " + "; ".join(pairs) + "."
    sort = runs.get("rl_oracle_sort")
    grpo, dr_grpo = dig(sort, "algorithms", "grpo", "gap_fraction"), dig(sort, "algorithms", "dr_grpo", "gap_fraction")
    if is_number(grpo) and is_number(dr_grpo) and grpo > 0.05 >= dr_grpo:
        text += (
            f" On sparse `sort`, GRPO ends at gap {num(dig(sort, 'algorithms', 'grpo', 'gap_fraction'), 4)} while Dr. GRPO "
            f"(the same estimator without dividing by the group std) reaches {num(dig(sort, 'algorithms', 'dr_grpo', 'gap_fraction'), 4)}: "
            "in an all-fail group the returns differ only by the KL penalty, and the std division inflates that to unit-size "
            "advantages that pull the policy back to the reference."
        )
    return text


def render_dpo_oracle(r: dict) -> str:
    def row(label, d):
        return [label, num(dig(d, "kl_to_optimal")), num(dig(d, "gold_reward")), num(dig(d, "kl_to_reference"))]

    rows = [row("π* (exact)", dig(r, "optimum")), row("reference", dig(r, "reference"))]
    rows += [row(name, d) for name, d in (dig(r, "losses") if isinstance(dig(r, "losses"), dict) else {}).items()]
    curve = dig(r, "data_curve")
    rows += [row(f"dpo, {num(dig(p, 'num_pairs'))} pairs", p) for p in (curve if isinstance(curve, list) else [])]
    online = dig(r, "online")
    rows.append(row(f"online dpo, {num(dig(online, 'iterations'))} iterations", online))
    out = table(["policy", "KL(π ‖ π*)", "gold reward", "KL(π ‖ π_ref)"], rows)
    return out + (
        f"\n\nTask {code(dig(r, 'task'))}, β = {num(dig(r, 'beta'), 2)}, {num(dig(r, 'num_pairs'))} pairs, "
        f"{num(dig(r, 'steps'))} steps (offline losses)."
    )


def headline_dpo_oracle(r: dict) -> str:
    curve = dig(r, "data_curve")
    if isinstance(curve, list) and curve:
        first, last = curve[0], curve[-1]
        return (
            f"DPO KL(π ‖ π*) {num(dig(first, 'kl_to_optimal'))} → {num(dig(last, 'kl_to_optimal'))} "
            f"from {num(dig(first, 'num_pairs'))} to {num(dig(last, 'num_pairs'))} pairs"
        )
    return f"DPO KL(π ‖ π*) {num(dig(r, 'losses', 'dpo', 'kl_to_optimal'))}"


def measured_dpo_oracle(runs: dict) -> str:
    r = next(iter(runs.values()))
    curve = dig(r, "data_curve") if isinstance(dig(r, "data_curve"), list) else []
    kls = [dig(p, "kl_to_optimal") for p in curve]
    steps = " → ".join(f"{num(dig(p, 'kl_to_optimal'))} ({num(dig(p, 'num_pairs'))} pairs)" for p in curve) or str(dig(r, "data_curve"))
    shrinks = len(kls) > 1 and all(is_number(a) and is_number(b) and b < a for a, b in pairwise(kls))
    ipo, target = dig(r, "losses", "ipo", "kl_to_reference"), dig(r, "optimum", "kl_to_reference")
    ipo_less = is_number(ipo) and is_number(target) and ipo < target
    return (
        f"DPO's KL(π ‖ π*) against the number of pairs: {steps}"
        + ("; it shrinks with data, so the remaining error is finite data. " if shrinks else " (**not** monotone in the data). ")
        + f"IPO's KL(π ‖ π_ref) is {num(ipo)} against π*'s {num(target)}"
        + (", i.e. it moves less, as its bounded target predicts. " if ipo_less else ". ")
        + f"KL(π ‖ π_ref) of robust DPO {num(dig(r, 'losses', 'robust_dpo', 'kl_to_reference'))} and cDPO "
        f"{num(dig(r, 'losses', 'cdpo', 'kl_to_reference'))} (their noise corrections applied to clean labels). "
        f"Online DPO: KL(π ‖ π*) {num(dig(r, 'online', 'kl_to_optimal'))}."
    )


IRL_TASKS = ("bigram", "gold_rm", "sort")


def render_irl_recovery(r: dict) -> str:
    methods = dig(r, "methods") if isinstance(dig(r, "methods"), dict) else {}
    tasks = [t for t in IRL_TASKS if any(t in keys_of(m) for m in methods.values())] or list(IRL_TASKS)

    def cell(m, task):
        parts = [num(dig(m, task, "gold_reward_fraction")), num(dig(m, task, "kl_to_expert"))]
        if "reward_correlation" in keys_of(dig(m, task)):
            parts.append(num(dig(m, task, "reward_correlation")))
        return " / ".join(parts)

    rows = [[name] + [cell(m, t) for t in tasks] for name, m in methods.items()] or [[str(dig(r, "methods"))] + [""] * len(tasks)]
    out = table(["method"] + tasks, rows)
    return out + (
        f"\n\nCells: gold-reward fraction / KL(π_E ‖ π) / per-token correlation with the true reward after removing shaping "
        f"(where measured). Expert β = {num(dig(r, 'expert_beta'), 2)}, {num(dig(r, 'num_demos'))} demonstrations per task."
    )


def headline_irl_recovery(r: dict) -> str:
    methods = dig(r, "methods") if isinstance(dig(r, "methods"), dict) else {}
    sort = {k: dig(m, "sort", "gold_reward_fraction") for k, m in methods.items()}
    sort = {k: v for k, v in sort.items() if is_number(v)}
    best = max(sort, key=sort.get) if sort else None
    text = f"AIRL reward correlation {num(dig(r, 'methods', 'airl', 'bigram', 'reward_correlation'))} (bigram)"
    return text + (f"; best on sort: {best} {num(sort[best])}" if best else "")


def measured_irl_recovery(runs: dict) -> str:
    r = next(iter(runs.values()))
    m = lambda *p: num(dig(r, "methods", *p))
    methods = dig(r, "methods") if isinstance(dig(r, "methods"), dict) else {}
    mean_fraction = {
        name: sum(vals) / len(vals)
        for name, vals in ((k, [dig(v, t, "gold_reward_fraction") for t in IRL_TASKS]) for k, v in methods.items())
        if vals and all(is_number(x) for x in vals)
    }
    weakest = min(mean_fraction, key=mean_fraction.get) if mean_fraction else "⚠ none"
    return (
        f"Per-token correlation with the true reward on `bigram` after removing shaping: AIRL {m('airl', 'bigram', 'reward_correlation')}, "
        f"MaxEnt {m('maxent', 'bigram', 'reward_correlation')}, IQ-Learn {m('iq_learn', 'bigram', 'reward_correlation')}; the "
        f"residual learners, AfD `sft_demo` {m('afd_sft_demo', 'bigram', 'reward_correlation')} and SPIN "
        f"{m('spin', 'bigram', 'reward_correlation')}, learn the gap between SFT and expert rather than the reward. "
        f"Weakest policy over the three tasks: {weakest} (GAIL: {m('gail', 'bigram', 'gold_reward_fraction')} / "
        f"{m('gail', 'gold_rm', 'gold_reward_fraction')} / {m('gail', 'sort', 'gold_reward_fraction')}). On sparse `sort`: "
        f"IQ-Learn {m('iq_learn', 'sort', 'gold_reward_fraction')}, AIRL {m('airl', 'sort', 'gold_reward_fraction')}, "
        f"SFT {m('sft', 'sort', 'gold_reward_fraction')}."
    )


def render_credit_horizon(r: dict) -> str:
    horizons = [str(h) for h in dig(r, "horizons")] if isinstance(dig(r, "horizons"), list) else []
    schemes = dig(r, "schemes") if isinstance(dig(r, "schemes"), list) else keys_of(dig(r, "gold_fraction"))
    header = ["scheme"] + [f"H = {h}" for h in horizons]
    final = table(header, [[s] + [pm(dig(r, "gold_fraction", s, h), 2) for h in horizons] for s in schemes])
    auc = table(
        header,
        [[s] + [f"{num(dig(r, 'gold_auc', s, h, 'mean'), 2)} / {num(dig(r, 'credit_correlation', s, h, 'mean'), 2)}" for h in horizons]
         for s in schemes],
    )
    seconds = dig(r, "seconds")
    timing = ", ".join(f"H = {h}: {num(dig(seconds, h), 0)} s" for h in horizons)
    return (
        f"Gold fraction of the final policy, (E[R] − E_ref[R]) / (R_max − E_ref[R]), mean ± std over {num(dig(r, 'seeds'))} seeds:\n\n"
        f"{final}\n\nSample efficiency (mean gold fraction of the training samples) / Pearson correlation of the scheme's "
        f"token credit with the true per-token reward:\n\n{auc}\n\nTime per horizon: {timing}."
    )


def headline_credit_horizon(r: dict) -> str:
    horizons = [str(h) for h in dig(r, "horizons")] if isinstance(dig(r, "horizons"), list) else []
    if not horizons:
        return str(dig(r, "horizons"))
    h = horizons[-1]
    cells = {s: dig(r, "gold_fraction", s, h, "mean") for s in keys_of(dig(r, "gold_fraction"))}
    cells = {s: v for s, v in cells.items() if is_number(v)}
    best = max(cells, key=cells.get) if cells else "⚠"
    return f"gold fraction at H = {h}: terminal {pm(dig(r, 'gold_fraction', 'terminal', h), 2)}, best {best} {pm(dig(r, 'gold_fraction', best, h), 2)}"


def measured_credit_horizon(runs: dict) -> str:
    r = next(iter(runs.values()))
    horizons = [str(h) for h in dig(r, "horizons")] if isinstance(dig(r, "horizons"), list) else []
    if len(horizons) < 2:
        return f"⚠ horizons: {dig(r, 'horizons')}"
    lo, hi = horizons[0], horizons[-1]
    term_lo, term_hi = dig(r, "gold_fraction", "terminal", lo), dig(r, "gold_fraction", "terminal", hi)
    drop = "does **not** fall by more than one std" if compare_cells(term_lo, term_hi) == "within one std of each other" else "changes by more than one std"
    abc_corr = dig(r, "credit_correlation", "abc", hi, "mean")
    text = (
        f"Terminal-only reward {drop} with length here: gold fraction {pm(term_lo, 2)} at H = {lo}, {pm(term_hi, 2)} at H = {hi} "
        f"(sample efficiency {num(dig(r, 'gold_auc', 'terminal', lo, 'mean'), 2)} → {num(dig(r, 'gold_auc', 'terminal', hi, 'mean'), 2)}). "
        f"ABC: {pm(dig(r, 'gold_fraction', 'abc', lo), 2)} → {pm(dig(r, 'gold_fraction', 'abc', hi), 2)}; its attention credit "
        f"correlates {num(dig(r, 'credit_correlation', 'abc', lo, 'mean'), 2)} → {num(abc_corr, 2)} with the true per-token reward "
        f"(potential shaping: {num(dig(r, 'credit_correlation', 'shaping', lo, 'mean'), 2)} → "
        f"{num(dig(r, 'credit_correlation', 'shaping', hi, 'mean'), 2)})."
    )
    if is_number(abc_corr) and abs(abc_corr) < 0.1:
        text += (
            " The attention of a small reward model regressing a sum of bigram scores carries little credit, unlike "
            "Chan et al.'s pretrained sentiment classifier."
        )
    return text


def render_overoptimization(r: dict) -> str:
    proxies = dig(r, "proxies") if isinstance(dig(r, "proxies"), list) else keys_of(dig(r, "rl"))
    rows = []
    for name in proxies:
        rows.append([
            name, num(dig(r, "proxy_info", name, "test_accuracy")),
            num(dig(r, "bon", name, "alpha")), num(dig(r, "bon", name, "beta")), num(dig(r, "bon", name, "r2")),
            num(dig(r, "rl", name, "alpha")), num(dig(r, "rl", name, "beta")), num(dig(r, "rl", name, "r2")),
            num(dig(r, "gold_peak_d", name), 2), num(dig(r, "gold_falls_while_proxy_rises", name)),
        ])
    fits = table(
        ["proxy", "test accuracy", "BoN α", "BoN β", "BoN R²", "RL α", "RL β", "RL R²", "RL gold peak at d", "RL gold falls while proxy rises"],
        rows or [[str(dig(r, "proxies"))] + [""] * 9],
    )
    mitigations = dig(r, "mitigations")
    mrows = [
        [name, num(dig(m, "final_gold")), num(dig(m, "peak_gold")), num(dig(m, "final_proxy")), num(dig(m, "final_kl"), 2)]
        for name, m in (mitigations.items() if isinstance(mitigations, dict) else [])
    ] or [[str(mitigations), "", "", "", ""]]
    setting = dig(r, "mitigation_setting")
    return (
        f"Fits of the gold reward (relative to the initial policy) against d = sqrt(KL): BoN d(α − βd), RL d(α − β log d). "
        f"Proxies are named d{{width}}_n{{pairs}}.\n\n{fits}\n\n"
        f"Mitigations on {code(dig(setting, 'proxy'))} (same RL budget; ensemble of {num(dig(setting, 'ensemble_size'))}, "
        f"k = {num(dig(setting, 'ensemble_k'), 2)}, KL coefficient {num(dig(setting, 'kl_coef'), 3)}):\n\n"
        + table(["run", "final gold", "peak gold", "final proxy", "final KL [nats]"], mrows)
    )


def headline_overoptimization(r: dict) -> str:
    falls = dig(r, "gold_falls_while_proxy_rises")
    if not isinstance(falls, dict):
        return str(falls)
    r2 = [dig(v, "r2") for v in dig(r, "rl").values()] if isinstance(dig(r, "rl"), dict) else []
    return f"RL gold falls while proxy rises for {sum(bool(v) for v in falls.values())} of {len(falls)} proxies; RL fit R² {span(r2)}"


def measured_overoptimization(runs: dict) -> str:
    r = next(iter(runs.values()))
    bon, rl = dig(r, "bon"), dig(r, "rl")
    bon_r2 = [dig(v, "r2") for v in bon.values()] if isinstance(bon, dict) else []
    rl_r2 = [dig(v, "r2") for v in rl.values()] if isinstance(rl, dict) else []
    # alpha against data, per proxy width: does the largest data size give a larger alpha than the smallest?
    info = dig(r, "proxy_info")
    by_width: dict = {}
    for name in (dig(r, "proxies") if isinstance(dig(r, "proxies"), list) else []):
        width, pairs = dig(info, name, "d_model"), dig(info, name, "pairs")
        if is_number(width) and is_number(pairs):
            by_width.setdefault(width, []).append((pairs, dig(rl, name, "alpha")))
    grows = [w for w, pts in by_width.items() if len(pts) > 1 and all(is_number(a) for _, a in pts) and max(pts)[1] > min(pts)[1]]
    falls = dig(r, "gold_falls_while_proxy_rises")
    falls_text = (
        f"for {sum(bool(v) for v in falls.values())} of {len(falls)} proxies" if isinstance(falls, dict) else f"({falls})"
    )
    m = dig(r, "mitigations")
    mit = ", ".join(f"{k} {num(dig(v, 'final_gold'))}" for k, v in m.items()) if isinstance(m, dict) else str(m)
    return (
        f"R² of the fits: best-of-n {span(bon_r2)}, RL {span(rl_r2)}. Under RL the gold reward peaks and falls while the proxy "
        f"keeps rising {falls_text}. RL α is larger with the most data than with the least for {len(grows)} of "
        f"{len(by_width)} proxy widths{'' if by_width else ' (⚠ no `proxies` / `proxy_info`)'}. Final gold reward (relative to the initial policy) by "
        f"mitigation: {mit}."
    )


def render_hh_rlhf(r: dict) -> str:
    rm = dig(r, "reward_model")
    rm_table = table(
        ["reward model", "train pairs", "held-out pairs", "train accuracy", "held-out accuracy"],
        [["BT head on all-MiniLM-L6-v2", num(dig(rm, "train_pairs")), num(dig(rm, "test_pairs")), num(dig(rm, "train_accuracy")), num(dig(rm, "test_accuracy"))]],
    )
    policy = table(
        ["policy", "reward-model score (sampled replies)", "reply length [tokens]", "KL(π ‖ π_ref) [nats]"],
        [[name, num(dig(r, name, "score")), num(dig(r, name, "length"), 1), num(dig(r, name, "kl"))] for name in ("before", "after")],
    )
    scores = dig(r, "curves", "score")
    steps = len(scores) if isinstance(scores, list) else scores
    timing = f"{num(steps)} RLOO steps at {num(dig(r, 'seconds_per_step'), 1)} s per step."
    samples = dig(r, "samples")
    before = dig(samples, "before") if isinstance(dig(samples, "before"), list) else []
    after = dig(samples, "after") if isinstance(dig(samples, "after"), list) else []
    sample_rows = [
        [short(dig(b, "prompt"), 120), f"{short(dig(b, 'reply'))} ({num(dig(b, 'score'), 2)})", f"{short(dig(a, 'reply'))} ({num(dig(a, 'score'), 2)})"]
        for b, a in zip(before, after)
    ]
    out = f"{rm_table}\n\n{policy}\n\n{timing}"
    if sample_rows:
        out += "\n\nGreedy replies to held-out prompts (reward-model score in brackets):\n\n" + table(["prompt", "before", "after"], sample_rows)
    else:
        out += f"\n\nSamples: {samples if isinstance(samples, Missing) else '⚠ none'}"
    return out


def headline_hh_rlhf(r: dict) -> str:
    return (
        f"RM score {num(dig(r, 'before', 'score'))} → {num(dig(r, 'after', 'score'))} at KL {num(dig(r, 'after', 'kl'))}; "
        f"RM held-out accuracy {num(dig(r, 'reward_model', 'test_accuracy'))}"
    )


def measured_hh_rlhf(runs: dict) -> str:
    r = next(iter(runs.values()))
    b, a = dig(r, "before", "score"), dig(r, "after", "score")
    moved = "rises" if is_number(a) and is_number(b) and a > b else "does **not** rise"
    return (
        f"The reward-model score of sampled replies {moved} from {num(b)} to {num(a)} (standardised units) at a final KL of "
        f"{num(dig(r, 'after', 'kl'))} nats; reply length {num(dig(r, 'before', 'length'), 1)} → {num(dig(r, 'after', 'length'), 1)} tokens. "
        f"The reward model itself reaches {num(dig(r, 'reward_model', 'test_accuracy'))} held-out accuracy on "
        f"{num(dig(r, 'reward_model', 'test_pairs'))} pairs. Whether the higher score means more harmless replies is judged "
        "only by that reward model; no human or gold evaluation."
    )


# ---------------------------------------------------------------------------------------------
# The sections


@dataclasses.dataclass(frozen=True)
class RunSpec:
    folder: str
    overrides: tuple[str, ...] = ()  # the command's --set, used when run.json is absent
    caption: str = ""


@dataclasses.dataclass(frozen=True)
class Section:
    experiment: str
    title: str
    about: str
    runs: tuple[RunSpec, ...]
    figure: str  # the plot the experiment writes into its run folder
    render: Callable[[dict], str]
    headline: Callable[[dict], str]
    measured: Callable[[dict], str]  # {folder: results} of the runs present -> the measured side
    published: str  # what the published work reports
    published_short: str  # for the summary table


SECTIONS: tuple[Section, ...] = (
    Section(
        "oracle", "Exact reward/KL frontier",
        "The exact oracle solves π*_β ∝ π_ref exp(R/β) on a task's token tree for a sweep of β and samples expert "
        "demonstrations from π* at `demo_beta`; this is the reference every other experiment is measured against.",
        (RunSpec("oracle"),), "frontier.png",
        render_oracle, headline_oracle, measured_oracle,
        "The closed form of the KL-regularised optimum, π*(y|x) ∝ π_ref(y|x) exp(R(x,y)/β) (Ziebart 2010; Korbak et al. "
        "2022; Rafailov et al. 2023). There is no empirical number to reproduce: the check is that Monte-Carlo "
        "samples of π* agree with the exact expectation and that E[R] trades off against KL monotonically in β.",
        "closed form π* ∝ π_ref exp(R/β) (Rafailov et al. 2023); internal Monte-Carlo check",
    ),
    Section(
        "quickstart", "Quickstart: demonstrations → reward → RL",
        "Demonstrations from the exact optimum of a task → SFT of a small GPT-2-family policy → a reward learned from "
        "the demonstrations (AfD by default) → RLOO against it; every policy scored exactly by the oracle.",
        (RunSpec("quickstart"),), "training.png",
        render_quickstart, headline_quickstart, measured_quickstart,
        "Sun & van der Schaar (2024, \"Inverse-RLignment\", AfD) train a reward model to tell demonstrations from "
        "the SFT policy's samples and report that optimising it improves on the SFT policy. Its population optimum is "
        "the log density ratio, so KL-regularised RL from SFT at β = 1 targets the expert.",
        "AfD (Sun & van der Schaar 2024): RL on the learned reward improves on SFT",
    ),
    Section(
        "rm_noise", "Reward models under label noise",
        "Bradley-Terry, classification and hinge reward heads on cached embeddings under a growing fraction of flipped "
        "labels, on the synthetic `gold_rm` task and on the HH-RLHF harmless pairs; each cell is mean ± std over seeds. "
        "The second run reads the HH dialogues with the pretrained all-MiniLM-L6-v2 encoder instead of a random transformer.",
        (RunSpec("rm_noise", caption="random byte-level transformer embeddings"),
         RunSpec("rm_noise_minilm", ("synthetic.enabled=false", "hh.backbone=minilm"), "pretrained MiniLM embeddings, HH only")),
        "rm_noise.png",
        render_rm_noise, headline_rm_noise, measured_rm_noise,
        "Sun et al. (ICLR 2025, \"Rethinking Bradley-Terry models in preference-based reward modeling\") report that an "
        "order-consistent classification reward model is competitive with BT and **more robust when annotations are "
        "noisy**.",
        "Sun et al. ICLR 2025: classification RM more robust than BT under label noise",
    ),
    Section(
        "rl_oracle", "RL against the exact optimum",
        "REINFORCE with a baseline, RLOO, GRPO and PPO (GAE critic), plus Dr. GRPO on `sort`, trained with the KL in the "
        "reward at the oracle's β, so the target is exactly π*; gap fraction and KL(π ‖ π*) computed exactly.",
        (RunSpec("rl_oracle_bigram", caption="`bigram`, 3 letters, horizon 4"),
         RunSpec("rl_oracle_sort", ("task.name=sort", "task.args=num_digits=2,num_symbols=3", "iterations=300",
                                    "algorithms=reinforce_baseline,rloo,grpo,ppo,dr_grpo"), "`sort`, sparse verifiable reward"),
         RunSpec("rl_oracle_gold_rm", ("task.name=gold_rm", "task.args=num_chars=3,horizon=4", "iterations=1000", "eval_every=50"),
                 "`gold_rm`, a fixed transformer as gold reward")),
        "rl_oracle.png",
        render_rl_oracle, headline_rl_oracle, measured_rl_oracle,
        "No paper measures these estimators against an exact optimum; the claims they bear on: RLOO is competitive with "
        "PPO without a critic (Ahmadian et al. 2024, \"Back to basics\"); GRPO normalises advantages by the group's "
        "standard deviation (Shao et al. 2024, DeepSeekMath); Liu et al. (2025, Dr. GRPO, \"Understanding R1-Zero-like "
        "training\") argue that this normalisation biases the optimisation and remove it.",
        "RLOO ≈ PPO (Ahmadian et al. 2024); GRPO's std normalisation biased (Liu et al. 2025, Dr. GRPO)",
    ),
    Section(
        "dpo_oracle", "Direct preference optimisation against the exact optimum",
        "DPO, cDPO, robust DPO, IPO, hinge, SLiC, SimPO, ORPO and KTO trained offline on BT-labelled pairs of `bigram`, "
        "DPO's error against the number of pairs, and online DPO; KL(π ‖ π*), gold reward and KL(π ‖ π_ref) exactly.",
        (RunSpec("dpo_oracle"),), "dpo_oracle.png",
        render_dpo_oracle, headline_dpo_oracle, measured_dpo_oracle,
        "Rafailov et al. (2023) show that DPO's population minimiser under BT preferences is the KL-regularised optimum "
        "π*. Azar et al. (2023, IPO) show IPO targets a different regularised objective whose log-ratio gap is bounded, "
        "so it moves less. cDPO (Mitchell 2023) and robust DPO (Chowdhury et al. 2024) are built for noisy labels.",
        "Rafailov et al. 2023: DPO's minimiser is π*; Azar et al. 2023: IPO bounded",
    ),
    Section(
        "irl_recovery", "IRL from demonstrations: reward recovery",
        "SFT, AfD (three variants), MaxEnt, SPIN, IQ-Learn, AIRL and GAIL learn rewards from the same expert "
        "demonstrations on `bigram`, `gold_rm` and `sort`; the oracle optimises each learned reward exactly.",
        (RunSpec("irl_recovery"),), "irl_recovery.png",
        render_irl_recovery, headline_irl_recovery, measured_irl_recovery,
        "AIRL (Fu et al. 2018): the disentangled reward recovers the true reward up to shaping. MaxEnt IRL (Ziebart et al. "
        "2008) matches the expert's feature expectations and is exact given the expert's occupancy. IQ-Learn (Garg et al. "
        "2021) learns a soft-Q function from which a reward follows. GAIL (Ho & Ermon 2016) imitates but its discriminator "
        "carries no reward at equilibrium. SPIN (Chen et al. 2024) and AfD (Sun & van der Schaar 2024) target the policy.",
        "AIRL recovers reward up to shaping (Fu et al. 2018); GAIL does not (Ho & Ermon 2016)",
    ),
    Section(
        "credit_horizon", "Dense credit for a sparse reward vs generation length",
        "Terminal, uniform, potential shaping, ABC, PRIME, RTO and return-decomposition credit for a sparse sequence "
        "reward, and the true per-token reward, at growing generation lengths H on `bigram`; RLOO on per-step returns, "
        "several vmapped seeds per cell.",
        (RunSpec("credit_horizon"),), "credit_horizon.png",
        render_credit_horizon, headline_credit_horizon, measured_credit_horizon,
        "Chan et al. (2024, ABC, \"Dense reward for free in RLHF\"; IMDb, GPT-2): terminal-reward RLHF degrades with "
        "length, from 8.94 at 20–30 tokens to 7.03 ± 1.65 at 140–160, while attention-based credit goes 9.86 → 10.77.",
        "Chan et al. 2024: terminal reward degrades with length, ABC does not",
    ),
    Section(
        "overoptimization", "Reward-model over-optimisation scaling laws",
        "Proxy reward models of several widths trained on nested sets of BT-labelled pairs from the `gold_rm` gold reward; "
        "best-of-n and RLOO (no KL penalty) against each proxy; gold reward against d = sqrt(KL) fitted by Gao et al.'s "
        "forms; ensembles and a KL penalty as mitigations.",
        (RunSpec("overoptimization"),), "overoptimization.png",
        render_overoptimization, headline_overoptimization, measured_overoptimization,
        "Gao, Schulman & Hilton (2022, \"Scaling laws for reward model overoptimization\"): the gold reward follows "
        "d(α − βd) under best-of-n and d(α − β log d) under RL, peaking and then falling while the proxy keeps rising; "
        "larger proxies and more data give larger α and smaller β. Coste et al. (2024) find reward-model ensembles "
        "(mean − std, min) reduce over-optimisation.",
        "Gao et al. 2022: gold peaks then falls, fits d(α−βd), d(α−β log d); Coste et al. 2024 ensembles",
    ),
    Section(
        "hh_rlhf", "RLHF of SmolLM2-135M on HH-RLHF harmlessness",
        "RLOO with LoRA adapters on SmolLM2-135M-Instruct against a BT reward model on all-MiniLM-L6-v2 embeddings of "
        "the HH-RLHF harmless pairs, KL to the model itself in the reward; held-out prompts.",
        (RunSpec("hh_rlhf"),), "hh_rlhf.png",
        render_hh_rlhf, headline_hh_rlhf, measured_hh_rlhf,
        "Bai et al. (2022, \"Training a helpful and harmless assistant with RLHF\") train preference models on HH-RLHF "
        "and RLHF 13M–52B models, finding the preference-model reward grows roughly linearly in sqrt(KL) during RL; the "
        "KL-in-reward recipe is InstructGPT's (Ouyang et al. 2022), the estimator RLOO (Ahmadian et al. 2024).",
        "Bai et al. 2022: PM score rises ~ linearly in sqrt(KL) during RLHF",
    ),
)


# ---------------------------------------------------------------------------------------------
# Runs on disk


@dataclasses.dataclass
class Run:
    spec: RunSpec
    experiment: str
    results: dict | None
    info: dict | None  # run.json
    figure: Path | None  # the plot in the run folder, if any


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        warn(f"{path} is not valid JSON ({error}); treated as absent")
        return None


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_run(runs_dir: Path, section: Section, spec: RunSpec) -> Run:
    folder = runs_dir / spec.folder
    results, info = read_json(folder / "results.json"), read_json(folder / "run.json")
    if results is None:
        warn(f"not run yet: no {folder / 'results.json'}")
    elif info is None:
        warn(f"{folder} has results.json but no run.json: runtime unknown, command from the page's defaults")
    if info is not None and info.get("experiment") not in (None, section.experiment):
        warn(f"{folder / 'run.json'} says experiment {info.get('experiment')!r}, expected {section.experiment!r}")
    figure = folder / section.figure
    if not figure.is_file():
        pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
        figure = pngs[0] if pngs else None
        if results is not None and figure is None:
            warn(f"no plot in {folder}")
    return Run(spec, section.experiment, results, info, figure)


def command(run: Run) -> str:
    info = run.info or {}
    experiment = info.get("experiment") or run.experiment
    overrides = info.get("overrides") if info else list(run.spec.overrides)
    text = f"jirl run {experiment} --out runs/{run.spec.folder}"
    if overrides:
        text += " --set " + " ".join(shlex.quote(str(o)) for o in overrides)
    return text


def runtime(run: Run) -> str:
    seconds = (run.info or {}).get("elapsed_seconds")
    if not is_number(seconds):
        return "not run yet" if run.results is None else "unknown (no run.json)"
    text = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
    return text + (" (resumed: last leg only)" if (run.info or {}).get("resumed") else "")


def safe(call: Callable, *args) -> str:
    """A renderer's output, or a visible error line where a results file has an unexpected shape."""
    try:
        return call(*args)
    except Exception as error:  # noqa: BLE001 - one odd results file must not stop the page
        warn(f"{getattr(call, '__name__', call)} failed: {type(error).__name__}: {error}")
        return f"⚠ could not render ({type(error).__name__}: {error})"


# ---------------------------------------------------------------------------------------------
# The page


HEADER = """# jirl results

<!-- Generated by `python scripts/make_results_page.py` from the run folders under runs/. Do not edit by hand. -->

> **Generated by `python scripts/make_results_page.py`; do not edit this file by hand.** Every number on this page
> is read from a `results.json` or `run.json` that the command shown next to it wrote (`jirl run NAME --out
> runs/FOLDER [--set ...]`, rebuilt from `run.json`). Runtimes are that run's `elapsed_seconds`, measured on a
> 2-core CPU. The "published" side of each comparison is what the cited paper reports, in words; the "measured"
> side is computed from our files. A section whose run folder has no `results.json` says "not run yet". To
> refresh the page, run the commands below and then `python scripts/make_results_page.py`.
"""


def figure_link(run: Run, figures_dir: Path, page: Path) -> str | None:
    if run.figure is None:
        return None
    figures_dir.mkdir(parents=True, exist_ok=True)
    target = figures_dir / f"{run.spec.folder}.png"
    shutil.copyfile(run.figure, target)
    relative = Path(os.path.relpath(target, page.parent)).as_posix()
    return f"![{run.spec.folder}: {run.figure.name}]({relative})"


def render_section(index: int, section: Section, runs: list[Run], figures_dir: Path, page: Path) -> str:
    out = [f"## {index}. {section.title} (`{section.experiment}`)", "", section.about, ""]
    for run in runs:
        caption = f" — {run.spec.caption}" if run.spec.caption else ""
        out += [f"### `runs/{run.spec.folder}`{caption}", "", "```bash", command(run), "```", ""]
        if run.results is None:
            out += [f"**not run yet: no runs/{run.spec.folder}/results.json**", ""]
            continue
        out += [f"Runtime (2-core CPU): **{runtime(run)}**.", "", safe(section.render, run.results), ""]
        link = figure_link(run, figures_dir, page)
        out += [link if link else f"⚠ no plot in runs/{run.spec.folder}", ""]
    present = {run.spec.folder: run.results for run in runs if run.results is not None}
    measured = safe(section.measured, present) if present else "not run yet: nothing measured"
    out += ["**Compared with published work**", "", table(["published", "measured here"], [[section.published, measured]]), ""]
    return "\n".join(out)


def summary(sections_runs: list[tuple[Section, list[Run]]]) -> str:
    rows = []
    for section, runs in sections_runs:
        for i, run in enumerate(runs):
            headline = safe(section.headline, run.results) if run.results is not None else f"not run yet: no runs/{run.spec.folder}/results.json"
            rows.append([
                f"[{section.experiment}](#{anchor(section)})" if i == 0 else "″",
                f"`{command(run)}`", runtime(run), headline, section.published_short if i == 0 else "″",
            ])
    return table(["experiment", "command", "runtime (2-core CPU)", "headline number", "published comparison"], rows)


def anchor(section: Section) -> str:
    """GitHub's anchor of the section heading: lower case, punctuation dropped, spaces to dashes."""
    index = SECTIONS.index(section) + 1 if section in SECTIONS else 0
    heading = f"{index}. {section.title} ({section.experiment})".lower()
    kept = "".join(c for c in heading if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def build_page(runs_dir: Path, page: Path, sections: tuple[Section, ...] = SECTIONS) -> str:
    figures_dir = page.parent / "figures"
    loaded = [(section, [load_run(runs_dir, section, spec) for spec in section.runs]) for section in sections]
    parts = [HEADER, "## Summary", "", summary(loaded), ""]
    parts += [render_section(i, section, runs, figures_dir, page) for i, (section, runs) in enumerate(loaded, 1)]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="folder holding the run folders (default: runs/)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results.md", help="page to write (default: docs/results.md)")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = build_page(args.runs, args.out)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
