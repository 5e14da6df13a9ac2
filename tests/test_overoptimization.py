"""``jirl run overoptimization`` on a reduced configuration, and the exact-KL estimator it plots
against, checked against the oracle's exact sequence KL."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jirl.rl.kl import response_kl
from jirl.cli import main
from jirl.eval.setting import Setting
from jirl.mdp import oracle
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.mdp.tasks import TaskConfig
from jirl.models.transformer import ModelSize, Transformer

SMALL = [
    "proxy_sizes=16", "data_sizes=100,400", "label_pool_per_prompt=128", "rm_steps=40",
    "bon_pool_per_prompt=256", "bon_max_n=64", "rl_iterations=20", "rl_eval_every=5", "rl_eval_samples=64",
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
        assert rl["iteration"] == [0, 5, 10, 15, 20]
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


@pytest.mark.slow
def test_rl_overoptimises_the_smallest_proxy(tmp_path):
    """Guards the results page's overoptimization finding: RL without a KL penalty against the
    width-16 proxy trained on 250 pairs (the published run's settings for that proxy and its RL
    budget; best-of-n and the evaluation cut down) ends with its gold reward fallen from its
    peak while the proxy reward still rises."""
    out = tmp_path / "run"
    settings = ["proxy_sizes=16", "data_sizes=250", "bon_pool_per_prompt=256", "bon_max_n=64", "rl_eval_samples=256",
                "mitigation_proxy=d16_n250", "ensemble_size=2"]
    assert main(["run", "overoptimization", "--out", str(out), "--set", *settings]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["gold_falls_while_proxy_rises"]["d16_n250"], results["rl"]["d16_n250"]


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
