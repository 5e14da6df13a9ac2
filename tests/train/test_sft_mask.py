"""The SFT objective with an assistant-only ``loss_mask`` (jirl.train.sft): it counts exactly the
marked response tokens, checked against a per-token loop that runs the model on each prefix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jirl.models.transformer import Transformer, llama_tiny
from jirl.train.sft import sft_loss, sft_token_mask
from jirl.train.step import accumulate_gradients

VOCAB, WIDTH = 9, 10


def masked_batch(batch_size=4, seed=0):
    """Random buffers; a loss mask with holes inside each response (user turns of a multi-turn
    chat), ones in the prompt and the padding too (which must never count), one row all masked."""
    rng = np.random.default_rng(seed)
    prompt_len = rng.integers(1, 5, batch_size).astype(np.int32)
    response_len = np.array([rng.integers(1, WIDTH - p + 1) for p in prompt_len], np.int32)
    tokens = rng.integers(0, VOCAB, (batch_size, WIDTH)).astype(np.int32)
    loss_mask = rng.integers(0, 2, (batch_size, WIDTH)).astype(np.int32)
    loss_mask[:, 0] = 1  # slot 0 can never be predicted: a mark there must be ignored
    loss_mask[2] = 0  # a row with nothing to train
    return {"tokens": tokens, "prompt_len": prompt_len, "response_len": response_len, "loss_mask": loss_mask}


def f64_model():
    config = llama_tiny(VOCAB, dtype="float64", max_len=16)
    graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    return graphdef, jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), params)


def per_token_loop(graphdef, params, batch):
    """Sum of -log pi(token | prefix) over the marked response slots, and their count: each token
    scored by its own forward pass over the prefix before it."""
    model = nnx.merge(graphdef, params)
    total, count = 0.0, 0
    for b in range(len(batch["tokens"])):
        p, n = int(batch["prompt_len"][b]), int(batch["response_len"][b])
        for slot in range(p, p + n):
            if not batch["loss_mask"][b, slot]:
                continue
            logits = np.asarray(model(jnp.asarray(batch["tokens"][b : b + 1, :slot])).logits[0, -1], np.float64)
            log_z = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
            total -= logits[batch["tokens"][b, slot]] - log_z
            count += 1
    return total, count


@pytest.mark.slow  # one eager forward pass per scored token
def test_masked_loss_equals_a_per_token_loop():
    with jax.enable_x64(True):
        graphdef, params = f64_model()
        batch = masked_batch(seed=3)  # 8 marked tokens in 24 response tokens
        out, _ = sft_loss(graphdef)(params, batch, jax.random.key(0))
        total, count = per_token_loop(graphdef, params, batch)
        assert count == 8 and int(out.count) == count
        np.testing.assert_allclose(float(out.total), total, rtol=1e-10)
        np.testing.assert_allclose(float(out.value), total / count, rtol=1e-10)


def test_mask_of_ones_is_the_unmasked_loss_and_holes_change_it():
    graphdef, params = nnx.split(Transformer(llama_tiny(VOCAB, max_len=16), rngs=nnx.Rngs(1)))
    batch = masked_batch(seed=1)
    plain = {k: v for k, v in batch.items() if k != "loss_mask"}
    ones = {**plain, "loss_mask": np.ones_like(batch["loss_mask"])}
    loss = lambda b: sft_loss(graphdef)(params, b, None)[0]  # noqa: E731
    assert float(loss(ones).value) == pytest.approx(float(loss(plain).value), rel=1e-6)
    assert float(loss(ones).count) == float(np.sum(batch["response_len"]))
    assert float(loss(batch).count) < float(loss(plain).count)
    assert float(loss(batch).value) != pytest.approx(float(loss(plain).value), rel=1e-4)


def test_mask_steps_follow_the_prompt_offset():
    batch = {"prompt_len": np.array([2, 3]), "response_len": np.array([3, 1]),
             "loss_mask": np.array([[0, 0, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]])}
    mask = np.asarray(sft_token_mask(batch, 5))
    np.testing.assert_array_equal(mask, [[1, 0, 1, 0, 0], [1, 0, 0, 0, 0]])


def test_masked_loss_is_invariant_to_micro_batching():
    with jax.enable_x64(True):
        graphdef, params = f64_model()
        batch = masked_batch(batch_size=4, seed=2)
        loss_fn = sft_loss(graphdef)

        def loss_and_grads(micro):
            grads, total, count, _ = accumulate_gradients(loss_fn, params, nnx.State({}), batch, jax.random.key(0), micro)
            return total / count, jax.tree_util.tree_map(lambda g: g / count, grads)

        full_loss, full_grads = loss_and_grads(1)
        micro_loss, micro_grads = loss_and_grads(2)
        np.testing.assert_allclose(float(micro_loss), float(full_loss), rtol=1e-10)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12), micro_grads, full_grads)
