"""``jirl run overoptimization`` on a reduced configuration, its form selection over seeds, and the
exact-KL estimator it plots against, checked against the oracle's exact sequence KL."""

import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from rich.console import Console

from experiments.overoptimization import OveroptimizationConfig, print_form_selection, select_forms
from jirl.eval import form_selection

from jirl.rl.kl import response_kl
from jirl.cli import main
from jirl.eval.setting import Setting
from jirl.mdp import oracle
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.mdp.tasks import TaskConfig
from jirl.models.transformer import ModelSize, Transformer

SMALL = [
    "proxy_sizes=16", "data_sizes=100,400", "label_pool_per_prompt=128", "rm_steps=40",
    "bon_pool_per_prompt=256", "bon_max_n=64", "rl_iterations=20", "rl_eval_every=2", "rl_eval_samples=64",
    "prompts_per_iteration=4", "group_size=4", "rl_learning_rate=3e-3", "mitigation_proxy=d16_n400", "ensemble_size=2",
]


@pytest.mark.slow
@pytest.mark.heavy  # its fits (tests/eval/test_scaling.py) and exact KL (below) are checked apart
def test_small_study_writes_fits_curves_mitigations_and_plot(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "overoptimization", "--out", str(out), "--set", *SMALL]) == 0
    results = json.loads((out / "results.json").read_text())
    names = ["d16_n100", "d16_n400"]
    assert results["proxies"] == names
    for name in names:
        for form in ("bon", "rl"):
            fit = results[form][name]
            assert {"alpha", "beta", "r2", "fit_peak_d", "gold_peak_d", "gold_falls_while_proxy_rises"} <= set(fit)
            assert all(math.isfinite(fit[k]) for k in ("alpha", "beta", "r2"))
        assert isinstance(results["gold_peak_d"][name], float)
        assert isinstance(results["gold_falls_while_proxy_rises"][name], bool)
        # Best-of-n under the proxy: the proxy's own reward can only rise with n.
        proxy = np.asarray(results["curves"]["bon"][name]["proxy"])
        assert proxy[0] == 0.0 and np.all(np.diff(proxy) >= -1e-5) and proxy[-1] > 0.5
        # RL starts at the initial policy (KL exactly 0) and moves away from it.
        rl = results["curves"]["rl"][name]
        assert rl["iteration"] == list(range(0, 21, 2))
        assert rl["kl"][0] == pytest.approx(0.0, abs=1e-6) and rl["kl"][-1] > 0.1
        assert rl["proxy"][-1] > rl["proxy"][0]
    d = np.asarray(results["curves"]["bon"]["d"])
    n = np.asarray(results["curves"]["bon"]["n"])
    assert n[0] == 1 and n[-1] == 64 and d[0] == 0.0
    np.testing.assert_allclose(d**2, np.log(n) - (n - 1) / n, rtol=1e-5, atol=1e-6)
    # The gold reward selected by the gold reward itself is the ceiling of every proxy's.
    ceiling = np.asarray(results["curves"]["bon"]["gold_selected_by_gold"])
    assert all(np.all(np.asarray(results["curves"]["bon"][name]["gold"]) <= ceiling + 1e-4) for name in names)
    assert set(results["mitigations"]) == {"plain", "ensemble_mean_minus_std", "ensemble_min", "kl_penalty"}
    for cell in results["mitigations"].values():
        assert all(math.isfinite(cell[k]) for k in ("final_gold", "peak_gold", "final_kl"))
        assert cell["peak_gold"] >= cell["final_gold"]
    assert results["mitigations"]["plain"]["final_gold"] == results["rl"]["d16_n400"]["gold_final"]
    assert (out / "overoptimization.png").stat().st_size > 20_000
    # Three seeds of every proxy (default num_seeds), the ensemble's seed 1 among them.
    assert results["num_seeds"] == 3
    seeded = {name: [name, f"{name}_seed1", f"{name}_seed2"] for name in names}
    assert set(results["proxy_info"]) == {s for group in seeded.values() for s in group}
    for name in names:
        assert results["seeds"][name]["proxies"] == seeded[name]
        assert len(results["seeds"][name]["rl_gold_falls_while_proxy_rises"]) == 3
        for s in seeded[name]:
            assert len(results["curves"]["rl"][s]["gold"]) == 11 and len(results["curves"]["bon"][s]["gold"]) == len(d)
    # Seeds differ (initialisation, minibatch order, RL noise).
    assert results["curves"]["rl"]["d16_n100"]["gold"] != results["curves"]["rl"]["d16_n100_seed1"]["gold"]
    check_form_selection(results["form_selection"], {"d16": names}, seeded, forms=set(form_selection.FORMS))


