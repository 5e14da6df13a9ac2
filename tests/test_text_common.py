"""What the text trainers share (experiments/text_common.py): the held-out metrics of the initial
model, logged at step 0 by ``log_before`` before ``train`` makes the log writers, reach those
writers too (TensorBoard / W&B show the curve from step 0), once: not again on ``--resume``."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from experiments import text_common
from experiments.text_common import ArraySource, TextConfig, log_before, train
from jirl.experiment import RunDir
from jirl.models.transformer import Transformer, llama_tiny
from jirl.train.logging import LogConfig
from jirl.train.loop import TrainConfig
from jirl.train.sft import sft_loss
from jirl.train.step import everything
from tests.train.test_logging import Recorder, as_metrics_lines, metrics_lines

CONFIG = TextConfig(data="unused", train=TrainConfig(steps=2, batch_size=8, warmup_steps=1, checkpoint_every=2,
                                                   eval_every=2, log_every=1), log=LogConfig(tensorboard=False))


@pytest.fixture(scope="module")
def tiny():
    graphdef, params = nnx.split(Transformer(llama_tiny(7, max_len=16), rngs=nnx.Rngs(0)))
    tokens = np.random.default_rng(0).integers(1, 7, (8, 8)).astype(np.int32)
    source = ArraySource({"tokens": tokens, "prompt_len": np.full(8, 2, np.int32), "response_len": np.full(8, 5, np.int32)})
    return graphdef, params, source


def run_text_training(tiny, run: RunDir, monkeypatch) -> Recorder:
    """``log_before`` then ``train`` as sft.py / dpo.py / kto.py call them, into a recording writer."""
    graphdef, params, source = tiny
    recorder = Recorder()
    monkeypatch.setattr(text_common, "make_writers", lambda log, run, config=None: [recorder])
    log_before(run, {"nll": 2.5, "accuracy": 0.25})
    train(run, CONFIG, graphdef, params, everything, sft_loss(graphdef), source,
          evaluate=lambda state: {"nll": 2.0, "accuracy": 0.5})
    return recorder


def test_the_step_0_evaluation_reaches_the_writers_once(tmp_path, monkeypatch, tiny):
    recorder = run_text_training(tiny, RunDir(tmp_path, console=None), monkeypatch)
    assert recorder.calls[0] == (0, "eval", {"nll": 2.5, "accuracy": 0.25})  # before any training step
    assert as_metrics_lines(recorder.calls) == metrics_lines(tmp_path)  # the writer saw what metrics.jsonl holds
    assert recorder.closed

    resumed = run_text_training(tiny, RunDir(tmp_path, console=None, resume=True), monkeypatch)
    assert not [call for call in resumed.calls if call[0] == 0]  # the resumed run's writers had it already
    assert metrics_lines(tmp_path)[0] == {"step": 0, "eval/nll": 2.5, "eval/accuracy": 0.25}
