"""Local JSONL prompt/response data -> TFDS (manual_dir) -> grain -> the training loop."""

import json

import jax
import optax
from flax import nnx

from jirl.data.builders import JsonlSft, data_source, prepare
from jirl.data.loader import batch_iterator
from jirl.experiment import RunDir
from jirl.mdp.tokenizer import CharTokenizer
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.train.loop import TrainConfig, fit
from jirl.train.sft import sft_loss
from jirl.train.step import init_train_state, make_update_step


def test_sft_on_local_jsonl_learns_the_responses(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    rows = [{"prompt": f"{w} ", "response": w[::-1]} for w in ("abc", "bca", "cab", "aab", "bba", "cca", "acb", "bac")]
    (manual / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    builder = prepare(JsonlSft, tmp_path / "tfds", manual_dir=manual, alphabet="abc ", max_len=12)
    source = data_source(builder, "train")
    assert len(source) == len(rows)

    tokenizer = CharTokenizer("abc ")
    graphdef, params = nnx.split(Transformer(gpt2_tiny(tokenizer.vocab_size, max_len=12), rngs=nnx.Rngs(0)))
    optimizer = optax.adam(3e-3)
    state = init_train_state(params, optimizer, jax.random.key(0))
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    train = TrainConfig(steps=150, checkpoint_every=150, eval_every=1000)
    fit(run, make_update_step(sft_loss(graphdef), optimizer), state, batch_iterator(source, 8, seed=0),
        config={}, train=train, progress=False)
    losses = [json.loads(line)["loss"] for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert losses[0] > 1.0 and losses[-1] < 0.1  # the eight reversals are memorised