def check_form_selection(section, sizes, seeded, forms):
    """The ``form_selection`` section is complete and well formed (its numbers are checked on
    known curves in tests/eval/test_form_selection.py)."""
    assert set(section["forms"]) == forms and 0 < section["d_fit_fraction"] < 1 and section["level"] == 0.95
    json.dumps(section, allow_nan=False)
    for optimiser in ("bon", "rl"):
        cells = section[optimiser]
        assert set(cells["proxies"]) == {n for group in sizes.values() for n in group}
        assert set(cells["sizes"]) == set(sizes)
        everything = [s for group in sizes.values() for n in group for s in seeded[n]]
        expected = [*((cells["proxies"][n], seeded[n]) for group in sizes.values() for n in group),
                    *((cells["sizes"][size], [s for n in group for s in seeded[n]]) for size, group in sizes.items()),
                    (cells["all"], everything)]
        for cell, curves in expected:
            assert cell["curves"] == curves
            assert "error" not in cell, cell
            assert cell["num_seeds"] + len(cell["skipped"]) == len(curves) and cell["num_seeds"] >= 1
            assert cell["winner"] in forms and set(cell["held_out_rmse"]) == forms
            winner = cell["held_out_rmse"][cell["winner"]]["mean"]
            assert all(v["mean"] is None or v["mean"] >= winner for v in cell["held_out_rmse"].values())
            assert cell["paired"]["winner"] == cell["winner"] and isinstance(cell["paired"]["decided"], bool)
            assert sum(cell["bic_winner_counts"].values()) == cell["num_seeds"] == len(cell["seed_winners"])
            assert all(x == pytest.approx(1 / section["d_fit_fraction"]) for x in cell["extrapolation"])


