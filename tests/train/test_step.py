import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.models.transformer import Transformer, llama_tiny
from jirl import sharding
from jirl.train.losses import AGGREGATIONS, LossOutput, sequence_mean_of_token_means, token_mean
from jirl.train.sft import sft_loss
from jirl.train.step import accumulate_gradients, init_train_state, make_update_step

VOCAB = 7


def make_batch(batch_size=16, width=10, seed=0, empty_rows=(3, 11)):
    rng = np.random.default_rng(seed)
    prompt_len = rng.integers(1, 4, batch_size).astype(np.int32)
    response_len = np.array([rng.integers(1, width - p + 1) for p in prompt_len], np.int32)
    response_len[list(empty_rows)] = 0  # fully masked sequences
    tokens = rng.integers(1, VOCAB, (batch_size, width)).astype(np.int32)
    return {"tokens": tokens, "prompt_len": prompt_len, "response_len": response_len}


def f64_model():
    config = llama_tiny(VOCAB, dtype="float64", max_len=16)
    graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    return graphdef, jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), params)


def brute_force_loss(graphdef, params, batch, aggregation):
    """Plain loops over rows and tokens: the definition of each aggregation."""
    logits = np.asarray(nnx.merge(graphdef, params)(jnp.asarray(batch["tokens"])).logits, np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_row = []
    for b in range(len(batch["tokens"])):
        p, n = batch["prompt_len"][b], batch["response_len"][b]
        per_row.append([-log_probs[b, p + t - 1, batch["tokens"][b, p + t]] for t in range(n)])
    if aggregation == "token_mean":
        return sum(sum(r) for r in per_row) / sum(len(r) for r in per_row)
    non_empty = [r for r in per_row if r]
    if aggregation == "sequence_mean":
        return np.mean([np.mean(r) for r in non_empty])
    return np.mean([np.sum(r) for r in non_empty])


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "sequence_sum"])
def test_loss_and_gradients_are_invariant_to_micro_batching_and_sharding(aggregation):
    with jax.enable_x64(True):
        graphdef, params = f64_model()
        loss_fn = sft_loss(graphdef, aggregation)
        batch = make_batch()
        key = jax.random.key(0)

        def loss_and_grads(batch, micro):
            grads, total, count, _ = accumulate_gradients(loss_fn, params, nnx.State({}), batch, key, micro)
            return total / count, jax.tree_util.tree_map(lambda g: g / count, grads)

        full_loss, full_grads = jax.jit(loss_and_grads, static_argnums=1)(batch, 1)
        np.testing.assert_allclose(full_loss, brute_force_loss(graphdef, params, batch, aggregation), rtol=1e-10)
        for micro in (2, 4, 8):
            loss, grads = jax.jit(loss_and_grads, static_argnums=1)(batch, micro)
            np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
            jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12), grads, full_grads)

        mesh = sharding.make_mesh(data=8)
        sharded = sharding.shard_batch(batch, mesh)
        assert len(sharded["tokens"].sharding.device_set) == 8
        loss, grads = jax.jit(loss_and_grads, static_argnums=1)(sharded, 1)
        np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12), grads, full_grads)


def test_fully_masked_sequences_contribute_nothing():
    values = jnp.array([[1.0, 2.0, 3.0], [5.0, 7.0, 9.0], [4.0, 4.0, 4.0]])
    mask = jnp.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    without = jnp.array([[1, 1, 0], [1, 0, 0]])
    for aggregate in AGGREGATIONS.values():
        a, b = aggregate(values, mask), aggregate(values[jnp.array([0, 2])], without)
        assert float(a.value) == pytest.approx(float(b.value))
        assert float(a.count) == float(b.count)
    assert float(token_mean(values, mask).value) == pytest.approx((1 + 2 + 4) / 3)
    assert float(sequence_mean_of_token_means(values, mask).value) == pytest.approx((1.5 + 4) / 2)
    assert float(LossOutput(jnp.float32(0), jnp.float32(0)).value) == 0.0


def test_trainable_parameters_change_and_frozen_ones_do_not():
    graphdef, params = nnx.split(Transformer(llama_tiny(VOCAB, max_len=16), rngs=nnx.Rngs(1)))
    frozen_filter = nnx.Any(nnx.PathContains("embed"), nnx.PathContains("attn_norm"))
    trainable = nnx.Not(frozen_filter)
    optimizer = optax.adam(1e-2)
    state = init_train_state(params, optimizer, jax.random.key(0), trainable=trainable)
    before_trainable = jax.tree_util.tree_map(np.array, state.params)
    before_frozen = jax.tree_util.tree_map(np.array, state.frozen)
    assert jax.tree_util.tree_leaves(before_frozen), "the filter should freeze something"
    step = make_update_step(sft_loss(graphdef), optimizer)
    for seed in range(3):
        state, metrics = step(state, make_batch(seed=seed))
        assert not bool(metrics["nonfinite"])
    assert int(state.step) == 3
    for path, old in nnx.to_flat_state(before_trainable):
        new = dict(nnx.to_flat_state(state.params))[path]
        assert not np.array_equal(np.asarray(old[...]), np.asarray(new[...])), f"{path} did not change"
    for path, old in nnx.to_flat_state(before_frozen):
        new = dict(nnx.to_flat_state(state.frozen))[path]
        np.testing.assert_array_equal(np.asarray(old[...]), np.asarray(new[...]))


