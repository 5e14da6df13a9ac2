"""Tutorial: a new preference objective in one pure function, checked against the exact oracle.

The objective is chi-squared preference optimisation (chiPO, Huang et al. 2024), written in
``examples/plugins/chipo.py`` and registered from there. This script

1. imports the plugin and checks the loss on hand-made numbers;
2. shows it in ``jirl list`` (``JIRL_PLUGINS=examples/plugins/chipo.py``);
3. trains it next to DPO with ``jirl --plugin ... run dpo_oracle --set losses=dpo,chipo``;
4. computes chiPO's own exact optimum with the oracle and asserts that the trained policy
   reached it (and that DPO reached pi*, the KL-regularised optimum).

Walk-through: docs/tutorials/new_objective.md.

    python examples/new_objective.py --out runs/new_objective
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import wrightomega

from jirl import cli
from jirl.eval.setting import Setting
from jirl.mdp import oracle
from jirl.mdp.tasks import TaskConfig
from jirl.models.transformer import ModelSize
from jirl.preference.objective import POLICY_ONLY, with_reference
from jirl.train.checkpoint import CheckpointManager
from jirl.train.loop import TrainConfig, make_optimizer
from jirl.train.step import init_train_state

PLUGIN = Path(__file__).resolve().parent / "plugins" / "chipo.py"
BETA = 0.5  # dpo_oracle's default beta (DPO's, chiPO's and the oracle's)


# ----------------------------------------------------------------------- step 1: the loss itself


def check_loss(chipo_loss) -> None:
    """The loss on numbers worked out by hand: equal ratios give log 2; a clipped margin gives
    no gradient; the gradient raises the chosen response and lowers the rejected one."""
    zero = jnp.zeros(1)
    assert np.allclose(chipo_loss(zero, zero, zero, zero, beta=BETA), np.log(2.0), atol=1e-6)
    # z+ = e, z- = 1: margin = beta (e + 1 - 1) = beta e.
    expected = jax.nn.softplus(-BETA * np.e)
    assert np.allclose(chipo_loss(jnp.ones(1), zero, zero, zero, beta=BETA), expected, atol=1e-6)
    grad = jax.grad(lambda pc, pr: chipo_loss(pc, pr, zero, zero, beta=BETA).sum(), argnums=(0, 1))(zero, zero)
    assert grad[0][0] < 0 < grad[1][0], grad  # descent raises log pi(y+) and lowers log pi(y-)
    clipped = jax.grad(lambda pc: chipo_loss(pc, zero, zero, zero, beta=BETA, r_max=1.0).sum())(jnp.full(1, 5.0))
    assert clipped[0] == 0.0, clipped  # beta (e^5 + 5) > 2 r_max: the clip stops the gradient


# ------------------------------------------------------------- step 4: chiPO's exact optimum


def chipo_optimum(setting: Setting, beta: float) -> list:
    """chiPO's population optimum as a policy tree: per prompt, z(y) = pi(y|x) / pi_ref(y|x)
    solves z + log z = (R(x, y) + c(x)) / beta (so z = omega((R + c) / beta), the Wright omega
    function), with c(x) set by sum_y pi_ref(y|x) z(y) = 1. The oracle turns it into per-token
    conditionals: solve() with the terminal reward beta log z gives pi_ref z / 1 = pi."""
    spec = setting.spec
    returns = oracle.sequence_log_probs(spec, setting.rewards)  # summed along each path: R(x, y) at terminals
    ref_logp = oracle.sequence_log_probs(spec, setting.ref_tree)  # log pi_ref(y|x) at terminals
    terminal = [oracle.terminal_mask(spec, t) for t in range(spec.horizon)]
    flat = lambda tree: np.concatenate(
        [np.asarray(x)[:, :, mask].reshape(spec.num_prompts, -1) for x, mask in zip(tree, terminal)], axis=1)
    R, ref_p = flat(returns).astype(np.float64), np.exp(flat(ref_logp).astype(np.float64))
    assert np.allclose(ref_p.sum(axis=1), 1.0, atol=1e-4)  # every complete response, once

    def mass(c):  # sum_y pi_ref(y|x) z(y) for each prompt; increasing in c
        return (ref_p * np.real(wrightomega((R + c[:, None]) / beta))).sum(axis=1)

    low, high = np.full(len(R), -R.max() - 50.0 * beta), np.full(len(R), -R.min() + 50.0 * beta)
    for _ in range(200):  # bisection on c(x)
        mid = (low + high) / 2
        too_much = mass(mid) > 1.0
        high, low = np.where(too_much, mid, high), np.where(too_much, low, mid)
    z = np.real(wrightomega((R + low[:, None]) / beta))
    assert np.allclose((ref_p * z).sum(axis=1), 1.0, atol=1e-6)

    # Back to a tree: reward beta log z(y) on each terminal action, 0 elsewhere.
    log_z, start, reward_tree = beta * np.log(z), 0, []
    for t, mask in enumerate(terminal):
        tree = np.zeros(spec.tree_shape(t), np.float32)
        count = spec.num_states(t) * int(mask.sum())
        tree[:, :, mask] = log_z[:, start : start + count].reshape(spec.num_prompts, spec.num_states(t), -1)
        reward_tree.append(jnp.asarray(tree))
        start += count
    return oracle.solve(spec, setting.ref_tree, reward_tree, beta).log_probs


def trained_policy(out: Path, loss: str, setting: Setting, train: TrainConfig):
    """The policy parameters of ``loss`` at the end of the dpo_oracle run in ``out``, restored
    from the run's last checkpoint (``offline/<loss>/checkpoints``) into the state's structure."""
    params = with_reference(setting.reference, setting.reference)
    abstract = init_train_state(params, make_optimizer(train), jax.random.key(0), trainable=POLICY_ONLY)
    with CheckpointManager(out / "offline" / loss / "checkpoints") as manager:
        state, _ = manager.restore(abstract)
    return state.full_params["policy"]


# ---------------------------------------------------------------------------------- the script


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="run folder (default: a temporary folder)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=1024)
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="jirl-new-objective-"))

    # Step 1: import the plugin (what `--plugin` does) and test the loss on known numbers.
    plugin = cli.load_plugin(str(PLUGIN))
    check_loss(plugin.chipo_loss)

    # Step 2: the name shows up in `jirl list` once the plugin is named (a fresh process, as a user
    # would run it; COLUMNS keeps rich from wrapping the table).
    env = {**os.environ, "JIRL_PLUGINS": str(PLUGIN), "COLUMNS": "250"}
    listing = subprocess.run([sys.executable, "-m", "jirl.cli", "list"], env=env, capture_output=True, text=True, check=True)
    assert "chipo (plugin)" in listing.stdout, listing.stdout
    print("jirl list:", next(line for line in listing.stdout.splitlines() if "preference losses" in line).strip())

    # Step 3: train DPO and chiPO on the same pairs, through the command line.
    overrides = [
        "losses=dpo,chipo", f"num_pairs={args.pairs}", "pair_counts=", "online_iterations=0",
        f"train.steps={args.steps}", f"train.eval_every={args.steps}", f"train.checkpoint_every={args.steps}",
    ]
    code = cli.main(["--plugin", str(PLUGIN), "run", "dpo_oracle", "--out", str(out), "--set", *overrides])
    assert code == 0, f"jirl run failed with exit code {code}"
    results = json.loads((out / "results.json").read_text())

    # Step 4: check both policies against exact optima, computed by the oracle.
    setting = Setting.build(TaskConfig("bigram", ("num_chars=3", "horizon=3")), ModelSize(family="gpt2", d_model=32), seed=0)
    kl_optimum = setting.optimum(BETA)  # pi*: DPO's target
    chi_optimum = chipo_optimum(setting, BETA)  # chiPO's target
    train = TrainConfig(steps=args.steps, batch_size=64, learning_rate=3e-3)
    chipo = setting.evaluate(trained_policy(out, "chipo", setting, train), BETA, chi_optimum)
    dpo = setting.evaluate(trained_policy(out, "dpo", setting, train), BETA, kl_optimum)
    target = setting.evaluate_tree(chi_optimum, BETA, kl_optimum)
    report = {
        "dpo_kl_to_pi_star": dpo["kl_to_optimal"],
        "chipo_kl_to_chipo_optimum": chipo["kl_to_optimal"],
        "chipo_kl_to_pi_star": results["losses"]["chipo"]["kl_to_optimal"],
        "chipo_optimum_kl_to_pi_star": target["kl_to_optimal"],
        "kl_to_reference": {"pi_star": results["optimum"]["kl_to_reference"], "chipo_optimum": target["kl_to_reference"],
                            "dpo": dpo["kl_to_reference"], "chipo": chipo["kl_to_reference"]},
    }
    print(json.dumps(report, indent=2))

    # The run's own numbers agree with the restored checkpoints (same policy, same oracle).
    assert abs(dpo["kl_to_optimal"] - results["losses"]["dpo"]["kl_to_optimal"]) < 1e-4
    # Each objective reaches its own optimum, as close as DPO gets to pi* with the same data ...
    assert dpo["kl_to_optimal"] < 0.5, report
    assert chipo["kl_to_optimal"] < max(0.1, dpo["kl_to_optimal"]), report
    # ... and the two optima differ: chiPO's is the more conservative one (the chi^2 term).
    assert chipo["kl_to_optimal"] < 0.5 * report["chipo_kl_to_pi_star"], report
    assert target["kl_to_reference"] < 0.5 * results["optimum"]["kl_to_reference"], report
    print(f"OK: chiPO is {chipo['kl_to_optimal']:.3f} nats from its exact optimum, DPO {dpo['kl_to_optimal']:.3f} from pi*")
    return report


if __name__ == "__main__":
    main()
