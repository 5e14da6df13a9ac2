"""Tutorial: the same training on one device and on a mesh of eight (data parallel and FSDP).

On a CPU, XLA can pretend to have several devices; the flag must be set before JAX starts,
so this script sets it itself when it is run directly (a test runs it in a subprocess for the
same reason). It trains one SFT objective three ways from the same data and initial weights,

1. on one device, calling the jitted update step directly;
2. with ``fit`` on a ``data=8`` mesh (``TrainConfig(mesh_data=8)``: batch split 8 ways,
   parameters replicated);
3. with ``fit`` on a ``data=2 x fsdp=4`` mesh (``mesh_fsdp=4, sharding="fsdp"``: parameters and
   optimizer state split 4 ways as well),

and asserts that the three agree (losses and final parameters, to float tolerance).

Walk-through: docs/tutorials/devices.md.

    python examples/devices.py
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# Only now anything that may import jax.
import argparse
import json
import tempfile
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from jirl.data.loader import batch_iterator
from jirl.experiment import RunDir
from jirl.mdp import oracle
from jirl.mdp.tasks import make_task
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.train.loop import TrainConfig, fit
from jirl.train.sft import sft_loss
from jirl.train.step import init_train_state, make_update_step

BATCH_SIZE = 32  # divisible by every mesh's data x fsdp
# Plain SGD: parameters move linearly in the gradient, so float rounding (sums over devices
# happen in another order) stays at rounding level; Adam divides near-zero gradients by their
# own size and would blow that noise up without saying anything about sharding.
OPTIMIZER = optax.sgd(0.5)


def demonstrations(num: int) -> tuple[list[dict], object]:
    """``num`` SFT examples: responses sampled from the exact optimum of the ``bigram`` task."""
    task = make_task("bigram", num_chars=3, horizon=4)
    spec = task.tree_spec()
    rewards = oracle.rewards_from_step_fn(spec, task.step_reward)
    expert = oracle.solve(spec, oracle.uniform_log_probs(spec), rewards, beta=0.5).log_probs
    samples = oracle.sample(jax.random.key(0), spec, expert, num)
    tokens, prompt_lens, response_lens = (np.asarray(x) for x in (samples.tokens, samples.prompt_lens, samples.response_lens))
    return [{"tokens": tokens[i], "prompt_len": prompt_lens[i], "response_len": response_lens[i]} for i in range(num)], task


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"{jax.device_count()} devices: {jax.devices()[0].platform} x {jax.device_count()}")
    assert jax.device_count() >= 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8 set before jax starts"

    examples, task = demonstrations(512)
    graphdef, init_params = nnx.split(Transformer(gpt2_tiny(task.vocab_size, max_len=task.prompt_width + task.horizon), rngs=nnx.Rngs(0)))
    loss_fn = sft_loss(graphdef)

    def train(mesh_data: int, mesh_fsdp: int, sharding: str):
        """``args.steps`` steps through ``fit`` on a mesh; returns the final state and logged losses."""
        config = TrainConfig(steps=args.steps, batch_size=BATCH_SIZE, mesh_data=mesh_data, mesh_fsdp=mesh_fsdp, sharding=sharding)
        state = init_train_state(init_params, OPTIMIZER, jax.random.key(0))
        run = RunDir(tempfile.mkdtemp(prefix="jirl-devices-"))
        batches = batch_iterator(examples, BATCH_SIZE, seed=0)
        state = fit(run, make_update_step(loss_fn, OPTIMIZER), state, batches, config={"mesh": [mesh_data, mesh_fsdp]},
                    train=config, progress=False)
        losses = [json.loads(line)["loss"] for line in (Path(run.path) / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
        return state, losses

    # 1. One device: the jitted step applied to each batch, no mesh at all.
    single = init_train_state(init_params, OPTIMIZER, jax.random.key(0))
    step = make_update_step(loss_fn, OPTIMIZER)
    single_losses = []
    for batch in batch_iterator(examples, BATCH_SIZE, seed=0, num_epochs=None):
        single, metrics = step(single, batch)
        single_losses.append(float(metrics["loss"]))
        if len(single_losses) == args.steps:
            break

    # 2. and 3. The same run on two meshes.
    replicated, replicated_losses = train(mesh_data=8, mesh_fsdp=1, sharding="replicate")
    fsdp, fsdp_losses = train(mesh_data=2, mesh_fsdp=4, sharding="fsdp")

    kernel = fsdp.params["layers"][0]["mlp"]["fc_in"]["kernel"][...]
    print("an MLP kernel under FSDP:", kernel.shape, kernel.sharding.spec)
    assert "fsdp" in tuple(kernel.sharding.spec), kernel.sharding  # it really is split
    assert len(kernel.sharding.device_set) == 8
    print("loss per step  1 device:", np.round(single_losses[-3:], 5), " data=8:", np.round(replicated_losses[-3:], 5),
          " data=2 x fsdp=4:", np.round(fsdp_losses[-3:], 5))
    np.testing.assert_allclose(replicated_losses, single_losses, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fsdp_losses, single_losses, rtol=1e-5, atol=1e-5)
    for other in (replicated, fsdp):
        for a, b in zip(jax.tree_util.tree_leaves(single.params), jax.tree_util.tree_leaves(other.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert single_losses[-1] < single_losses[0]  # it trained
    print("OK: one device, data=8 and data=2 x fsdp=4 give the same losses and parameters")
    return {"single": single_losses, "replicated": replicated_losses, "fsdp": fsdp_losses}


if __name__ == "__main__":
    main()