@pytest.mark.slow
def test_rl_overoptimises_the_smallest_proxy(tmp_path):
    """Guards the results page's overoptimization finding: RL without a KL penalty against the
    width-16 proxy trained on 250 pairs (the published run's settings for that proxy and its RL
    budget; best-of-n and the evaluation cut down) ends with its gold reward fallen from its
    peak while the proxy reward still rises."""
    out = tmp_path / "run"
    settings = ["proxy_sizes=16", "data_sizes=250", "bon_pool_per_prompt=256", "bon_max_n=64", "rl_eval_samples=256",
                "mitigation_proxy=d16_n250", "ensemble_size=2", "num_seeds=1"]  # seed 0 is the published run's proxy
    assert main(["run", "overoptimization", "--out", str(out), "--set", *settings]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["gold_falls_while_proxy_rises"]["d16_n250"], results["rl"]["d16_n250"]


# Both forms peak near d = 1.25, inside every fit range below: curves that turn over there tell
# the forms apart (ones that only rise on the observed range may leave the choice undecided).
PEAKING = {"gao_bon": {"alpha": 1.0, "beta": 0.4}, "gao_rl": {"alpha": 1.0, "beta": 0.8}}


def synthetic_results(config, bon_form, rl_form, noise=0.01):
    """The ``curves`` of a results record whose gold curves follow known forms (with noise), one
    per seed of every proxy of ``config``: best-of-n on a shared grid, RL on its own."""
    rng = np.random.default_rng(0)
    d_bon = np.sqrt(np.linspace(0.0, 6.0, 40))
    curves = {"bon": {"d": d_bon.tolist()}, "rl": {}}
    for size in config.proxy_sizes:
        for n in config.data_sizes:
            for seed in range(config.num_seeds):
                name = f"d{size}_n{n}" + (f"_seed{seed}" if seed else "")
                d_rl = np.linspace(0.0, 4.0, 30) * (1.0 + 0.1 * seed)
                gold = lambda form, d: form_selection.FORMS[form].predict(d, PEAKING[form]) + noise * rng.standard_normal(d.shape)  # noqa: E731
                curves["bon"][name] = {"gold": gold(bon_form, d_bon).tolist()}
                curves["rl"][name] = {"d": d_rl.tolist(), "gold": gold(rl_form, d_rl).tolist()}
    return {"curves": curves}


def test_form_selection_section_names_the_forms_the_curves_follow():
    """The experiment's plumbing (seed names, per-proxy / per-size / overall cells, JSON-safe
    numbers, the table) on curves of known form, without training anything."""
    config = OveroptimizationConfig(proxy_sizes=(16, 32), data_sizes=(100, 400), num_seeds=3)
    names = {"d16": ["d16_n100", "d16_n400"], "d32": ["d32_n100", "d32_n400"]}
    seeded = {n: [n, f"{n}_seed1", f"{n}_seed2"] for group in names.values() for n in group}
    for bon_form, rl_form in (("gao_bon", "gao_rl"), ("gao_rl", "gao_bon")):
        section = select_forms(config, synthetic_results(config, bon_form, rl_form))
        check_form_selection(section, names, seeded, set(form_selection.FORMS))
        for optimiser, form in (("bon", bon_form), ("rl", rl_form)):
            cells = [*section[optimiser]["proxies"].values(), *section[optimiser]["sizes"].values(), section[optimiser]["all"]]
            assert all(cell["winner"] == form and cell["paired"]["decided"] for cell in cells)
    console = Console(file=io.StringIO(), width=200)
    print_form_selection(type("Run", (), {"console": console})(), section)
    text = console.file.getvalue()
    assert "best-of-n: which form extrapolates" in text and "d32 (all)" in text and "decided" in text


def test_form_selection_with_one_seed_or_too_short_curves_stays_json_safe():
    config = OveroptimizationConfig(proxy_sizes=(16,), data_sizes=(100,), num_seeds=1)
    results = synthetic_results(config, "gao_bon", "gao_rl")
    section = select_forms(config, results)
    cell = section["rl"]["proxies"]["d16_n100"]
    assert cell["winner"] == "gao_rl" and cell["held_out_rmse"]["gao_rl"]["low"] is None and not cell["paired"]["decided"]
    results["curves"]["rl"]["d16_n100"] = {"d": [0.0, 1.0, 2.0], "gold": [0.0, 0.5, 0.7]}
    section = select_forms(config, results)
    cell = section["rl"]["proxies"]["d16_n100"]
    assert cell["winner"] is None and "too few points" in cell["error"]
    json.dumps(section, allow_nan=False)


def test_unknown_mitigation_proxy_is_a_clear_error(tmp_path, capsys):
    args = ["run", "overoptimization", "--out", str(tmp_path / "run"), "--set", "mitigation_proxy=d99_n1"]
    assert main(args) == 2
    assert "mitigation_proxy='d99_n1' is not one of the proxies" in capsys.readouterr().err


def test_response_kl_is_unbiased_for_the_exact_kl():
    """The mean of the per-state exact KL over sampled responses equals the oracle's sequence
    KL(pi || pi_ref), enumerated over the whole tree of a small task."""
    setting = Setting.build(TaskConfig("bigram", ("num_chars=2", "horizon=3")), ModelSize(family="gpt2", d_model=16), seed=0)
    task = setting.task
    model_config = ModelSize(family="gpt2", d_model=16).build(task.vocab_size, task.prompt_width + task.horizon)
    _, policy = nnx.split(Transformer(model_config, rngs=nnx.Rngs(1)))
    policy = jax.tree_util.tree_map(lambda x: 3.0 * x, policy)  # sharper, far from the reference
    exact = float(oracle.kl_divergence(setting.spec, setting.policy_tree(policy), setting.ref_tree))
    prompts, lens = task.sample_prompts(jax.random.key(0), 8192)
    out = generate(setting.graphdef, policy, prompts, lens, jax.random.key(1), SamplingConfig(task.horizon, task.eos_id))
    kl = response_kl(setting.graphdef, policy, setting.reference, out.tokens, out.prompt_lens, out.response_mask)
    assert exact > 0.05
    standard_error = float(jnp.std(kl)) / math.sqrt(kl.shape[0])
    assert abs(float(jnp.mean(kl)) - exact) < 4 * standard_error + 1e-4
    assert float(jnp.min(kl)) >= -1e-6
    # At the reference itself it is exactly 0.
    zero = response_kl(setting.graphdef, setting.reference, setting.reference, out.tokens, out.prompt_lens, out.response_mask)
    assert float(jnp.max(jnp.abs(zero))) == 0.0
