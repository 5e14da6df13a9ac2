"""Tutorial: your own preference JSONL -> a TFDS dataset -> a reward model trained on it.

The script writes a small synthetic but learnable data set (responses that say "please" are
preferred), turns it into an ``array_record`` dataset with the ``JsonlPreferences`` builder,
trains a Bradley-Terry reward model on the train split and asserts its held-out accuracy.

Walk-through: docs/tutorials/own_preference_data.md.

    python examples/own_preference_data.py --out runs/own_preference_data
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jirl.data.builders import data_source, prepare
from jirl.data.loader import batch_iterator
from jirl.data.preferences import (
    JsonlPreferences,
    decode_pair,
    make_tokenizer,
    preference_report,
)
from jirl.eval.metrics import pairwise_accuracy
from jirl.models.heads import SequenceRewardModel
from jirl.models.transformer import gpt2_tiny
from jirl.rewards.losses import preference_objective
from jirl.rewards.models import sequence_reward_fn
from jirl.train.step import init_train_state, make_update_step

ALPHABET = "abcdefghijklmnopqrstuvwxyz ?"  # every character the texts use (a char tokenizer)
MAX_LEN = 48  # prompt + response + EOS, in tokens
WORDS = ["send", "the", "file", "now", "open", "door", "bring", "tea", "call", "me", "help", "fix", "it", "car"]


# ----------------------------------------------------------------- step 1: your JSONL files


def make_pairs(rng: np.random.Generator, count: int) -> list[dict]:
    """``{prompt, chosen, rejected}`` rows: both responses are a few random words; the chosen one
    also says "please" somewhere. A rule the reward model has to discover from the pairs."""
    rows = []
    for _ in range(count):
        prompt = " ".join(rng.choice(WORDS, 2)) + "?"
        plain = list(rng.choice(WORDS, rng.integers(2, 4)))
        polite = list(rng.choice(WORDS, rng.integers(1, 3)))
        polite.insert(int(rng.integers(0, len(polite) + 1)), "please")
        rows.append({"prompt": prompt, "chosen": " " + " ".join(polite), "rejected": " " + " ".join(plain)})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# ----------------------------------------------------------------------------- the script


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="working folder (default: a temporary folder)")
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="jirl-own-preferences-"))
    rng = np.random.default_rng(0)

    # Step 1: your data, one JSON object per line, in a "manual" folder.
    manual_dir = out / "manual"
    write_jsonl(manual_dir / "train.jsonl", make_pairs(rng, 1024))
    write_jsonl(manual_dir / "test.jsonl", make_pairs(rng, 256))

    # Step 2: the TFDS builder tokenizes and writes array_record files (once; reused after).
    builder = prepare(JsonlPreferences, out / "data", manual_dir=manual_dir, max_len=MAX_LEN,
                      tokenizer="char", alphabet=ALPHABET)
    report = preference_report(builder)
    print("kept", report["kept"], "dropped", report["dropped"], "truncated", report["truncated"])
    train, test = data_source(builder, "train"), data_source(builder, "test")
    assert (len(train), len(test)) == (1024, 256) and report["truncated"] == 0
    tokenizer = make_tokenizer("char", ALPHABET)
    first = decode_pair(tokenizer, train[0])
    print("first pair:", first)
    assert "please" in first["chosen"]

    # Step 3: a reward model r(x, y) and the Bradley-Terry objective on the pairs.
    config = gpt2_tiny(tokenizer.vocab_size, d_model=32, max_len=MAX_LEN)
    graphdef, params = nnx.split(SequenceRewardModel(config, rngs=nnx.Rngs(0)))
    reward_fn = sequence_reward_fn(graphdef)  # reward_fn(params, tokens, lengths) -> [B]
    loss_fn = preference_objective(reward_fn, loss="bt")
    optimizer = optax.adam(3e-3)
    state = init_train_state(params, optimizer, jax.random.key(0))
    step = make_update_step(loss_fn, optimizer)

    # Step 4: train on batches from the grain loader.
    batches = batch_iterator(train, batch_size=32, seed=0)
    for _ in range(args.steps):
        batch = {k: jnp.asarray(v) for k, v in next(batches).items()}
        state, metrics = step(state, batch)
    print(f"last train batch: loss {float(metrics['loss']):.3f}, accuracy {float(metrics['accuracy']):.3f}")

    # Step 5: held-out accuracy, all test pairs at once (before training: about chance).
    pairs = {k: np.stack([test[i][k] for i in range(len(test))]) for k in ("chosen", "rejected", "prompt_len", "chosen_len", "rejected_len")}
    score = jax.jit(reward_fn)

    def held_out_accuracy(model_params) -> float:
        r_chosen = score(model_params, pairs["chosen"], pairs["prompt_len"] + pairs["chosen_len"])
        r_rejected = score(model_params, pairs["rejected"], pairs["prompt_len"] + pairs["rejected_len"])
        return float(pairwise_accuracy(r_chosen, r_rejected))

    accuracy, untrained = held_out_accuracy(state.full_params), held_out_accuracy(params)
    print(f"held-out accuracy: {accuracy:.3f} (untrained: {untrained:.3f}, chance: 0.5)")
    assert accuracy > 0.9, accuracy
    return {"accuracy": accuracy, "untrained_accuracy": untrained}


if __name__ == "__main__":
    main()
