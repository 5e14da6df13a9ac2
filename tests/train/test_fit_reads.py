"""``fit`` reads metrics from the device every ``log_every`` steps, not at every step, and
writes the same log and parameters as when it reads every step (issue 22, item 2)."""

import jax
import numpy as np
import optax
from flax import nnx

from jirl.experiment import RunDir
from jirl.models.transformer import Transformer, llama_tiny
from jirl.train.loop import TrainConfig, fit
from jirl.train.sft import sft_loss
from jirl.train.step import init_train_state, make_update_step


class Batches:
    def __init__(self):
        self.position = 0

    def __next__(self):
        self.position += 1
        tokens = np.random.default_rng(self.position).integers(1, 7, (8, 8)).astype(np.int32)
        return {"tokens": tokens, "prompt_len": np.full(8, 2, np.int32), "response_len": np.full(8, 5, np.int32)}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def test_reading_every_few_steps_logs_what_reading_every_step_logs(tmp_path, monkeypatch):
    graphdef, params = nnx.split(Transformer(llama_tiny(7, max_len=16), rngs=nnx.Rngs(0)))
    optimizer = optax.adam(1e-2)
    step_fn = make_update_step(sft_loss(graphdef), optimizer)
    reads = []
    device_get = jax.device_get

    def counting(tree):
        if isinstance(tree, list):  # fit's read of the pending steps' metrics
            reads.append(len(tree))
        return device_get(tree)

    monkeypatch.setattr(jax, "device_get", counting)

    def run(folder, log_every):
        reads.clear()
        train = TrainConfig(steps=12, checkpoint_every=6, eval_every=100, log_every=log_every)
        state = init_train_state(params, optimizer, jax.random.key(0))
        final = fit(RunDir(tmp_path / folder, console=None), step_fn, state, Batches(), config={"x": 1}, train=train, progress=False)
        return final, list(reads)

    every, reads_every = run("every", 1)
    batched, reads_batched = run("batched", 5)
    assert reads_every == [1] * 12
    assert reads_batched == [5, 1, 4, 2]  # steps 5, 6 (checkpoint), 10, 12 (checkpoint and end)
    read = lambda folder: (tmp_path / folder / "metrics.jsonl").read_bytes()  # noqa: E731
    assert read("batched") == read("every") and read("every").count(b"\n") == 12
    jax.tree_util.tree_map(np.testing.assert_array_equal, batched.params, every.params)
