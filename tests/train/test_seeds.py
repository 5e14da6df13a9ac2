import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jirl.models.transformer import Transformer, llama_tiny
from jirl.train.loop import scan_updates
from jirl.train.seeds import init_members, make_multi_seed_step, member, stack_members
from jirl.train.sft import sft_loss
from jirl.train.step import init_train_state, make_update_step, update_fn
from tests.train.test_step import make_batch

CONFIG = llama_tiny(7, max_len=16, d_model=32)
GRAPHDEF = nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(0)))[0]


def init_fn(optimizer):
    def init(key):
        params = nnx.split(Transformer(CONFIG, rngs=nnx.Rngs(params=key)))[1]
        return init_train_state(params, optimizer, key)

    return init


def test_vmapped_seeds_equal_separately_trained_seeds():
    optimizer = optax.adam(3e-3)
    keys = jax.random.split(jax.random.key(0), 3)
    states = init_members(init_fn(optimizer), keys)
    step = make_multi_seed_step(sft_loss(GRAPHDEF), optimizer)
    single = make_update_step(sft_loss(GRAPHDEF), optimizer, donate=False)
    separate = [init_fn(optimizer)(k) for k in keys]
    for seed in range(3):
        batch = make_batch(seed=seed)
        states, metrics = step(states, batch)
        for m in range(3):
            separate[m], single_metrics = single(separate[m], batch)
            np.testing.assert_allclose(metrics["loss"][m], single_metrics["loss"], rtol=1e-5)
    for m in range(3):
        member = jax.tree_util.tree_map(lambda x: x[m], states.params)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), member, separate[m].params)
    assert not np.allclose(metrics["loss"][0], metrics["loss"][1])  # seeds differ


def test_a_learning_rate_axis_matches_separate_runs():
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1.0)  # value replaced per member
    rates = [1e-3, 3e-2]
    key = jax.random.key(1)
    same_key = jnp.stack([jax.random.key_data(key)] * 2)
    states = init_members(init_fn(optimizer), jax.random.wrap_key_data(same_key), hyperparams={"learning_rate": rates})
    step = make_multi_seed_step(sft_loss(GRAPHDEF), optimizer)
    batch = make_batch(seed=5)
    for _ in range(3):
        states, metrics = step(states, batch)
    for m, rate in enumerate(rates):
        plain = optax.adam(rate)
        state = init_fn(plain)(key)
        single = make_update_step(sft_loss(GRAPHDEF), plain, donate=False)
        for _ in range(3):
            state, single_metrics = single(state, batch)
        np.testing.assert_allclose(metrics["loss"][m], single_metrics["loss"], rtol=1e-5)
    assert metrics["loss"][1] < metrics["loss"][0]  # the larger rate moved further in 3 steps


def test_scanned_updates_vmapped_over_seeds_equal_the_jitted_step_run_per_seed():
    """``scan_updates`` vmapped over 3 seeds (each its own data and batch order) gives each seed
    the parameters and losses of ``make_update_step`` applied batch by batch on the host."""
    optimizer = optax.adam(3e-3)
    keys = jax.random.split(jax.random.key(1), 3)
    states = init_members(init_fn(optimizer), keys)
    data = stack_members([make_batch(batch_size=12, seed=10 + m) for m in range(3)])
    orders = np.stack([np.random.default_rng(m).permutation(12).reshape(3, 4) for m in range(3)])  # 3 steps of 4 rows
    step = update_fn(sft_loss(GRAPHDEF), optimizer)
    states, metrics = jax.jit(jax.vmap(lambda s, d, o: scan_updates(step, s, d, o)))(states, data, orders)
    assert metrics["loss"].shape == (3, 3)
    single = make_update_step(sft_loss(GRAPHDEF), optimizer, donate=False)
    for m in range(3):
        state, seed_data = init_fn(optimizer)(keys[m]), member(data, m)
        for t in range(3):
            state, single_metrics = single(state, jax.tree_util.tree_map(lambda v: v[orders[m, t]], seed_data))
            np.testing.assert_allclose(metrics["loss"][m, t], single_metrics["loss"], rtol=1e-5)
        # Adam moves every weight by ~lr = 3e-3 a step whatever its gradient, so a wrong row or
        # order shows at that size; rounding (amplified where a gradient is near 0) stays < 1% of it.
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-5), member(states.params, m), state.params
        )


def test_stacked_members_unstack_to_the_originals():
    trees = [{"w": jnp.full((2,), float(m)), "b": (jnp.int32(m),)} for m in range(3)]
    stacked = stack_members(trees)
    assert stacked["w"].shape == (3, 2) and stacked["b"][0].shape == (3,)
    for m in range(3):
        jax.tree_util.tree_map(np.testing.assert_array_equal, member(stacked, m), trees[m])
