"""Model, optimizer and data shared by the two-process test and its single-process reference."""

import jax
import numpy as np
import optax
from flax import nnx

from jirl.models.transformer import Transformer, llama_tiny
from jirl.train.sft import sft_loss
from jirl.train.step import init_train_state, make_update_step

VOCAB = 7


def make_state_and_step():
    graphdef, params = nnx.split(Transformer(llama_tiny(VOCAB, max_len=16), rngs=nnx.Rngs(0)))
    optimizer = optax.adam(1e-2)
    return init_train_state(params, optimizer, jax.random.key(0)), make_update_step(sft_loss(graphdef), optimizer)


def global_batches(steps=3, batch_size=8, width=10):
    rng = np.random.default_rng(0)
    for _ in range(steps):
        prompt_len = rng.integers(1, 4, batch_size).astype(np.int32)
        response_len = np.array([rng.integers(1, width - p + 1) for p in prompt_len], np.int32)
        tokens = rng.integers(1, VOCAB, (batch_size, width)).astype(np.int32)
        yield {"tokens": tokens, "prompt_len": prompt_len, "response_len": response_len}