def test_a_nonfinite_loss_skips_the_update_and_is_flagged():
    graphdef, params = nnx.split(Transformer(llama_tiny(VOCAB, max_len=16), rngs=nnx.Rngs(1)))
    optimizer = optax.sgd(0.1)

    def nan_loss(params, batch, key):
        out, metrics = sft_loss(graphdef)(params, batch, key)
        return LossOutput(out.total * jnp.nan, out.count), metrics

    state = init_train_state(params, optimizer, jax.random.key(0))
    before = jax.tree_util.tree_map(np.array, state.params)
    state, metrics = make_update_step(nan_loss, optimizer)(state, make_batch())
    assert bool(metrics["nonfinite"]) and int(state.step) == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(np.array, state.params), before)


def test_bf16_compute_keeps_float32_master_parameters():
    graphdef, params = nnx.split(Transformer(llama_tiny(VOCAB, max_len=16, dtype="bfloat16"), rngs=nnx.Rngs(1)))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    optimizer = optax.adam(1e-2)
    state = init_train_state(params, optimizer, jax.random.key(0))
    step = make_update_step(sft_loss(graphdef), optimizer)
    losses = []
    for _ in range(8):
        state, metrics = step(state, make_batch(seed=0))
        losses.append(float(metrics["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state.params))
    assert losses[-1] < losses[0]
    hidden = nnx.merge(graphdef, state.full_params)(jnp.asarray(make_batch()["tokens"])).hidden
    assert hidden.dtype == jnp.bfloat16


def test_accumulation_needs_a_divisible_batch():
    graphdef, params = nnx.split(Transformer(llama_tiny(VOCAB, max_len=16), rngs=nnx.Rngs(1)))
    state = init_train_state(params, optax.sgd(0.1), jax.random.key(0))
    with pytest.raises(ValueError, match="not divisible by accumulation_steps=3"):
        make_update_step(sft_loss(graphdef), optax.sgd(0.1), accumulation_steps=3)(state, make_batch())


@pytest.mark.parametrize("mesh_shape", [dict(data=8), dict(data=1, fsdp=8), dict(data=2, fsdp=4)])
def test_sharded_training_matches_single_device_training(mesh_shape):
    graphdef, params = nnx.split(Transformer(llama_tiny(VOCAB, max_len=16), rngs=nnx.Rngs(2)))
    # SGD: parameters move linearly in the gradient (Adam would amplify float-rounding noise of
    # near-zero gradients into visible differences, which says nothing about sharding).
    optimizer = optax.sgd(0.5)
    step = make_update_step(sft_loss(graphdef), optimizer, donate=False)
    single = init_train_state(params, optimizer, jax.random.key(0))
    mesh = sharding.make_mesh(**mesh_shape)
    strategy = "fsdp" if mesh_shape.get("fsdp", 1) > 1 else "replicate"
    sharded = sharding.shard_state(init_train_state(params, optimizer, jax.random.key(0)), mesh, strategy)
    if strategy == "fsdp":
        kernel = sharded.params["layers"][0]["mlp"]["gate_proj"]["kernel"][...]
        assert kernel.sharding.spec != jax.sharding.PartitionSpec()  # really split
        assert kernel.addressable_shards[0].data.size < kernel.size
    for seed in range(2):
        batch = make_batch(seed=seed)
        single, m1 = step(single, batch)
        sharded, m2 = step(sharded, sharding.shard_batch(batch, mesh))
        np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6), sharded.params, single.params
    )


def test_mesh_errors_name_the_sizes():
    with pytest.raises(ValueError, match="needs 6 devices but 8"):
        sharding.make_mesh(data=2, fsdp=3)
    with pytest.raises(ValueError, match="not divisible by the 8 data shards"):
        sharding.shard_batch(make_batch(batch_size=12, empty_rows=()), sharding.make_mesh(data=8))


def test_the_callers_params_and_key_survive_donation_of_the_state():
    params = nnx.State({"w": jnp.ones(3)})
    key = jax.random.key(0)
    optimizer = optax.sgd(0.1)
    state = init_train_state(params, optimizer, key)
    step = make_update_step(lambda p, b, k: (LossOutput(jnp.sum(p["w"] ** 2), jnp.asarray(1.0)), {}), optimizer)
    state, _ = step(state, {"x": jnp.ones(1)})  # donates the state's buffers
    np.testing.assert_array_equal(np.asarray(params["w"][...]), np.ones(3))
    assert jax.random.split(key).shape == (2,)  # still a live key
