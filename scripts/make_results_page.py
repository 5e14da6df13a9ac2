"""Write ``docs/results.md``, ``docs/figures/`` and the README's results block from the committed
result records under ``results/``.

    jirl run NAME --out runs/FOLDER [--set ...]                # run an experiment
    python scripts/make_results_page.py --collect FOLDER ...   # copy its record into results/FOLDER, regenerate
    python scripts/make_results_page.py                        # regenerate from results/
    python scripts/make_results_page.py --check                # exit 1 if a generated file is stale

A record is ``results.json`` (the numbers), ``run.json`` (command, overrides, runtime, git commit,
versions, device, date) and the plot. The page shows, per run, that command and provenance, tables
rendered from ``results.json`` and the plot (copied to ``docs/figures/``), then each section's
*findings*: fixed claims, the numbers that bear on them, whether they hold, and the test that
checks the same claim at a size the default test run affords. Every number comes from the records;
the published side of each comparison is text. A record that is absent renders as "not run yet"
with its command and no numbers; a missing key shows a visible "missing" marker, not a crash.
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


def short_end(text: Any, limit: int = 120) -> str:
    """The end of ``text`` (a prompt's question, not its system preamble), as ``short`` renders it."""
    text = " ".join(str(text).split())
    return short(text) if len(text) <= limit else short("…" + text[-(limit - 1):], limit)


def span(values: list) -> str:
    """``min–max`` of the numbers among ``values``."""
    numbers = [v for v in values if is_number(v) and math.isfinite(v)]
    return f"{num(min(numbers))}–{num(max(numbers))}" if numbers else "⚠ no values"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One stated finding: a fixed ``claim``, the ``evidence`` (numbers read from the result
    files), whether the files bear the claim out (``holds``), and the test that checks the same
    claim at a size the default test run affords (``test``, ``path::name``). The page prints
    every finding with its test; ``tests/test_results_files.py`` fails when one stops holding."""

    claim: str
    evidence: str
    holds: bool
    test: str


def finding(claim: str, evidence: str, holds: Any, test: str) -> Finding:
    return Finding(claim, evidence, bool(holds) and not isinstance(holds, Missing), test)


def numbers(*values: Any) -> bool:
    """Whether every value is a finite number (a missing key makes a finding fail, not crash)."""
    return all(is_number(v) and math.isfinite(v) for v in values)


# ---------------------------------------------------------------------------------------------
# Renderers: results dict -> markdown (tables), headline, findings


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


ORACLE_RERUN = "tests/test_results_files.py::test_oracle_rerun_matches_its_record"


def findings_oracle(runs: dict) -> list[Finding]:
    r = runs["oracle"]
    mean, exact = dig(r, "demo_mean_reward"), dig(r, "demo_exact_reward")
    frontier = dig(r, "frontier") if isinstance(dig(r, "frontier"), list) else []
    rewards = [dig(row, "expected_reward") for row in frontier]
    monotone = len(rewards) > 1 and all(numbers(a, b) and a >= b - 1e-6 for a, b in pairwise(rewards))
    return [
        finding(
            "Demonstrations sampled from π* agree with the exact expectation: their mean gold reward is within 1 % of "
            "the oracle's E[R].",
            f"Monte-Carlo {num(mean, 4)} vs exact {num(exact, 4)} at β = {num(dig(r, 'demo_beta'), 3)}.",
            numbers(mean, exact) and abs(mean - exact) <= 0.01 * abs(exact), ORACLE_RERUN,
        ),
        finding(
            "E[R] of π*_β falls monotonically as β grows, from the β → 0 limit towards the reference's.",
            f"{num(dig(r, 'max_reward'), 4)} → {num(dig(r, 'reference_reward'), 4)} over {len(rewards)} values of β.",
            monotone, ORACLE_RERUN,
        ),
    ]


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
        f"Seed {dig(r, 'seed')}. Task {code(dig(r, 'task'))}, expert β = {num(dig(r, 'expert_beta'), 2)}, "
        f"{num(dig(r, 'num_demos'))} demonstrations, {num(dig(r, 'steps'))} SFT steps."
    )
    seeds = dig(r, "seeds")
    if isinstance(seeds, dict):
        per_seed = table(
            ["seed", "SFT gold reward", "IRL gold reward", "IRL − SFT"],
            [[str(s), num(a, 4), num(b, 4), num(c, 4)] for s, a, b, c in zip(
                dig(seeds, "seeds"), dig(seeds, "sft_gold"), dig(seeds, "irl_gold"), dig(seeds, "irl_minus_sft", "per_seed"))],
        )
        margin = dig(seeds, "irl_minus_sft")
        note += (
            f"\n\nThe whole pipeline at {num(dig(margin, 'count'))} seeds (data, initialisation and RL reseeded):\n\n{per_seed}\n\n"
            f"IRL − SFT: {num(dig(margin, 'mean'), 4)} ± {num(dig(margin, 'std'), 4)} (mean ± sample std)."
        )
    return table(["policy", "gold reward E[R]", "KL(expert ‖ policy) [nats]"], rows) + "\n\n" + note


def headline_quickstart(r: dict) -> str:
    margin = dig(r, "seeds", "irl_minus_sft")
    return (
        f"gold reward SFT {num(dig(r, 'gold_reward', 'sft_policy'))} → IRL {num(dig(r, 'irl', 'policy', 'gold_reward'))} "
        f"(expert {num(dig(r, 'gold_reward', 'expert'))}); IRL − SFT {num(dig(margin, 'mean'))} ± {num(dig(margin, 'std'))} "
        f"over {num(dig(margin, 'count'))} seeds"
    )


def findings_quickstart(runs: dict) -> list[Finding]:
    r = runs["quickstart"]
    seeds = dig(r, "seeds")
    margin = dig(seeds, "irl_minus_sft")
    mean, std, count = dig(margin, "mean"), dig(margin, "std"), dig(margin, "count")
    return [
        finding(
            "The IRL pipeline beats behaviour cloning: the policy trained against the learned reward has a higher exact "
            "gold reward than the SFT policy, by more than 3 standard deviations of the difference over seeds.",
            f"IRL − SFT gold reward {num(mean, 4)} ± {num(std, 4)} (mean ± std over {num(count)} seeds "
            f"{dig(seeds, 'seeds')}); seed {dig(r, 'seed')}: SFT {num(dig(r, 'gold_reward', 'sft_policy'), 4)}, "
            f"IRL {num(dig(r, 'irl', 'policy', 'gold_reward'), 4)}, expert {num(dig(r, 'gold_reward', 'expert'), 4)}.",
            numbers(mean, std, count) and count >= 5 and mean > 3 * std,
            "tests/test_quickstart.py::test_irl_beats_sft_by_three_standard_deviations_at_other_seeds",
        ),
    ]


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


def findings_rm_noise(runs: dict) -> list[Finding]:
    r = runs.get("rm_noise")
    if r is None:
        return []
    levels = noise_levels(r)
    clean, top = (levels[0], levels[-1]) if levels else ("0", "0.4")
    bt, cls = dig(r, "accuracy", "bt", top, "synthetic"), dig(r, "accuracy", "classification", top, "synthetic")
    hurts = {m: (dig(r, "accuracy", m, clean, "synthetic", "mean"), dig(r, "accuracy", m, top, "synthetic", "mean"))
             for m in ("bt", "classification", "hinge")}
    return [
        finding(
            "Under uniform label flips, classification is not more robust than BT: at the highest flip rate their "
            "synthetic accuracies are within one std of each other (Sun et al.'s robustness advantage is not reproduced "
            "with this noise model, which keeps the labels order-consistent for both).",
            f"Flip rate {top}: classification {pm(cls)} vs BT {pm(bt)} ({compare_cells(cls, bt)}).",
            compare_cells(cls, bt) == "within one std of each other",
            "tests/test_rm_noise.py::test_bt_and_classification_tie_under_uniform_flips",
        ),
        finding(
            "Label noise hurts every head: synthetic accuracy at the highest flip rate is below the noise-free one "
            "for BT, classification and hinge.",
            "; ".join(f"{m} {num(a)} → {num(b)}" for m, (a, b) in hurts.items()) + f" (flip rate {clean} → {top}).",
            all(numbers(a, b) and b < a for a, b in hurts.values()),
            "tests/test_rm_noise.py::test_rm_noise_writes_the_table_and_noise_hurts",
        ),
    ]


RL_ORACLE_TASK = {"rl_oracle_bigram": "bigram", "rl_oracle_sort": "sort", "rl_oracle_gold_rm": "gold_rm"}


def render_rl_oracle(r: dict) -> str:
    rows = [
        [name, num(dig(a, "gap_fraction"), 4), num(dig(a, "kl_to_optimal"), 4), num(dig(a, "expected_reward"), 4),
         num(dig(a, "kl_to_reference"), 4), num(dig(a, "steps"))]
        for name, a in (dig(r, "algorithms") if isinstance(dig(r, "algorithms"), dict) else {}).items()
    ] or [[str(dig(r, "algorithms")), "", "", "", "", ""]]
    out = table(["recipe", "gap fraction (J* − J)/(J* − J_ref)", "KL(π ‖ π*) [nats]", "E[R]", "KL(π ‖ π_ref)", "iterations"], rows)
    return out + (
        f"\n\nTask {code(dig(r, 'task'))}, seed {dig(r, 'seed')}, β = {num(dig(r, 'beta'), 2)}; the exact optimum π* has E[R] "
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


KL_IN_REWARD = ("reinforce_baseline", "rloo", "grpo_kl_in_reward", "ppo")
RL_BIGRAM_TEST = "tests/rl/test_loop.py::test_kl_in_reward_recipes_reach_the_optimum_and_paper_grpo_overshoots_on_bigram"


def reaches_optimum(a: Any) -> bool:
    return numbers(dig(a, "gap_fraction"), dig(a, "kl_to_optimal")) and dig(a, "gap_fraction") <= 0.05 and dig(a, "kl_to_optimal") < 0.05


def gap_kl(a: Any) -> str:
    return f"{num(dig(a, 'gap_fraction'), 4)} / {num(dig(a, 'kl_to_optimal'), 4)}"


def overshoots(r: dict, name: str) -> bool:
    a, opt = dig(r, "algorithms", name), dig(r, "optimum")
    er, kl, er_opt, kl_opt = dig(a, "expected_reward"), dig(a, "kl_to_reference"), dig(opt, "expected_reward"), dig(opt, "kl_to_reference")
    return numbers(er, kl, er_opt, kl_opt) and er > er_opt and kl > 2 * kl_opt


def findings_rl_oracle(runs: dict) -> list[Finding]:
    out = []
    dense = [runs[f] for f in ("rl_oracle_bigram", "rl_oracle_gold_rm") if f in runs]
    cells = [(dig(r, "task"), name, dig(r, "algorithms", name)) for r in dense for name in KL_IN_REWARD]
    out.append(finding(
        "With the KL in the reward at the oracle's β, REINFORCE with a baseline, RLOO, GRPO's advantage "
        "(`grpo_kl_in_reward`) and PPO all end within gap 0.05 and KL(π ‖ π*) 0.05 of π* on `bigram` and `gold_rm`.",
        "Gap / KL(π ‖ π*): " + "; ".join(f"{code(t)} {n} {gap_kl(a)}" for t, n, a in cells) + ".",
        cells and all(reaches_optimum(a) for _, _, a in cells),
        RL_BIGRAM_TEST + " (bigram); gold_rm: tests/rl/test_loop.py::test_grpo_kl_in_reward_reaches_the_optimum_on_gold_rm (heavy)",
    ))
    sort = runs.get("rl_oracle_sort")
    if sort is not None:
        plain = [(n, dig(sort, "algorithms", n)) for n in ("reinforce_baseline", "rloo", "ppo")]
        stuck = dig(sort, "algorithms", "grpo_kl_in_reward")
        out.append(finding(
            "On sparse `sort`, REINFORCE with a baseline, RLOO and PPO reach π* (gap ≤ 0.05), while GRPO's advantage with "
            "the KL in the reward stays near the reference (gap > 0.5): in a group where every response fails, the returns "
            "differ only by the KL penalty, and dividing by the group's std blows that up to unit-size advantages.",
            "Gap / KL(π ‖ π*): " + "; ".join(f"{n} {gap_kl(a)}" for n, a in plain) + f"; grpo_kl_in_reward {gap_kl(stuck)}.",
            all(reaches_optimum(a) for _, a in plain) and numbers(dig(stuck, "gap_fraction")) and dig(stuck, "gap_fraction") > 0.5,
            "tests/rl/test_loop.py::test_sort_kl_in_reward_recipes_reach_the_optimum_but_grpo_advantage_stays_at_the_reference",
        ))
    grpo_runs = [r for r in runs.values() if "grpo" in keys_of(dig(r, "algorithms"))]
    out.append(finding(
        "GRPO as Shao et al. run it (k3 KL in the loss at β = 0.04, token mean per response) does not target π*_β: on "
        "every task and seed it ends with more gold reward than π* and more than twice π*'s KL to the reference.",
        "; ".join(
            f"{code(dig(r, 'task'))} seed {dig(r, 'seed')}: E[R] {num(dig(r, 'algorithms', 'grpo', 'expected_reward'), 3)} vs π* "
            f"{num(dig(r, 'optimum', 'expected_reward'), 3)}, KL(π ‖ π_ref) {num(dig(r, 'algorithms', 'grpo', 'kl_to_reference'), 3)} vs "
            f"{num(dig(r, 'optimum', 'kl_to_reference'), 3)}, gap {num(dig(r, 'algorithms', 'grpo', 'gap_fraction'), 3)}"
            for r in grpo_runs
        ) + ".",
        grpo_runs and all(overshoots(r, "grpo") for r in grpo_runs),
        RL_BIGRAM_TEST,
    ))
    pairs = [(dig(r, "task"), dig(r, "algorithms", "rloo", "gap_fraction"), dig(r, "algorithms", "ppo", "gap_fraction"))
             for r in runs.values() if {"rloo", "ppo"} <= set(keys_of(dig(r, "algorithms")))]
    out.append(finding(
        "RLOO without a critic is as close to π* as PPO with a GAE critic (final gaps within 0.01 of each other on every "
        "task), as Ahmadian et al. (2024) report.",
        "Final gap, RLOO vs PPO: " + "; ".join(f"{code(t)} {num(a, 4)} vs {num(b, 4)}" for t, a, b in pairs) + ".",
        pairs and all(numbers(a, b) and abs(a - b) <= 0.01 for _, a, b in pairs),
        RL_BIGRAM_TEST,
    ))
    return out


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


DPO_TEST = "tests/test_dpo_oracle.py::test_dpo_oracle_writes_every_study_and_more_pairs_bring_dpo_closer_to_the_optimum"


def findings_dpo_oracle(runs: dict) -> list[Finding]:
    r = runs["dpo_oracle"]
    curve = dig(r, "data_curve") if isinstance(dig(r, "data_curve"), list) else []
    kls = [dig(p, "kl_to_optimal") for p in curve]
    steps = " → ".join(f"{num(dig(p, 'kl_to_optimal'))} ({num(dig(p, 'num_pairs'))} pairs)" for p in curve) or str(dig(r, "data_curve"))
    ipo, target = dig(r, "losses", "ipo", "kl_to_reference"), dig(r, "optimum", "kl_to_reference")
    return [
        finding(
            "DPO's distance to π* shrinks as the number of preference pairs grows: the remaining error at a fixed "
            "budget is finite data (Rafailov et al.'s population minimiser is π*).",
            f"KL(π ‖ π*) of DPO: {steps}.",
            len(kls) > 1 and all(numbers(a, b) and b < a for a, b in pairwise(kls)), DPO_TEST,
        ),
        finding(
            "IPO moves less than π*: its KL(π ‖ π_ref) stays below π*'s, as its bounded log-ratio target predicts "
            "(Azar et al. 2023).",
            f"KL(π ‖ π_ref): IPO {num(ipo)}, π* {num(target)}.",
            numbers(ipo, target) and ipo < target, DPO_TEST,
        ),
    ]


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


def findings_irl_recovery(runs: dict) -> list[Finding]:
    r = runs["irl_recovery"]
    m = lambda *p: dig(r, "methods", *p)  # noqa: E731
    airl = m("airl", "bigram", "reward_correlation")
    sort_sft = m("sft", "sort", "gold_reward_fraction")
    sort_irl = {name: m(name, "sort", "gold_reward_fraction") for name in ("iq_learn", "airl", "afd_init_demo")}
    return [
        finding(
            "AIRL recovers the true reward up to shaping (Fu et al. 2018): on `bigram` its learned per-token reward, "
            "with shaping removed, correlates above 0.95 with the true one.",
            f"Correlation: AIRL {num(airl)}, MaxEnt {num(m('maxent', 'bigram', 'reward_correlation'))}, IQ-Learn "
            f"{num(m('iq_learn', 'bigram', 'reward_correlation'))}; the residual learners AfD `sft_demo` "
            f"{num(m('afd_sft_demo', 'bigram', 'reward_correlation'))} and SPIN {num(m('spin', 'bigram', 'reward_correlation'))} "
            "learn the gap between SFT and the expert instead.",
            numbers(airl) and airl > 0.95,
            "tests/irl/test_adversarial.py::test_airl_recovers_the_bigram_reward_and_imitates_the_expert",
        ),
        finding(
            "Where behaviour cloning falls short (sparse `sort`), the exact optimum of the reward learned by IQ-Learn, "
            "AIRL and AfD (`init_demo`) each reaches a higher gold-reward fraction than the SFT policy.",
            f"Gold-reward fraction on `sort`: SFT {num(sort_sft)}; "
            + ", ".join(f"{k} {num(v)}" for k, v in sort_irl.items()) + ".",
            numbers(sort_sft, *sort_irl.values()) and all(v > sort_sft for v in sort_irl.values()),
            "tests/test_irl_recovery.py::test_irl_rewards_beat_sft_on_sparse_sort",
        ),
    ]


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


def no_significant_drop(short: Any, long: Any) -> bool:
    """``long``'s mean is not below ``short``'s by more than 2 standard errors of the difference
    (independent seeds; the cells' ``per_seed`` lists)."""
    a, b = dig(short, "per_seed"), dig(long, "per_seed")
    if not (isinstance(a, list) and isinstance(b, list) and len(a) > 1 and len(b) > 1 and numbers(*a, *b)):
        return False

    def var(xs):
        mean = sum(xs) / len(xs)
        return sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)

    se = math.sqrt(var(a) / len(a) + var(b) / len(b))
    return sum(b) / len(b) >= sum(a) / len(a) - 2 * se


def findings_credit_horizon(runs: dict) -> list[Finding]:
    r = runs["credit_horizon"]
    horizons = [str(h) for h in dig(r, "horizons")] if isinstance(dig(r, "horizons"), list) else []
    lo, hi = (horizons[0], horizons[-1]) if len(horizons) > 1 else ("8", "128")
    term_lo, term_hi = dig(r, "gold_fraction", "terminal", lo), dig(r, "gold_fraction", "terminal", hi)
    return [
        finding(
            "Chan et al.'s degradation of terminal-reward RL with length is not seen here: the terminal scheme's "
            f"final gold fraction at H = {hi} is not below its value at H = {lo} by more than two standard errors of the "
            "difference. With 5 seeds and spreads this size only a drop of about that size could be detected, so this is "
            "inconclusive rather than a refutation.",
            f"Terminal: {pm(term_lo, 2)} at H = {lo}, {pm(term_hi, 2)} at H = {hi} (mean ± std over seeds); ABC "
            f"{pm(dig(r, 'gold_fraction', 'abc', lo), 2)} → {pm(dig(r, 'gold_fraction', 'abc', hi), 2)}, its attention credit "
            f"correlating {num(dig(r, 'credit_correlation', 'abc', lo, 'mean'), 2)} → "
            f"{num(dig(r, 'credit_correlation', 'abc', hi, 'mean'), 2)} with the true per-token reward.",
            no_significant_drop(term_lo, term_hi),
            "tests/test_credit_horizon.py::test_terminal_credit_does_not_degrade_with_length_at_a_small_size",
        ),
    ]


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
    selection = render_form_selection(dig(r, "form_selection")) if "form_selection" in r else ""
    return (
        f"Fits of the gold reward (relative to the initial policy) against d = sqrt(KL): BoN d(α − βd), RL d(α − β log d). "
        f"Proxies are named d{{width}}_n{{pairs}} (seed 0 shown).\n\n{fits}\n\n{selection}"
        f"Mitigations on {code(dig(setting, 'proxy'))} (same RL budget; ensemble of {num(dig(setting, 'ensemble_size'))}, "
        f"k = {num(dig(setting, 'ensemble_k'), 2)}, KL coefficient {num(dig(setting, 'kl_coef'), 3)}):\n\n"
        + table(["run", "final gold", "peak gold", "final proxy", "final KL [nats]"], mrows)
    )


FORM_NAMES = ("gao_bon", "gao_rl", "exp_saturation", "log_saturation")


def render_form_selection(fs: Any) -> str:
    """Which form extrapolates: per optimiser and proxy width (all data sizes and seeds pooled)
    and per proxy, each form's held-out RMSE with its 95 % interval over curves, the winner and
    whether the paired runner-up-minus-winner interval excludes 0."""
    rows = []
    for optimiser in ("bon", "rl"):
        cells = dig(fs, optimiser)
        entries = [*((f"{k} (all data sizes)", v) for k, v in (dig(cells, "sizes").items() if isinstance(dig(cells, "sizes"), dict) else [])),
                   *(dig(cells, "proxies").items() if isinstance(dig(cells, "proxies"), dict) else [])]
        for name, cell in entries:
            paired = dig(cell, "paired")
            rows.append([
                "best-of-n" if optimiser == "bon" else "RL", name, num(dig(cell, "num_seeds")),
                *[ci(dig(cell, "held_out_rmse", f), 3) for f in FORM_NAMES],
                f"**{dig(cell, 'winner')}**", f"{ci(paired, 3)} vs {dig(paired, 'runner_up')}" + (" decided" if dig(paired, "decided") is True else ""),
            ])
    header = ["optimiser", "proxy", "curves", *[f"{f} RMSE" for f in FORM_NAMES], "winner", "runner-up − winner"]
    forms = dig(fs, "forms")
    return (f"Model selection (`jirl.eval.form_selection`): every form is fitted on d ≤ {num(dig(fs, 'd_fit_fraction'), 2)} × max d "
            f"of its curve and scored by the RMSE of its extrapolation to the larger d, mean [95 % t-interval] over the curves "
            f"({num(dig(fs, 'num_seeds'))} seeds per proxy). Forms: "
            + "; ".join(f"{code(k)} = {v}" for k, v in (forms.items() if isinstance(forms, dict) else []))
            + ".\n\n" + table(header, rows or [["⚠ no form selection"] + [""] * (len(header) - 1)]) + "\n\n")


def headline_overoptimization(r: dict) -> str:
    falls = dig(r, "gold_falls_while_proxy_rises")
    if not isinstance(falls, dict):
        return str(falls)
    r2 = [dig(v, "r2") for v in dig(r, "rl").values()] if isinstance(dig(r, "rl"), dict) else []
    if "form_selection" in r:
        winners = {opt: sorted({str(dig(c, "winner")) for c in dig(r, "form_selection", opt, "sizes").values()})
                   for opt in ("bon", "rl") if isinstance(dig(r, "form_selection", opt, "sizes"), dict)}
        return (f"RL gold falls while proxy rises for {sum(bool(v) for v in falls.values())} of {len(falls)} proxies; best "
                f"extrapolating form: best-of-n {'/'.join(winners.get('bon', []))}, RL {'/'.join(winners.get('rl', []))}")
    return f"RL gold falls while proxy rises for {sum(bool(v) for v in falls.values())} of {len(falls)} proxies; RL fit R² {span(r2)}"


def findings_overoptimization(runs: dict) -> list[Finding]:
    r = runs["overoptimization"]
    falls = dig(r, "gold_falls_while_proxy_rises")
    falls = falls if isinstance(falls, dict) else {}
    return [
        finding(
            "Over-optimisation appears under RL without a KL penalty: for at least one proxy the gold reward peaks and "
            "then falls while the proxy reward keeps rising (Gao et al. 2022).",
            f"Gold falls while the proxy rises for {sum(bool(v) for v in falls.values())} of {len(falls)} proxies "
            f"({', '.join(k for k, v in falls.items() if v) or 'none'}).",
            any(bool(v) for v in falls.values()),
            "tests/test_overoptimization.py::test_rl_overoptimises_the_smallest_proxy",
        ),
        *form_findings(r),
    ]


FORM_TEST = "tests/eval/test_form_selection.py::test_the_known_form_wins_by_held_out_error_and_by_bic"


def form_findings(r: dict) -> list[Finding]:
    """The model-selection findings (records with a ``form_selection`` section only)."""
    if "form_selection" not in r:
        return []
    sizes = {opt: dig(r, "form_selection", opt, "sizes") for opt in ("bon", "rl")}
    sizes = {opt: v if isinstance(v, dict) else {} for opt, v in sizes.items()}

    def evidence(opt: str) -> str:
        return "; ".join(
            f"{name}: {dig(c, 'winner')} {num(dig(c, 'held_out_rmse', dig(c, 'winner'), 'mean'))} vs "
            f"{dig(c, 'paired', 'runner_up')} (difference {ci(dig(c, 'paired'), 3)}), gao_rl {num(dig(c, 'held_out_rmse', 'gao_rl', 'mean'))}"
            for name, c in sizes[opt].items())

    def wins_decided(opt: str, form: str) -> bool:
        return bool(sizes[opt]) and all(dig(c, "winner") == form and dig(c, "paired", "decided") is True for c in sizes[opt].values())

    return [
        finding(
            "Best-of-n follows Gao et al.'s best-of-n form: fitted on the first two thirds of each curve's d range, "
            "d(α − βd) extrapolates to the rest with the lowest error at every proxy width (all data sizes and 3 seeds "
            "per width pooled; the data sizes are nested subsets, so read the pooled interval as indicative), and the paired "
            "interval against the runner-up excludes 0.",
            evidence("bon") + ".", wins_decided("bon", "gao_bon"), FORM_TEST,
        ),
        finding(
            "RL does not follow Gao et al.'s RL form here: at every proxy width d(α − βd) again extrapolates best, decided "
            "against the runner-up, and d(α − β log d) extrapolates worst of the four forms. The paper's finding that the two "
            "optimisers follow different forms is not reproduced at this scale (500 RLOO iterations of a 2-layer policy, "
            "d ≤ ~4).",
            evidence("rl") + ".",
            wins_decided("rl", "gao_bon") and all(
                numbers(*(dig(c, "held_out_rmse", f, "mean") for f in FORM_NAMES))
                and dig(c, "held_out_rmse", "gao_rl", "mean") == max(dig(c, "held_out_rmse", f, "mean") for f in FORM_NAMES)
                for c in sizes["rl"].values()),
            FORM_TEST,
        ),
    ]


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


HH_TEST = ("tests/test_hh_rlhf.py::test_smoke_run_on_the_real_model (heavy: the real model; the RL path of a pretrained model "
           "with LoRA is also run by tests/test_examples.py::test_pretrained_lora_rl)")


def linear_trend(values: Any) -> tuple[float, float]:
    """Least-squares slope of ``values`` against their index, and its standard error."""
    if not isinstance(values, list) or len(values) < 3 or not all(is_number(v) for v in values):
        return float("nan"), float("nan")
    n = len(values)
    x_mean, y_mean = (n - 1) / 2, sum(values) / n
    sxx = sum((i - x_mean) ** 2 for i in range(n))
    slope = sum((i - x_mean) * (y - y_mean) for i, y in enumerate(values)) / sxx
    residual = sum((y - y_mean - slope * (i - x_mean)) ** 2 for i, y in enumerate(values))
    return slope, math.sqrt(residual / (n - 2) / sxx)


def findings_hh_rlhf(runs: dict) -> list[Finding]:
    r = runs["hh_rlhf"]
    b, a = dig(r, "before", "score"), dig(r, "after", "score")
    accuracy, pairs = dig(r, "reward_model", "test_accuracy"), dig(r, "reward_model", "test_pairs")
    se = math.sqrt(accuracy * (1 - accuracy) / pairs) if numbers(accuracy, pairs) and pairs > 0 else float("nan")
    score_slope, score_se = linear_trend(dig(r, "curves", "score"))
    kl_slope, kl_se = linear_trend(dig(r, "curves", "kl"))
    steps = len(dig(r, "curves", "score")) if isinstance(dig(r, "curves", "score"), list) else 0
    return [
        finding(
            "The reward model reads harmlessness better than chance: its held-out pairwise accuracy is more than two "
            "standard errors above 0.5.",
            f"{num(accuracy)} on {num(pairs)} held-out pairs (standard error {num(se)}).",
            numbers(accuracy, se) and accuracy - 2 * se > 0.5, HH_TEST,
        ),
        finding(
            "Bai et al.'s rising reward is **not reproduced** at this CPU budget: RLOO moves the policy away from the "
            "reference (the KL of the training batches rises by more than two standard errors per step) but the reward "
            "model's score of those batches shows no trend (its slope is within two standard errors of zero). A reward "
            "model this weak, and this few steps, give RL too little signal to follow; the run shows the pipeline works "
            "on a real model and real data, not that it makes replies more harmless.",
            f"Over {steps} steps: KL slope {num(kl_slope, 4)} ± {num(kl_se, 4)} nats/step, score slope "
            f"{num(score_slope, 4)} ± {num(score_se, 4)} per step (least squares, ± one standard error). One sampled "
            f"reply to each evaluation prompt (held out; `eval_prompts` in the run's config): score {num(b)} → {num(a)} at KL "
            f"{num(dig(r, 'after', 'kl'))} nats; reply length {num(dig(r, 'before', 'length'), 1)} → "
            f"{num(dig(r, 'after', 'length'), 1)} tokens.",
            numbers(kl_slope, kl_se, score_slope, score_se) and kl_slope > 2 * kl_se and abs(score_slope) < 2 * score_se,
            HH_TEST,
        ),
    ]


# ---------------------------------------------------------------------------------------------
# The generic text trainers on real data (jirl run sft | dpo | kto | rm | rl | irl)


def with_se(metrics: Any, key: str, digits: int = 3) -> str:
    """``metrics[key]``, with ``± metrics[key_se]`` where the record has it."""
    value, se = dig(metrics, key), dig(metrics, f"{key}_se")
    return f"{num(value, digits)} ± {num(se, digits)}" if not isinstance(se, Missing) else num(value, digits)


def before_after(r: dict, keys: list[tuple[str, str]], digits: int = 3) -> str:
    """Held-out metrics before and after training (± their standard errors where recorded)."""
    rows = [[label, with_se(dig(r, "before"), key, digits), with_se(dig(r, "after"), key, digits)] for key, label in keys]
    return table(["held-out metric", "before training", "after training"], rows)


def evaluation_rows(r: dict, keys: list[tuple[str, str]], digits: int = 3) -> str:
    """Each held-out evaluation during training (``curves.eval``; step 0 = before training)."""
    evals = dig(r, "curves", "eval")
    if not isinstance(evals, list):
        return f"Evaluations: {evals}"
    rows = [[num(dig(e, "step"))] + [with_se(e, key, digits) for key, _ in keys] for e in evals]
    return table(["step"] + [label for _, label in keys], rows)


def text_samples(samples: Any, score_key: str | None = None) -> str:
    """Greedy replies to held-out prompts before and after training."""
    before = dig(samples, "before") if isinstance(dig(samples, "before"), list) else []
    after = dig(samples, "after") if isinstance(dig(samples, "after"), list) else []
    if not before:
        return f"Samples: {samples if isinstance(samples, Missing) else '⚠ none'}"

    def reply(s: Any) -> str:
        text = short(dig(s, "reply"), 200)
        return f"{text} ({num(dig(s, score_key), 2)})" if score_key else text

    rows = [[short_end(dig(b, "prompt")), reply(b), reply(a)] for b, a in zip(before, after)]
    return "Greedy replies to held-out prompts (the end of each prompt):\n\n" + table(["prompt", "before", "after"], rows)


def split_line(report: Any, unit: str) -> str:
    """Counts of the prepared train / held-out splits and what was truncated."""
    parts = []
    for name in ("train", "eval"):
        split = dig(report, "splits", name)
        parts.append(f"{name}: {num(dig(split, 'examples'))} {unit} ({num(dig(split, 'prompt_truncated'))} prompts and "
                     f"{num(dig(split, 'response_truncated'))} replies truncated)")
    return "Data: " + "; ".join(parts) + "."


def seconds_line(r: dict) -> str:
    stages = dig(r, "seconds")
    if not isinstance(stages, dict):
        return f"Time: {stages}"
    return "Time per stage: " + ", ".join(f"{k} {num(v, 0)} s" for k, v in stages.items() if is_number(v)) + "."


def above(value: Any, se: Any, reference: float, sigmas: float = 2.0) -> bool:
    """``value - sigmas * se > reference`` for finite numbers."""
    return numbers(value, se) and value - sigmas * se > reference


SFT_KEYS = [("nll", "NLL [nats / reply token]"), ("perplexity", "perplexity")]


def render_sft(r: dict) -> str:
    return "\n\n".join([
        before_after(r, SFT_KEYS, 4), f"{num(dig(r, 'train_examples'))} training demonstrations; held-out NLL over the first "
        f"{num(dig(r, 'eval_examples'))} held-out ones ({num(dig(r, 'after', 'tokens'))} reply tokens).",
        split_line(dig(r, "data"), "demonstrations"), text_samples(dig(r, "samples")), seconds_line(r),
    ])


def headline_sft(r: dict) -> str:
    return f"held-out NLL {num(dig(r, 'before', 'nll'))} → {num(dig(r, 'after', 'nll'))} nats/token"


DPO_KEYS = [("loss", "loss"), ("accuracy", "pairwise accuracy"), ("margin", "margin r+ − r−"),
            ("reward_chosen", "r(x, y+)"), ("reward_rejected", "r(x, y−)")]


def render_dpo(r: dict) -> str:
    return "\n\n".join([
        f"Loss `{dig(r, 'loss')}`, β = {num(dig(r, 'beta'), 2)}; {num(dig(r, 'train_pairs'))} training and "
        f"{num(dig(r, 'eval_pairs'))} held-out pairs. Implicit reward r = β log π/π_ref.",
        before_after(r, DPO_KEYS), evaluation_rows(r, DPO_KEYS[:3]), split_line(dig(r, "data"), "pairs"),
        text_samples(dig(r, "samples")), seconds_line(r),
    ])


def headline_dpo(r: dict) -> str:
    return (f"held-out accuracy {with_se(dig(r, 'after'), 'accuracy')}, margin {num(dig(r, 'before', 'margin'))} → "
            f"{with_se(dig(r, 'after'), 'margin')} on {num(dig(r, 'eval_pairs'))} pairs")


KTO_KEYS = [("loss", "loss"), ("accuracy", "sign accuracy"), ("margin", "margin r_D − r_U"),
            ("reward_desirable", "r of desirable"), ("reward_undesirable", "r of undesirable"), ("kl", "z0 (KL estimate)")]


def render_kto(r: dict) -> str:
    return "\n\n".join([
        f"β = {num(dig(r, 'beta'), 2)}; {num(dig(r, 'train_examples'))} training replies ({num(dig(r, 'train_desirable'))} "
        f"desirable), {num(dig(r, 'eval_examples'))} held out. Implicit reward r = β log π/π_ref; sign accuracy: the share "
        "of held-out replies whose r has the label's sign.",
        before_after(r, KTO_KEYS), evaluation_rows(r, KTO_KEYS[:3]), split_line(dig(r, "data"), "replies"),
        text_samples(dig(r, "samples")), seconds_line(r),
    ])


def headline_kto(r: dict) -> str:
    return (f"held-out sign accuracy {with_se(dig(r, 'after'), 'accuracy')}, margin {with_se(dig(r, 'after'), 'margin')} "
            f"on {num(dig(r, 'eval_examples'))} replies")


RM_KEYS = [("loss", "loss"), ("accuracy", "pairwise accuracy"), ("margin", "margin r+ − r−")]


def render_rm(r: dict) -> str:
    return "\n\n".join([
        f"Backbone `{dig(r, 'model')}`, loss `{dig(r, 'loss')}`; trained: layers from {num(dig(r, 'first_adapted_layer'))} "
        f"of {num(dig(r, 'num_layers'))} (all frozen: the head alone) on {num(dig(r, 'data', 'train_pairs'))} pairs, held "
        f"out {num(dig(r, 'data', 'eval_pairs'))} (split {dig(r, 'data', 'split', 'by')}, fraction "
        f"{num(dig(r, 'data', 'split', 'test_fraction'), 2)}).",
        before_after(r, RM_KEYS), f"Training-pair accuracy after training: {num(dig(r, 'train_after', 'accuracy'))}.",
        evaluation_rows(r, RM_KEYS[:2]), seconds_line(r),
    ])


def headline_rm(r: dict) -> str:
    return f"held-out accuracy {with_se(dig(r, 'after'), 'accuracy')} on {num(dig(r, 'after', 'pairs'))} HH pairs"


RL_KEYS = [("reward", "reward (sampled reply)"), ("greedy_reward", "reward (greedy reply)"), ("kl", "exact KL(π ‖ π_ref) [nats]"),
           ("length", "reply length [tokens]"), ("truncated", "truncated share")]


def rl_block(rl: Any) -> str:
    """An RL stage's held-out evaluations and per-iteration curves (``experiments.rl.train``)."""
    rows = [[label, num(dig(rl, "before", key)), num(dig(rl, "after", key))] for key, label in RL_KEYS]
    curves = dig(rl, "curves")
    per_iteration = table(
        ["iteration", "reward", "k1 KL", "exact KL", "reply length", "seconds"],
        [[str(i + 1), num(a), num(b), num(c), num(d, 1), num(e, 0)] for i, (a, b, c, d, e) in enumerate(zip(
            dig(curves, "reward"), dig(curves, "kl_to_reference"), dig(curves, "exact_kl_to_reference"),
            dig(curves, "response_length"), dig(curves, "seconds")))],
    ) if isinstance(dig(curves, "reward"), list) else f"Curves: {curves}"
    return "\n\n".join([
        f"Held-out prompts ({num(dig(rl, 'after', 'prompts'))}), one sampled and one greedy reply each:",
        table(["held-out metric", "before RL", "after RL"], rows), "Per iteration (the training batch):", per_iteration,
    ])


def render_rl(r: dict) -> str:
    samples = {"before": dig(r, "before", "samples"), "after": dig(r, "after", "samples")}
    return "\n\n".join([
        f"Reward `{dig(r, 'reward')}`, policy from `{dig(r, 'init') or dig(r, 'model')}`; {num(dig(r, 'data', 'train_prompts'))} "
        f"training and {num(dig(r, 'data', 'eval_prompts'))} held-out prompts.",
        rl_block(r), text_samples(samples, "reward"), seconds_line(r),
    ])


def headline_rl(r: dict) -> str:
    return (f"held-out reward {num(dig(r, 'before', 'reward'))} → {num(dig(r, 'after', 'reward'))} at exact KL "
            f"{num(dig(r, 'after', 'kl'))}")


def render_irl(r: dict) -> str:
    rm = dig(r, "reward_model")
    discriminator = table(
        ["discriminator (held-out demonstration vs Q reply pairs)", "before training", "after training"],
        [[label, with_se(dig(rm, "before"), key), with_se(dig(rm, "after"), key)] for key, label in RM_KEYS],
    )
    nll = table(["held-out demonstrations under the policy", "before RL (Q)", "after RL"],
                [["NLL [nats / reply token]", num(dig(r, "demo_nll", "before", "nll"), 4), num(dig(r, "demo_nll", "after", "nll"), 4)]])
    samples = {"before": dig(r, "rl", "before", "samples"), "after": dig(r, "rl", "after", "samples")}
    return "\n\n".join([
        f"Method `{dig(r, 'method')}` (variant `{dig(r, 'variant')}`), model `{dig(r, 'model')}`; "
        f"{num(dig(r, 'demonstrations', 'train'))} training and {num(dig(r, 'demonstrations', 'eval'))} held-out "
        f"demonstrations; RL KL coefficient β/std = {num(dig(r, 'kl_coef'), 3)}.",
        discriminator, nll, rl_block(dig(r, "rl")), text_samples(samples, "reward"), seconds_line(r),
    ])


def headline_irl(r: dict) -> str:
    return (f"discriminator accuracy {with_se(dig(r, 'reward_model', 'after'), 'accuracy')}; demonstrations' NLL "
            f"{num(dig(r, 'demo_nll', 'before', 'nll'))} → {num(dig(r, 'demo_nll', 'after', 'nll'))}")


SFT_TEST = "tests/test_text_experiments.py::test_sft_lowers_held_out_nll_of_assistant_tokens_exactly_as_a_per_token_loop"


def findings_sft(runs: dict) -> list[Finding]:
    r = runs["sft"]
    before, after = dig(r, "before", "nll"), dig(r, "after", "nll")
    return [
        finding(
            "LoRA SFT of SmolLM2-135M-Instruct on GSM8K's worked answers lowers the held-out answers' NLL per reply "
            "token (assistant tokens only) at every evaluation.",
            f"{num(before, 4)} → {num(after, 4)} nats/token over {num(dig(r, 'after', 'tokens'))} tokens of "
            f"{num(dig(r, 'eval_examples'))} held-out answers; at the evaluations "
            f"{', '.join(num(dig(e, 'nll'), 4) for e in dig(r, 'curves', 'eval')) if isinstance(dig(r, 'curves', 'eval'), list) else '⚠'}.",
            isinstance(dig(r, "curves", "eval"), list) and numbers(before, after) and after < before
            and all(b > a for b, a in pairwise([dig(e, "nll") for e in dig(r, "curves", "eval")])),
            SFT_TEST,
        ),
    ]


DPO_TEXT_TEST = "tests/test_text_experiments.py::test_dpo_raises_held_out_accuracy_and_its_metrics_match_brute_force"
KTO_TEXT_TEST = "tests/test_text_experiments.py::test_kto_separates_desirable_from_undesirable_and_its_metrics_match_brute_force"


def eval_series(r: dict, key: str) -> list:
    evals = dig(r, "curves", "eval")
    return [dig(e, key) for e in evals] if isinstance(evals, list) else []


def rises(values: list) -> bool:
    """Strictly increasing numbers (at least two)."""
    return len(values) >= 2 and numbers(*values) and all(b > a for a, b in pairwise(values))


def series(values: list, digits: int = 3) -> str:
    return " → ".join(num(v, digits) for v in values) if values else "⚠ no evaluations"


def final_margin_and_accuracy(after: Any) -> tuple:
    """``(margin, margin_se, accuracy, accuracy_se)`` of held-out metrics after training."""
    return tuple(dig(after, k) for k in ("margin", "margin_se", "accuracy", "accuracy_se"))


def findings_dpo(runs: dict) -> list[Finding]:
    r = runs["dpo"]
    margin, margin_se, accuracy, accuracy_se = final_margin_and_accuracy(dig(r, "after"))
    margins, losses = eval_series(r, "margin"), eval_series(r, "loss")
    return [
        finding(
            "DPO with LoRA on the LLaMA-Factory ShareGPT pairs moves the held-out pairs the right way: the implicit-reward "
            "margin r(x, y+) − r(x, y−) grows and the held-out DPO loss falls at every evaluation.",
            f"Margin {series(margins)}, loss {series(losses, 4)} at steps "
            f"{series(eval_series(r, 'step'), 0)} on {num(dig(r, 'eval_pairs'))} held-out pairs.",
            rises(margins) and rises([-x for x in losses] if numbers(*losses) else []),
            DPO_TEXT_TEST,
        ),
        finding(
            "**Inconclusive** at this size: on 63 held-out pairs neither the final margin (against 0) nor the pairwise "
            "accuracy (against chance, 0.5) is two standard errors clear of its null; the design detects a margin above "
            "about 2 × its standard error and an accuracy above about 0.62. A larger held-out set or a longer run is "
            "needed to decide whether 60 CPU steps already separate the pairs.",
            f"Margin {num(margin)} ± {num(margin_se)}, accuracy {num(accuracy)} ± {num(accuracy_se)} (± one standard "
            "error: per-pair margins, binomial accuracy).",
            numbers(margin, margin_se, accuracy, accuracy_se) and margin - 2 * margin_se <= 0 and accuracy - 2 * accuracy_se <= 0.5,
            DPO_TEXT_TEST,
        ),
    ]


def findings_kto(runs: dict) -> list[Finding]:
    r = runs["kto"]
    after = dig(r, "after")
    margin, margin_se, accuracy, accuracy_se = final_margin_and_accuracy(after)
    margins = eval_series(r, "margin")
    desirable, undesirable = dig(after, "reward_desirable"), dig(after, "reward_undesirable")
    return [
        finding(
            "KTO with LoRA on the LLaMA-Factory KTO demo separates held-out desirable from undesirable replies: the margin "
            "between their mean implicit rewards grows at every evaluation and ends more than two standard errors above 0.",
            f"Margin {series(margins)} at steps {series(eval_series(r, 'step'), 0)}; final {num(margin)} ± {num(margin_se)} "
            f"on {num(dig(r, 'eval_examples'))} held-out replies ({num(dig(after, 'desirable'))} desirable).",
            rises(margins) and above(margin, margin_se, 0.0),
            KTO_TEXT_TEST,
        ),
        finding(
            "The sign accuracy (r > 0 for desirable, r < 0 for undesirable) stays at chance: both mean rewards fall below 0 "
            "(KTO moves rewards against its reference point z0, which falls too), so the sign of r alone does not read the "
            "separation the margin shows.",
            f"Sign accuracy {num(accuracy)} ± {num(accuracy_se)}; mean r desirable {num(desirable)}, undesirable "
            f"{num(undesirable)}; held-out z0 {num(dig(after, 'kl'))}.",
            numbers(accuracy, accuracy_se, desirable, undesirable) and abs(accuracy - 0.5) < 2 * accuracy_se
            and desirable < 0 and undesirable < desirable,
            KTO_TEXT_TEST,
        ),
    ]


RM_TEXT_TEST = "tests/test_rm_experiment.py::test_head_learns_separable_preferences"


def findings_rm(runs: dict) -> list[Finding]:
    r = runs["rm"]
    accuracy, se, pairs = dig(r, "after", "accuracy"), dig(r, "after", "accuracy_se"), dig(r, "after", "pairs")
    hh = runs.get("hh_rlhf", {})
    baseline, baseline_pairs = dig(hh, "reward_model", "test_accuracy"), dig(hh, "reward_model", "test_pairs")
    baseline_se = math.sqrt(baseline * (1 - baseline) / baseline_pairs) if numbers(baseline, baseline_pairs) and baseline_pairs > 0 else float("nan")
    difference_se = math.sqrt(se ** 2 + baseline_se ** 2) if numbers(se, baseline_se) else float("nan")
    difference = accuracy - baseline if numbers(accuracy, baseline) else float("nan")
    return [
        finding(
            "A Bradley-Terry head on SmolLM2-135M-Instruct's frozen last-token features reads harmlessness: its held-out "
            "pairwise accuracy on the HH-RLHF harmless pairs is more than two standard errors above chance.",
            f"{num(accuracy)} ± {num(se)} on {num(pairs)} held-out pairs (binomial standard error).",
            above(accuracy, se, 0.5), RM_TEXT_TEST,
        ),
        finding(
            "On the same 370 held-out pairs (`hh_rlhf`'s split) it scores higher than the MiniLM linear head of `hh_rlhf`, "
            "but by less than two standard errors of an unpaired comparison: suggestive, not decided at this size (the "
            "records keep no per-pair predictions for a paired test).",
            f"SmolLM2 head {num(accuracy)} ± {num(se)} vs MiniLM head {num(baseline)} ± {num(baseline_se)} "
            f"({num(baseline_pairs)} pairs); difference {num(difference)} ± {num(difference_se)}.",
            numbers(difference, difference_se) and pairs == baseline_pairs and 0 < difference < 2 * difference_se,
            RM_TEXT_TEST,
        ),
    ]


RL_TEXT_TEST = "tests/test_rl_experiment.py::test_rloo_learns_a_reward_a_tiny_policy_can_learn"


def findings_rl(runs: dict) -> list[Finding]:
    r = runs["rl"]
    rewards, exact = dig(r, "curves", "reward"), dig(r, "curves", "exact_kl_to_reference")
    slope, slope_se = linear_trend(rewards)
    mean_reward = sum(rewards) / len(rewards) if isinstance(rewards, list) and rewards and numbers(*rewards) else float("nan")
    before, after = dig(r, "before"), dig(r, "after")
    return [
        finding(
            "`jirl run rl --set init=runs/sft` runs RLOO with LoRA from the SFT policy against the GSM8K exact-match "
            "verifier end to end on the CPU, and the policy moves away from its start: the full-vocabulary KL of each "
            "iteration's samples to the SFT policy grows from 0, and the held-out KL after training is above 0.",
            f"Exact KL per iteration {series(exact if isinstance(exact, list) else [])}; held-out exact KL "
            f"{num(dig(before, 'kl'))} → {num(dig(after, 'kl'))} on {num(dig(after, 'prompts'))} prompts.",
            isinstance(exact, list) and len(exact) >= 2 and numbers(*exact) and exact[-1] > exact[0] and numbers(dig(after, "kl"))
            and dig(after, "kl") > 0,
            RL_TEXT_TEST,
        ),
        finding(
            "Whether RL raises GSM8K accuracy is **not measured** at this size: the verifier pays for a few percent of "
            "the sampled replies, so the training reward shows no trend (its least-squares slope is within two standard "
            "errors of zero) and the held-out greedy accuracy on 16 prompts cannot resolve a change below about 1/16. "
            "`--set preset=gpu` (256 held-out prompts, 200 iterations of 256 replies) is sized to measure it.",
            f"Training reward per iteration {series(rewards if isinstance(rewards, list) else [])} (mean {num(mean_reward)}; "
            f"slope {num(slope, 4)} ± {num(slope_se, 4)}); held-out sampled reward {num(dig(before, 'reward'))} → "
            f"{num(dig(after, 'reward'))}, greedy {num(dig(before, 'greedy_reward'))} → {num(dig(after, 'greedy_reward'))}.",
            numbers(mean_reward, slope, slope_se) and mean_reward < 0.1 and abs(slope) < 2 * slope_se,
            RL_TEXT_TEST,
        ),
    ]


IRL_TEXT_TEST = "tests/test_irl_experiment.py::test_jirl_run_irl_end_to_end_on_a_tiny_model"
IRL_NLL_TEST = "tests/test_irl_experiment.py::test_reply_nll_is_sfts_held_out_nll_and_each_replys_mean_a_loop"


def irl_rl_findings(r: dict, change: Any, rewards: Any, slope: float, slope_se: float) -> list[Finding]:
    """The RL stage of ``irl``: the check without the learned reward, and the learned reward's trend."""
    mean, se, replies = dig(change, "mean"), dig(change, "se"), dig(change, "replies")
    before, after = dig(r, "demo_nll", "before", "nll"), dig(r, "demo_nll", "after", "nll")
    return [
        finding(
            "RL against the learned AfD reward moves the policy towards the demonstrations, measured without the learned "
            "reward: the held-out GSM8K answers' NLL per reply token under the policy falls, the paired per-answer "
            "difference more than two standard errors below zero. The move is small at 8 CPU iterations (compare `sft`'s "
            "fall on GSM8K answers with 30 steps of the demonstrations themselves).",
            f"Per answer, after − before: {num(mean, 4)} ± {num(se, 4)} nats/token ({num(replies)} held-out answers); pooled "
            f"{num(before, 4)} → {num(after, 4)}; exact KL to Q of the last training batch "
            f"{num(dig(r, 'rl', 'curves', 'exact_kl_to_reference', -1))} nats.",
            numbers(mean, se) and mean + 2 * se < 0, IRL_NLL_TEST,
        ),
        finding(
            "The learned reward of the training batches shows no trend over 8 iterations of 32 replies (least-squares "
            "slope within two standard errors of zero): the per-iteration reward is too noisy at this size to show the "
            "optimisation that the demonstrations' NLL reveals.",
            f"Learned (normalised) reward per iteration {series(rewards if isinstance(rewards, list) else [])}; slope "
            f"{num(slope, 4)} ± {num(slope_se, 4)}; held-out sampled reply {num(dig(r, 'rl', 'before', 'reward'))} → "
            f"{num(dig(r, 'rl', 'after', 'reward'))} (one reply to each of {num(dig(r, 'rl', 'after', 'prompts'))} prompts).",
            numbers(slope, slope_se) and abs(slope) < 2 * slope_se, IRL_TEXT_TEST,
        ),
    ]


def findings_irl(runs: dict) -> list[Finding]:
    r = runs["irl"]
    rm = dig(r, "reward_model", "after")
    accuracy, se, pairs = dig(rm, "accuracy"), dig(rm, "accuracy_se"), dig(rm, "pairs")
    change = dig(r, "demo_nll", "change_per_reply")
    rewards = dig(r, "rl", "curves", "reward")
    slope, slope_se = linear_trend(rewards)
    return [
        finding(
            "AfD's discriminator on SmolLM2-135M's frozen features tells GSM8K's worked answers from the model's own "
            "replies to the same held-out questions: held-out pairwise accuracy more than two standard errors above chance.",
            f"{num(accuracy)} ± {num(se)} on {num(pairs)} held-out (demonstration, Q reply) pairs; before training "
            f"{num(dig(r, 'reward_model', 'before', 'accuracy'))}.",
            above(accuracy, se, 0.5), IRL_TEXT_TEST,
        ),
    ] + irl_rl_findings(r, change, rewards, slope, slope_se)


# ---------------------------------------------------------------------------------------------
# The sections




# ---------------------------------------------------------------------------------------------
# bt_vs_classification (Sun et al. 2025)


def ci(cell: Any, digits: int = 2) -> str:
    """``mean [low, high]`` of an ``{"mean", "low", "high"}`` interval cell."""
    if isinstance(cell, Missing) or not isinstance(cell, dict):
        return str(cell)
    return f"{num(dig(cell, 'mean'), digits)} [{num(dig(cell, 'low'), digits)}, {num(dig(cell, 'high'), digits)}]"


BTC_METHODS = ("bt_mlp", "clf_mlp", "clf_gbdt")
BTC_VERDICTS = (
    ("classification_beats_bt", "clf_mlp", "1. CLF-MLP beats BT-MLP at label error ≥ 10 %"),
    ("classification_beats_bt", "clf_gbdt", "1. CLF-GBDT beats BT-MLP at label error ≥ 10 %"),
    ("cross_prompt_beats_same_prompt", "cross_beats_same", "2. cross-prompt beats same-prompt pairing"),
    ("cross_prompt_beats_same_prompt", "largest_for_similar", "2. … most for 'similar' pairs"),
    ("classification_grows_with_quantity", "clf_mlp", "3. CLF-MLP gain grows faster with annotations than BT's"),
    ("classification_grows_with_quantity", "clf_gbdt", "3. CLF-GBDT gain grows faster with annotations than BT's"),
)


def btc_setting(r: dict) -> tuple[str, dict]:
    settings = dig(r, "settings")
    name = next(iter(settings)) if isinstance(settings, dict) and settings else "?"
    return name, dig(r, "settings", name)


def render_bt_vs_classification(r: dict) -> str:
    name, s = btc_setting(r)
    info = dig(s, "info")
    n_max = max(dig(s, "quantities")) if isinstance(dig(s, "quantities"), list) else Missing("quantities")
    base = dig(r, "protocol", "base_pairing")
    lines = [f"**{name}**: {num(dig(info, 'train_prompts'))} training prompts × {num(dig(info, 'responses_per_prompt'))} responses, "
             f"{num(dig(info, 'test_prompts'))} test prompts × {num(dig(info, 'test_responses'))} responses; embeddings: "
             f"{dig(info, 'embedding')}; gold reward std s = {num(dig(info, 'gold_scale'))}; best-of-{num(dig(s, 'best_of_n', -1) if isinstance(dig(s, 'best_of_n'), list) else None)} "
             f"by the gold itself gains {num(dig(s, 'gold_selects', 'gain'))}."]
    if name == "text":
        gold = dig(info, "gold_info")
        lines.append(f"Gold: the `jirl run rm` model at `{dig(info, 'gold')}` ({dig(gold, 'backbone')}), held-out HH accuracy "
                     f"{num(dig(gold, 'accuracy'))} ± {num(dig(gold, 'accuracy_se'))} on {num(dig(gold, 'pairs'))} pairs; replies of "
                     f"`{dig(info, 'policy')}` ({num(dig(info, 'mean_reply_tokens'), 1)} tokens on average, "
                     f"{num(dig(info, 'finished_replies'))} finished before the token limit).")
    rows = []
    for key, cell in (dig(s, "cells").items() if isinstance(dig(s, "cells"), dict) else []):
        if dig(cell, "pairing") == base:
            rows.append([f"{num(dig(cell, 'quality'), 2)}", num(dig(cell, "quantity")), num(dig(cell, "label_error", "mean")),
                         *[f"{ci(dig(cell, m, 'gain'))} / {num(dig(cell, m, 'accuracy', 'mean'))}" for m in BTC_METHODS]])
    grid = table(["q", "annotations", "label error", *[f"{m} gain [95 %] / acc" for m in BTC_METHODS]], rows or [["⚠ no cells"] + [""] * 5])
    prows = []
    for key, cell in (dig(s, "cells").items() if isinstance(dig(s, "cells"), dict) else []):
        if dig(cell, "quantity") == n_max and dig(cell, "quality") == dig(r, "protocol", "pairing_quality"):
            prows.append([str(dig(cell, "pairing")), num(dig(cell, "label_error", "mean")), *[ci(dig(cell, m, "gain")) for m in BTC_METHODS]])
    pairing = table(["pairing", "label error", *[f"{m} gain [95 %]" for m in BTC_METHODS]], prows or [["⚠ no cells"] + [""] * 4])
    vrows = [[label, ci(dig(s, "findings", f, "verdicts", v), 3), num(dig(s, "findings", f, "verdicts", v, "detectable")),
              str(dig(s, "findings", f, "verdicts", v, "verdict"))] for f, v, label in BTC_VERDICTS]
    verdicts = table(["paper's finding", "our difference [95 %]", "detectable (80 % power)", "verdict"], vrows)
    paper = dig(r, "paper", "best_of_500_gain_helpful_gemma2b")
    return ("\n\n".join(lines) + f"\n\nQuality × quantity grid ({code(base)} pairs; gain = best-of-N gold minus a random pick):\n\n{grid}"
            f"\n\nPairings at q = {num(dig(r, 'protocol', 'pairing_quality'), 2)}, {num(n_max)} annotations:\n\n{pairing}"
            f"\n\nThe paper's findings, tested ({num(dig(r, 'protocol', 'num_seeds'))} seeds, paired over seeds; Sun et al.'s "
            f"Helpful/Gemma-2B best-of-500 gains for comparison: BT-MLP {num(dig(paper, 'bt_mlp'), 2)}, CLF-MLP "
            f"{num(dig(paper, 'clf_mlp'), 2)}, CLF-LGB {num(dig(paper, 'clf_gbdt'), 2)}):\n\n{verdicts}")


def headline_bt_vs_classification(r: dict) -> str:
    name, s = btc_setting(r)
    short = ("1 CLF-MLP", "1 CLF-GBDT", "2 cross", "2 similar", "3 CLF-MLP", "3 CLF-GBDT")
    return f"{name}: " + ", ".join(f"{tag} {dig(s, 'findings', f, 'verdicts', v, 'verdict')}" for tag, (f, v, _) in zip(short, BTC_VERDICTS))


# The verdicts each record gave, stated after reading it (a finding fails when a rerun gives another).
BTC_STATED = {
    "bt_vs_classification_synthetic": {
        ("classification_beats_bt", "clf_mlp"): "inconclusive", ("classification_beats_bt", "clf_gbdt"): "not reproduced",
        ("cross_prompt_beats_same_prompt", "cross_beats_same"): "reproduced",
        ("cross_prompt_beats_same_prompt", "largest_for_similar"): "reproduced",
        ("classification_grows_with_quantity", "clf_mlp"): "inconclusive",
        ("classification_grows_with_quantity", "clf_gbdt"): "inconclusive",
    },
    "bt_vs_classification_text": {
        ("classification_beats_bt", "clf_mlp"): "inconclusive", ("classification_beats_bt", "clf_gbdt"): "inconclusive",
        ("cross_prompt_beats_same_prompt", "cross_beats_same"): "inconclusive",
        ("cross_prompt_beats_same_prompt", "largest_for_similar"): "inconclusive",
        ("classification_grows_with_quantity", "clf_mlp"): "inconclusive",
        ("classification_grows_with_quantity", "clf_gbdt"): "inconclusive",
    },
}
BTC_CONTROL = {
    "bt_vs_classification_synthetic": {"bt_mlp": True, "clf_mlp": True, "clf_gbdt": True},
    "bt_vs_classification_text": {"bt_mlp": True, "clf_mlp": True, "clf_gbdt": False},
}
BTC_PAPER = {
    "classification_beats_bt": "classification reward models beat BT-MLP once label error is 10 % or more",
    "cross_prompt_beats_same_prompt": "cross-prompt annotation beats same-prompt annotation, most for 'similar' pairs",
    "classification_grows_with_quantity": "classification's best-of-N gain grows faster with the number of annotations than BT's",
}
BTC_STAT_TEST = "tests/test_bt_vs_classification.py::test_findings_reproduce_what_the_data_say_and_fail_when_it_is_reversed"
BTC_PAIRING_TEST = "tests/test_bt_vs_classification.py::test_cross_prompt_similar_pairs_beat_same_prompt_similar_pairs_at_a_small_size"
BTC_RUN_TEST = "tests/test_bt_vs_classification.py::test_synthetic_study_learns_the_gold_and_reports_every_cell"
BTC_TEXT_TEST = "tests/test_bt_vs_classification.py::test_text_pool_scores_with_the_gold_and_embeds_the_decoded_text"


def btc_verdict_evidence(s: Any, key: str) -> str:
    verdicts = dig(s, "findings", key, "verdicts")
    return "; ".join(f"{sub}: {dig(v, 'verdict')}, difference {ci(v, 3)} (detectable {num(dig(v, 'detectable'))})"
                     for sub, v in (verdicts.items() if isinstance(verdicts, dict) else []))


def findings_bt_vs_classification(runs: dict) -> list[Finding]:
    out = []
    for folder, stated in BTC_STATED.items():
        r = runs.get(folder)
        if r is None or not stated:
            continue
        name, s = btc_setting(r)
        control = dig(s, "positive_control", "gain")
        control_ok = {m: numbers(dig(control, m, "low")) and dig(control, m, "low") > 0 for m in BTC_METHODS}
        stated_control = BTC_CONTROL[folder]
        out.append(finding(
            f"{name}: positive control (clean annotator, most annotations): best-of-N under the learned reward beats a random "
            f"pick (gain interval above 0) for {', '.join(m for m in BTC_METHODS if stated_control[m]) or 'no method'}"
            + (f"; not for {', '.join(m for m in BTC_METHODS if not stated_control[m])}, so this setting cannot decide the "
               "comparisons below" if not all(stated_control.values()) else ""),
            f"{dig(s, 'positive_control', 'cell')}: " + ", ".join(f"{m} {ci(dig(control, m))}" for m in BTC_METHODS)
            + f"; the gold itself gains {num(dig(s, 'gold_selects', 'gain'))}.",
            control_ok == stated_control, BTC_RUN_TEST if name == "synthetic" else BTC_TEXT_TEST,
        ))
        for key, paper in BTC_PAPER.items():
            subs = {sub: v for (k, sub), v in stated.items() if k == key}
            got = {sub: dig(s, "findings", key, "verdicts", sub, "verdict") for sub in subs}
            out.append(finding(
                f"{name}: Sun et al.'s \"{paper}\" — " + ", ".join(f"{sub} {v}" for sub, v in subs.items()) + ".",
                btc_verdict_evidence(s, key) + f" ({dig(s, 'findings', key, 'statistic')}).",
                got == subs, BTC_PAIRING_TEST if (name, key) == ("synthetic", "cross_prompt_beats_same_prompt") else BTC_STAT_TEST,
            ))
        if name == "text":
            gold = dig(s, "info", "gold_info")
            rm_after = dig(runs.get("rm", {}), "after")
            hh = runs.get("hh_rlhf", {})
            base, base_pairs = dig(hh, "reward_model", "test_accuracy"), dig(hh, "reward_model", "test_pairs")
            base_se = math.sqrt(base * (1 - base) / base_pairs) if numbers(base, base_pairs) and base_pairs > 0 else float("nan")
            acc, se = dig(gold, "accuracy"), dig(gold, "accuracy_se")
            diff_se = math.sqrt(se ** 2 + base_se ** 2) if numbers(se, base_se) else float("nan")
            out.append(finding(
                "text: the gold reward model (the `rm` section's SmolLM2-135M head) ranks held-out human HH-RLHF harmless "
                "preferences above the MiniLM linear head's 0.559, by less than two standard errors of an unpaired comparison "
                "(higher, not decided); it is the record's own model (same accuracy as the `rm` record).",
                f"gold {num(acc)} ± {num(se)} vs MiniLM {num(base)} ± {num(base_se)} on {num(dig(gold, 'pairs'))} pairs: "
                f"+{num(acc - base if numbers(acc, base) else None)} ± {num(diff_se)}.",
                numbers(acc, base, diff_se) and 0 < acc - base < 2 * diff_se and acc == dig(rm_after, "accuracy"),
                BTC_TEXT_TEST,
            ))
    return out


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
    findings: Callable[[dict], list[Finding]]  # {folder: results} of the runs present -> the stated findings
    published: str  # what the published work reports
    published_short: str  # for the summary table
    compared_with: tuple[str, ...] = ()  # other sections' record folders whose results the findings also read


SECTIONS: tuple[Section, ...] = (
    Section(
        "oracle", "Exact reward/KL frontier",
        "The exact oracle solves π*_β ∝ π_ref exp(R/β) on a task's token tree for a sweep of β and samples expert "
        "demonstrations from π* at `demo_beta`; this is the reference every other experiment is measured against.",
        (RunSpec("oracle"),), "frontier.png",
        render_oracle, headline_oracle, findings_oracle,
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
        render_quickstart, headline_quickstart, findings_quickstart,
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
        render_rm_noise, headline_rm_noise, findings_rm_noise,
        "Sun et al. (ICLR 2025, \"Rethinking Bradley-Terry models in preference-based reward modeling\") report that an "
        "order-consistent classification reward model is competitive with BT and **more robust when annotations are "
        "noisy**.",
        "Sun et al. ICLR 2025: classification RM more robust than BT under label noise",
    ),
    Section(
        "rl_oracle", "RL against the exact optimum",
        "REINFORCE with a baseline, RLOO, PPO (GAE critic) and GRPO's advantage (`grpo_kl_in_reward`), trained with the KL "
        "in the reward at the oracle's β, so the target is exactly π*; GRPO as Shao et al. run it (`grpo`: k3 KL in the "
        "loss at β = 0.04, token mean per response), whose target is not π*; gap fraction and KL(π ‖ π*) computed exactly.",
        (RunSpec("rl_oracle_bigram", caption="`bigram`, 3 letters, horizon 4"),
         RunSpec("rl_oracle_sort", ("task.name=sort", "task.args=num_digits=2,num_symbols=3", "iterations=300",
                                    "algorithms=reinforce_baseline,rloo,grpo,grpo_kl_in_reward,ppo,dr_grpo_kl_in_reward"),
                 "`sort`, sparse verifiable reward"),
         RunSpec("rl_oracle_sort_seed1234", ("seed=1234", "task.name=sort", "task.args=num_digits=2,num_symbols=3",
                                             "iterations=300", "algorithms=grpo,grpo_kl_in_reward,rloo"),
                 "`sort` at a second seed: the GRPO recipes and RLOO"),
         RunSpec("rl_oracle_gold_rm", ("task.name=gold_rm", "task.args=num_chars=3,horizon=4", "iterations=1000", "eval_every=50"),
                 "`gold_rm`, a fixed transformer as gold reward")),
        "rl_oracle.png",
        render_rl_oracle, headline_rl_oracle, findings_rl_oracle,
        "No paper measures these estimators against an exact optimum; the claims they bear on: RLOO is competitive with "
        "PPO without a critic (Ahmadian et al. 2024, \"Back to basics\"); GRPO normalises advantages by the group's "
        "standard deviation and puts a k3 KL estimate in the loss (Shao et al. 2024, DeepSeekMath); Liu et al. (2025, Dr. GRPO, \"Understanding R1-Zero-like "
        "training\") argue that this normalisation biases the optimisation and remove it.",
        "RLOO ≈ PPO (Ahmadian et al. 2024); GRPO (Shao et al. 2024) with its k3 KL in the loss; Dr. GRPO (Liu et al. 2025)",
    ),
    Section(
        "dpo_oracle", "Direct preference optimisation against the exact optimum",
        "DPO, cDPO, robust DPO, IPO, hinge, SLiC, SimPO, ORPO and KTO trained offline on BT-labelled pairs of `bigram`, "
        "DPO's error against the number of pairs, and online DPO; KL(π ‖ π*), gold reward and KL(π ‖ π_ref) exactly. "
        "Every loss runs at the oracle's β (the study's one regularisation strength, so that all are measured against "
        "the same π*; the papers' own β differ: DPO 0.1-0.5, SimPO 2-2.5, KTO 0.1) with its paper's other settings: "
        "cDPO and robust DPO with label-flip rate ε = 0.1, IPO with τ = β on sequence sums, SLiC with δ = 1 plus an SFT "
        "term of weight 0.1, SimPO with an absolute margin γ = 0.5 on per-token log-probs and no NLL term, ORPO with "
        "λ = 0.1 plus the chosen response's per-token NLL, KTO with λ_D = λ_U = 1.",
        (RunSpec("dpo_oracle"),), "dpo_oracle.png",
        render_dpo_oracle, headline_dpo_oracle, findings_dpo_oracle,
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
        render_irl_recovery, headline_irl_recovery, findings_irl_recovery,
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
        render_credit_horizon, headline_credit_horizon, findings_credit_horizon,
        "Chan et al. (2024, ABC, \"Dense reward for free in RLHF\"; IMDb, GPT-2): terminal-reward RLHF degrades with "
        "length, from 8.94 at 20–30 tokens to 7.03 ± 1.65 at 140–160, while attention-based credit goes 9.86 → 10.77.",
        "Chan et al. 2024: terminal reward degrades with length, ABC does not",
    ),
    Section(
        "overoptimization", "Reward-model over-optimisation scaling laws",
        "Proxy reward models of several widths trained on nested sets of BT-labelled pairs from the `gold_rm` gold reward; "
        "best-of-n and RLOO (no KL penalty) against each proxy, 3 seeds per proxy; which functional form the gold reward "
        "follows in d = sqrt(KL) is decided by model selection: Gao et al.'s two forms and two generic saturating curves "
        "are fitted on the smaller d and scored by how well they extrapolate to the larger d (R² kept as information); "
        "ensembles and a KL penalty as mitigations.",
        (RunSpec("overoptimization"),), "overoptimization.png",
        render_overoptimization, headline_overoptimization, findings_overoptimization,
        "Gao, Schulman & Hilton (2022, \"Scaling laws for reward model overoptimization\"): the gold reward follows "
        "d(α − βd) under best-of-n and d(α − β log d) under RL, peaking and then falling while the proxy keeps rising; "
        "larger proxies and more data give larger α and smaller β. Coste et al. (2024) find reward-model ensembles "
        "(mean − std, min) reduce over-optimisation.",
        "Gao et al. 2022: gold peaks then falls, fits d(α−βd), d(α−β log d); Coste et al. 2024 ensembles",
    ),
    Section(
        "bt_vs_classification", "BT vs classification reward models, Sun et al.'s protocol",
        "`jirl run bt_vs_classification`: Sun et al.'s pipeline. A policy writes 10 responses per training prompt and "
        "many per test prompt; a gold reward scores them and a *different* frozen backbone embeds them; an annotator of "
        "quality q prefers a with probability σ(q (r_a − r_b) / s) (s the gold std), one pair per prompt drawn by gold "
        "rank (random / middle two 'similar' / extremes 'diverse', within or across prompts); BT-MLP, CLF-MLP (their "
        "1024-512 MLP recipe with early stopping) and CLF-GBDT (LightGBM defaults) train on the embeddings; each picks "
        "best-of-N among random N-subsets of a test prompt's responses (exact over subsets), scored by the gold. Two "
        "settings: synthetic (`gold_rm`'s exact scorer, random letter prompts) and text (HH-RLHF harmless prompts, "
        "SmolLM2-135M-Instruct replies, the `rm` section's reward model as gold, MiniLM embeddings). 5 seeds; every "
        "verdict is a paired 95 % interval over seeds with the difference the design could detect.",
        (RunSpec("bt_vs_classification_synthetic", ("text.enabled=false",), "synthetic: gold_rm"),
         RunSpec("bt_vs_classification_text", ("synthetic.enabled=false", "cache=runs/bt_vs_classification_cache"),
                 "text: HH-RLHF harmless, SmolLM2-135M replies")),
        "bt_vs_classification.png",
        render_bt_vs_classification, headline_bt_vs_classification, findings_bt_vs_classification,
        "Sun, Shen & Ton (ICLR 2025, \"Rethinking Bradley-Terry models in preference-based reward modeling\"), on "
        "Gemma/LLaMA embeddings with gold reward models: classification reward models beat BT except below about 10 % "
        "label error; cross-prompt annotation beats same-prompt, most for 'similar' pairs; classification's gains grow "
        "more steadily with the number of annotations (5k–40k). Helpful/Gemma-2B best-of-500 gains ≈ 1.77 (BT-MLP), "
        "2.98 (CLF-MLP), 2.87 (CLF-LGB).",
        "Sun et al. ICLR 2025: CLF > BT above ~10 % label error; cross-prompt > same-prompt",
        compared_with=("rm", "hh_rlhf"),
    ),
    Section(
        "hh_rlhf", "RLHF of SmolLM2-135M on HH-RLHF harmlessness",
        "RLOO with LoRA adapters on SmolLM2-135M-Instruct against a BT reward model on all-MiniLM-L6-v2 embeddings of "
        "the HH-RLHF harmless pairs, KL to the model itself in the reward; held-out prompts.",
        (RunSpec("hh_rlhf"),), "hh_rlhf.png",
        render_hh_rlhf, headline_hh_rlhf, findings_hh_rlhf,
        "Bai et al. (2022, \"Training a helpful and harmless assistant with RLHF\") train preference models on HH-RLHF "
        "and RLHF 13M–52B models, finding the preference-model reward grows roughly linearly in sqrt(KL) during RL; the "
        "KL-in-reward recipe is InstructGPT's (Ouyang et al. 2022), the estimator RLOO (Ahmadian et al. 2024).",
        "Bai et al. 2022: PM score rises ~ linearly in sqrt(KL) during RLHF",
    ),
    Section(
        "sft", "Your model, your data: SFT of SmolLM2-135M on GSM8K",
        "`jirl run sft`: LoRA (rank 8, attention) SFT of SmolLM2-135M-Instruct on GSM8K train's question/answer pairs in "
        "the model's chat template, the loss on assistant tokens only; 10 % of the questions held out. A CPU-sized run of "
        "the generic trainer, and the policy `rl` starts from below.",
        (RunSpec("sft", ("data=../shared/data/gsm8k/train.jsonl.gz",)),), "sft.png",
        render_sft, headline_sft, findings_sft,
        "SFT minimises KL(π_data ‖ π_θ) up to the data's entropy (behaviour cloning); the check is that held-out "
        "NLL falls, as in TRL's `SFTTrainer` evaluation loss. No published number is reproduced.",
        "behaviour cloning: held-out NLL falls",
    ),
    Section(
        "dpo", "Your model, your data: DPO of SmolLM2-135M on ShareGPT pairs",
        "`jirl run dpo`: DPO (β = 0.1) with LoRA (rank 8, attention) of SmolLM2-135M-Instruct on LLaMA-Factory's "
        "`dpo_en_demo` (300 ShareGPT preference rows, the model's chat template, prompts cut to their last 64 tokens and "
        "replies to 64), a quarter of the prompts held out; 60 steps of 4 pairs on the CPU. The reference is the model "
        "itself (the adapters start at zero).",
        (RunSpec("dpo", ("model=smollm2-135m-instruct", "data=../shared/data/llamafactory-demo/dpo_en_demo.json.gz")),),
        "dpo.png", render_dpo, headline_dpo, findings_dpo,
        "Rafailov et al. (2023, DPO) optimise the implicit reward β log π/π_ref on preference pairs; TRL's `DPOTrainer` "
        "logs its held-out accuracy and margins (`rewards/accuracies`, `rewards/margins`), the metrics here. No "
        "published number is for this data and model.",
        "DPO (Rafailov et al. 2023): held-out reward margin and accuracy rise",
    ),
    Section(
        "kto", "Your model, your data: KTO of SmolLM2-135M on unpaired judgements",
        "`jirl run kto`: KTO (β = 0.1, λ_D = λ_U = 1) with LoRA of SmolLM2-135M-Instruct on LLaMA-Factory's "
        "`kto_en_demo` (300 ShareGPT replies tagged desirable or not), a fifth of the prompts held out; 50 steps of 8.",
        (RunSpec("kto", ("data=../shared/data/llamafactory-demo/kto_en_demo.json.gz",)),),
        "kto.png", render_kto, headline_kto, findings_kto,
        "Ethayarajh et al. (2024, KTO) learn from unpaired desirable/undesirable labels with a prospect-theoretic value "
        "relative to a reference point z0 ≈ KL(π ‖ π_ref); TRL's `KTOTrainer` logs the chosen and rejected rewards. No "
        "published number is for this data and model.",
        "KTO (Ethayarajh et al. 2024): desirable replies' reward above undesirable ones'",
    ),
    Section(
        "rm", "Your model, your data: a SmolLM2-135M reward model on HH-RLHF harmless",
        "`jirl run rm`: a scalar head read at the reply's last token of SmolLM2-135M-Instruct (frozen; the head alone "
        "trains on cached features, BT loss) on the 1,843 HH-RLHF harmless pairs in the model's chat template, split as "
        "`hh_rlhf`, `rm_noise` and `HHPreferences` split them (the same 370 held-out pairs). The saved model is a reward "
        "for `jirl run rl --set reward=runs/rm` (`tests/test_rl_experiment.py::"
        "test_reward_model_folder_scores_with_experiments_rm_load_reward_model`).",
        (RunSpec("rm"),), "rm.png", render_rm, headline_rm, findings_rm,
        "Ouyang et al. (2022, InstructGPT) and Bai et al. (2022) train reward models as a scalar head on a pretrained "
        "decoder with the BT loss; Bai et al. find preference-model accuracy on HH growing with model size (13M–52B). "
        "The comparison here is jirl's own MiniLM linear head (`hh_rlhf`, 0.559 on the same pairs).",
        "BT head on a decoder (Ouyang et al. 2022); vs `hh_rlhf`'s MiniLM head on the same pairs",
        compared_with=("hh_rlhf",),
    ),
    Section(
        "rl", "Your model, your data: RL of the SFT policy with the GSM8K verifier",
        "`jirl run rl --set init=runs/sft`: RLOO (8 prompts × 4 replies per iteration, KL to the SFT policy in the reward "
        "at β = 0.05) with fresh LoRA adapters on the `sft` run's policy, against GSM8K's exact-match verifier of the "
        "final answer, replies up to 128 tokens; held-out GSM8K questions evaluated before and after.",
        (RunSpec("rl", ("init=runs/sft", "max_new_tokens=128", "iterations=6")),), "rl.png", render_rl, headline_rl, findings_rl,
        "Shao et al. (2024, DeepSeekMath) and Ahmadian et al. (2024) raise GSM8K accuracy of 1B–7B models with "
        "verifier-rewarded RL over hundreds of iterations; nothing at 135M parameters and six CPU iterations is comparable.",
        "verifier RL on GSM8K (Shao et al. 2024): not comparable at this size",
    ),
    Section(
        "irl", "Your model, your data: IRL (AfD) from GSM8K demonstrations",
        "`jirl run irl`: AfD on real text. 128 GSM8K worked answers (replies cut at 96 tokens) are the demonstrations "
        "P; SmolLM2-135M-Instruct (Q) replies once to each question; a BT head on the model's frozen last-token "
        "features learns to prefer the demonstration (the AfD discriminator, saved as an `rm` run), and RLOO with LoRA "
        "from Q optimises it with the KL to Q at β = 1 on the raw reward (β/std on the normalised one), the coefficient "
        "at which the optimum is P. The check that does not read the learned reward: the held-out demonstrations' NLL "
        "under the policy before and after RL.",
        (RunSpec("irl"),), "irl.png", render_irl, headline_irl, findings_irl,
        "Sun & van der Schaar (2024, \"Inverse-RLignment\", AfD) train a reward model to tell demonstrations from the "
        "SFT or initial policy's samples, and report that optimising it improves on the starting policy in held-out "
        "evaluations (HH-RLHF); here the scale is 135M parameters and 8 RL iterations on a CPU.",
        "AfD (Sun & van der Schaar 2024): discriminator reward, RL towards the demonstrations",
    ),
)


# ---------------------------------------------------------------------------------------------
# Result records on disk: results/<folder>/{results.json, run.json, <figure>.png}


@dataclasses.dataclass
class Run:
    spec: RunSpec
    experiment: str
    results: dict | None
    info: dict | None  # run.json
    figure: Path | None  # the plot in the record folder, if any


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


def load_run(results_dir: Path, section: Section, spec: RunSpec) -> Run:
    folder = results_dir / spec.folder
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
    """The command that wrote the record: ``run.json``'s own, else rebuilt from its overrides."""
    info = run.info or {}
    if isinstance(info.get("command"), str):
        return info["command"]
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


def provenance(run: Run) -> str:
    """Commit, versions, device and date from ``run.json`` (older records lack them)."""
    info = run.info or {}
    commit = info.get("git_commit")
    if not commit:
        return "provenance not recorded"
    versions = info.get("versions") or {}
    device = info.get("device") or {}
    where = device.get("cpu_model") if device.get("platform") == "cpu" else device.get("kind")
    cores = f", {device['cpu_count']} cores" if device.get("platform") == "cpu" and device.get("cpu_count") else ""
    return (
        f"commit `{commit[:12]}{'+dirty' if commit.endswith('+dirty') else ''}`, jirl {versions.get('jirl', '?')}, "
        f"JAX {versions.get('jax', '?')}, Flax {versions.get('flax', '?')}, {device.get('platform', '?')} ({where}{cores}), "
        f"{info.get('date', '?')}"
    )


def safe(call: Callable, *args) -> Any:
    """A renderer's output, or a visible error line where a results file has an unexpected shape."""
    try:
        return call(*args)
    except Exception as error:  # noqa: BLE001 - one odd results file must not stop the page
        warn(f"{getattr(call, '__name__', call)} failed: {type(error).__name__}: {error}")
        return f"⚠ could not render ({type(error).__name__}: {error})"


def section_findings(section: Section, runs: list[Run], records: dict[str, dict] | None = None) -> list[Finding]:
    """The section's findings over the runs that have results (and the records of
    ``section.compared_with`` among ``records``, {folder: results} of every section); a renderer
    crash is a failed finding."""
    present = {run.spec.folder: run.results for run in runs if run.results is not None}
    if not present:
        return []
    present.update({folder: (records or {})[folder] for folder in section.compared_with if folder in (records or {})})
    try:
        return section.findings(present)
    except Exception as error:  # noqa: BLE001
        warn(f"findings of {section.experiment} failed: {type(error).__name__}: {error}")
        return [Finding(f"⚠ the findings of {section.experiment} could not be computed", f"{type(error).__name__}: {error}",
                        False, "tests/test_results_files.py::test_every_committed_finding_holds")]


# ---------------------------------------------------------------------------------------------
# The page, its figures and the README's block


HEADER = """# jirl results

<!-- Generated by `python scripts/make_results_page.py` from the records under results/. Do not edit by hand. -->

> **Generated by `python scripts/make_results_page.py`; do not edit this file by hand.** Every number on this page
> is read from a committed record under `results/FOLDER/` (`results.json`, `run.json`, the plot), which the
> command shown next to it wrote into `runs/FOLDER` before `python scripts/make_results_page.py --collect FOLDER`
> copied it. Each record carries its command, git commit, library versions, device and date. The "published" side
> of each comparison is what the cited paper reports, in words; the findings are computed from our files, each with
> the test that checks the same claim at a size the default test run affords. `tests/test_results_files.py`
> rebuilds this page, its figures and the README's results block from `results/` and fails on any difference, and
> fails when a stated finding stops holding in the records.
"""


def figure_target(run: Run, figures_dir: Path) -> Path:
    return figures_dir / f"{run.spec.folder}.png"


def figure_link(run: Run, figures_dir: Path, page: Path) -> str | None:
    if run.figure is None:
        return None
    relative = Path(os.path.relpath(figure_target(run, figures_dir), page.parent)).as_posix()
    return f"![{run.spec.folder}: {run.figure.name}]({relative})"


def render_finding(f: Finding, link: str = "") -> str:
    mark = "✓" if f.holds else "✗ **does not hold:**"
    return f"- {mark} {f.claim}{link} {f.evidence} *Guarded by* `{f.test}`."


def render_section(index: int, section: Section, runs: list[Run], figures_dir: Path, page: Path,
                   records: dict[str, dict] | None = None) -> str:
    out = [f"## {index}. {section.title} (`{section.experiment}`)", "", section.about, ""]
    for run in runs:
        caption = f" — {run.spec.caption}" if run.spec.caption else ""
        out += [f"### `results/{run.spec.folder}`{caption}", "", "```bash", command(run), "```", ""]
        if run.results is None:
            out += [f"**not run yet: no results/{run.spec.folder}/results.json**", ""]
            continue
        out += [f"Runtime: **{runtime(run)}**; {provenance(run)}.", "", safe(section.render, run.results), ""]
        link = figure_link(run, figures_dir, page)
        out += [link if link else f"⚠ no plot in results/{run.spec.folder}", ""]
    findings = section_findings(section, runs, records)
    out += ["**Published**", "", section.published, "", "**Findings here**", ""]
    out += [render_finding(f) for f in findings] or ["not run yet: nothing measured"]
    return "\n".join(out) + "\n"


def summary(sections_runs: list[tuple[Section, list[Run]]]) -> str:
    rows = []
    for section, runs in sections_runs:
        for i, run in enumerate(runs):
            headline = safe(section.headline, run.results) if run.results is not None else f"not run yet: no results/{run.spec.folder}/results.json"
            rows.append([
                f"[{section.experiment}](#{anchor(section)})" if i == 0 else "″",
                f"`{command(run)}`", runtime(run), headline, section.published_short if i == 0 else "″",
            ])
    return table(["experiment", "command", "runtime", "headline number", "published comparison"], rows)


def anchor(section: Section) -> str:
    """GitHub's anchor of the section heading: lower case, punctuation dropped, spaces to dashes."""
    index = SECTIONS.index(section) + 1 if section in SECTIONS else 0
    heading = f"{index}. {section.title} ({section.experiment})".lower()
    kept = "".join(c for c in heading if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def load_all(results_dir: Path, sections: tuple[Section, ...] = SECTIONS) -> list[tuple[Section, list[Run]]]:
    return [(section, [load_run(results_dir, section, spec) for spec in section.runs]) for section in sections]


def records_of(loaded: list[tuple[Section, list[Run]]]) -> dict[str, dict]:
    """{folder: results} of every loaded run that has results."""
    return {run.spec.folder: run.results for _, runs in loaded for run in runs if run.results is not None}


def all_findings(loaded: list[tuple[Section, list[Run]]]) -> list[tuple[Section, Finding]]:
    records = records_of(loaded)
    return [(section, f) for section, runs in loaded for f in section_findings(section, runs, records)]


def build_page(results_dir: Path, page: Path, sections: tuple[Section, ...] = SECTIONS) -> tuple[str, dict[Path, bytes]]:
    """The page's text and its figures ``{path: bytes}`` (copies of the records' plots)."""
    figures_dir = page.parent / "figures"
    loaded = load_all(results_dir, sections)
    parts = [HEADER, "## Summary", "", summary(loaded), ""]
    records = records_of(loaded)
    parts += [render_section(i, section, runs, figures_dir, page, records) for i, (section, runs) in enumerate(loaded, 1)]
    figures = {figure_target(run, figures_dir): run.figure.read_bytes()
               for _, runs in loaded for run in runs if run.figure is not None and run.results is not None}
    return "\n".join(parts).rstrip() + "\n", figures


README_START = "<!-- results:start (generated by scripts/make_results_page.py from results/; do not edit) -->"
README_END = "<!-- results:end -->"


def readme_block(results_dir: Path, page_link: str = "docs/results.md", sections: tuple[Section, ...] = SECTIONS) -> str:
    """The README's results: the summary table and every finding, each linking to its section."""
    loaded = load_all(results_dir, sections)
    lines = [README_START, "", summary(loaded).replace("](#", f"]({page_link}#"), "", "Findings (each with the test that guards it):", ""]
    for section, f in all_findings(loaded):
        lines.append(render_finding(f, f" ([{section.experiment}]({page_link}#{anchor(section)}))"))
    return "\n".join(lines + ["", README_END])


def replace_readme_block(readme_text: str, block: str) -> str:
    if README_START not in readme_text or README_END not in readme_text:
        raise SystemExit(f"README.md has no results block; add the two lines\n{README_START}\n{README_END}")
    head, rest = readme_text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return head + block + tail


def collect(runs_dir: Path, results_dir: Path, folders: list[str], sections: tuple[Section, ...] = SECTIONS) -> None:
    """Copy each run folder's record (results.json, run.json, the section's plot) into
    ``results/<folder>/``, replacing the old record; refuse a record over 1 MB."""
    by_folder = {spec.folder: section for section in sections for spec in section.runs}
    for folder in folders:
        if folder not in by_folder:
            raise SystemExit(f"{folder!r} is not a run folder of the page; known: {', '.join(sorted(by_folder))}")
        source, target = runs_dir / folder, results_dir / folder
        if not (source / "results.json").is_file():
            raise SystemExit(f"{source / 'results.json'} not found: run the experiment first")
        files = [source / "results.json", source / "run.json"]
        figure = source / by_folder[folder].figure
        files += [figure] if figure.is_file() else sorted(source.glob("*.png"))[:1]
        size = sum(f.stat().st_size for f in files if f.is_file())
        if size > 1_000_000:
            raise SystemExit(f"the record of {folder} is {size / 1e6:.1f} MB (over 1 MB): trim its results.json")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for f in files:
            if f.is_file():
                shutil.copyfile(f, target / f.name)
        print(f"collected {source} -> {target}")


def generated_files(results_dir: Path, page: Path, readme: Path) -> dict[Path, bytes]:
    """Every file the generator writes, with its content: the page, its figures, the README."""
    text, figures = build_page(results_dir, page)
    block = readme_block(results_dir, Path(os.path.relpath(page, readme.parent)).as_posix())
    return {page: text.encode(), **figures, readme: replace_readme_block(readme.read_text(), block).encode()}


def stale_files(results_dir: Path, page: Path, readme: Path) -> list[str]:
    """The generated files whose committed content differs from what ``results/`` gives, and
    figures on disk that no record backs."""
    expected = generated_files(results_dir, page, readme)
    stale = [str(path) for path, content in expected.items() if not path.is_file() or path.read_bytes() != content]
    figures_dir = page.parent / "figures"
    if figures_dir.is_dir():
        stale += [f"{path} (no record backs it)" for path in sorted(figures_dir.glob("*.png")) if path not in expected]
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results", help="folder of the committed records (default: results/)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results.md", help="page to write (default: docs/results.md)")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md", help="README whose results block is rewritten")
    parser.add_argument("--collect", nargs="*", metavar="FOLDER", help="first copy these run folders' records from --runs into --results")
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="where --collect reads run folders (default: runs/)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is out of date")
    args = parser.parse_args(argv)
    if args.collect is not None:
        collect(args.runs, args.results, args.collect)
    if args.check:
        stale = stale_files(args.results, args.out, args.readme)
        for path in stale:
            print(f"out of date: {path}", file=sys.stderr)
        return 1 if stale else 0
    figures_dir = args.out.parent / "figures"
    if figures_dir.is_dir():
        for old in figures_dir.glob("*.png"):
            old.unlink()
    for path, content in generated_files(args.results, args.out, args.readme).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
