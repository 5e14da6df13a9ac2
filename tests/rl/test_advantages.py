"""Advantage estimators against plain-loop float64 references (jirl/rl/advantages.py).

The references below are textbook loops over rows and time, written from the papers'
equations, not from the vectorised implementation. Conventions they share with it (and that
the module docstring states): rows with no valid step are padding, get 0 and are left out of
every statistic; sequence-level estimators use the undiscounted sum of the row's rewards.
"""

from __future__ import annotations

import functools
import inspect
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jirl.config import ConfigError
from jirl.registry import MissingInputError
from jirl.rl import advantages as adv
from jirl.rl.advantages import ADVANTAGES, advantage_fn

EPS = 1e-6
RTOL = 1e-5
ATOL = 1e-5  # float32 results near 0 need an absolute floor

ALL_NAMES = ["dr_grpo", "gae", "grpo", "reinforce", "reinforce_baseline", "reinforce_pp", "remax", "rloo", "rloo_to_go"]


# ----------------------------------------------------------------------------------------------
# Random batches
# ----------------------------------------------------------------------------------------------


BATCH, TIME = 16, 8  # fixed, so each estimator compiles once for the whole module


def random_group_sizes(rng, batch: int) -> list[int]:
    """Sizes in 1..4 summing to ``batch``, with at least two singletons and a group of three."""
    sizes = [1, 1, 3]
    while sum(sizes) < batch:
        sizes.append(int(min(rng.integers(1, 5), batch - sum(sizes))))
    return list(rng.permutation(sizes))


def random_batch(seed: int, *, contiguous_ids: bool = False):
    rng = np.random.default_rng(seed)
    batch, time = BATCH, TIME
    sizes = random_group_sizes(rng, batch)
    if contiguous_ids:
        labels = rng.permutation(batch)[: len(sizes)]  # distinct ids in [0, B), not contiguous
    else:
        labels = rng.choice(np.arange(-1000, 1000), size=len(sizes), replace=False) * 7919
    group_ids = np.repeat(labels, sizes)
    order = rng.permutation(batch)  # members of a group are not adjacent
    group_ids = group_ids[order].astype(np.int32)

    lengths = rng.integers(0, time + 1, size=batch)
    lengths[0] = 0  # an all-masked row
    lengths[1] = time  # a full row
    mask = np.arange(time)[None, :] < lengths[:, None]

    rewards = rng.normal(size=(batch, time))
    values = rng.normal(size=(batch, time))
    baseline_lengths = rng.integers(0, time + 1, size=batch)
    baseline_rewards = rng.normal(size=(batch, time)) * (np.arange(time)[None, :] < baseline_lengths[:, None])
    # padding holds garbage that must not leak into the result
    rewards[~mask] = np.nan
    values[~mask] = np.inf
    return dict(
        rewards=rewards,
        mask=mask,
        values=values,
        group_ids=group_ids,
        baseline_rewards=baseline_rewards,
        lengths=lengths,
        gamma=float(rng.uniform(0.5, 1.0)),
        lam=float(rng.uniform(0.0, 1.0)),
    )


# ----------------------------------------------------------------------------------------------
# Plain-loop references (numpy float64)
# ----------------------------------------------------------------------------------------------


def ref_gae(data):
    r, v, lengths, gamma, lam = data["rewards"], data["values"], data["lengths"], data["gamma"], data["lam"]
    out = np.zeros(r.shape)
    for b in range(r.shape[0]):
        n = lengths[b]
        for t in range(n):
            total = 0.0
            for l in range(n - t):
                s = t + l
                v_next = v[b, s + 1] if s + 1 < n else 0.0
                delta = r[b, s] + gamma * v_next - v[b, s]
                total += (gamma * lam) ** l * delta
            out[b, t] = total
    return out


def ref_reward_to_go(data):
    r, lengths, gamma = data["rewards"], data["lengths"], data["gamma"]
    out = np.zeros(r.shape)
    for b in range(r.shape[0]):
        for t in range(lengths[b]):
            out[b, t] = sum(gamma ** (s - t) * r[b, s] for s in range(t, lengths[b]))
    return out


def ref_sequence_return(data, b):
    return sum(data["rewards"][b, t] for t in range(data["lengths"][b]))


def broadcast(per_sequence, data):
    out = np.zeros(data["rewards"].shape)
    for b in range(out.shape[0]):
        for t in range(data["lengths"][b]):
            out[b, t] = per_sequence[b]
    return out


def group_members(data, b):
    """Indices of the non-empty rows in b's group (b included)."""
    return [
        i
        for i in range(len(data["group_ids"]))
        if data["group_ids"][i] == data["group_ids"][b] and data["lengths"][i] > 0
    ]


def ref_reinforce(data):
    return ref_reward_to_go(data)


def ref_reinforce_baseline(data):
    g = ref_reward_to_go(data)
    starts = [g[b, 0] for b in range(g.shape[0]) if data["lengths"][b] > 0]
    baseline = sum(starts) / len(starts)
    out = np.zeros(g.shape)
    for b in range(g.shape[0]):
        for t in range(data["lengths"][b]):
            out[b, t] = g[b, t] - baseline
    return out


def ref_rloo(data):
    per_sequence = []
    for b in range(len(data["group_ids"])):
        others = [ref_sequence_return(data, i) for i in group_members(data, b) if i != b]
        if data["lengths"][b] == 0 or not others:
            per_sequence.append(0.0)
        else:
            per_sequence.append(ref_sequence_return(data, b) - sum(others) / len(others))
    return broadcast(per_sequence, data)


def ref_rloo_to_go(data):
    g = ref_reward_to_go(data)
    out = np.zeros(g.shape)
    for b in range(g.shape[0]):
        for t in range(data["lengths"][b]):
            others = [g[i, t] for i in group_members(data, b) if i != b and data["lengths"][i] > t]
            out[b, t] = g[b, t] - (sum(others) / len(others) if others else 0.0)
    return out


def ref_remax(data):
    per_sequence = [
        ref_sequence_return(data, b) - sum(data["baseline_rewards"][b]) for b in range(len(data["group_ids"]))
    ]
    return broadcast(per_sequence, data)


def group_mean_std(data, b):
    returns = [ref_sequence_return(data, i) for i in group_members(data, b)]
    mean = sum(returns) / len(returns)
    std = math.sqrt(sum((x - mean) ** 2 for x in returns) / len(returns))
    return mean, std


def ref_grpo(data):
    per_sequence = []
    for b in range(len(data["group_ids"])):
        if data["lengths"][b] == 0:
            per_sequence.append(0.0)
            continue
        mean, std = group_mean_std(data, b)
        per_sequence.append((ref_sequence_return(data, b) - mean) / (std + EPS))
    return broadcast(per_sequence, data)


def ref_dr_grpo(data):
    per_sequence = []
    for b in range(len(data["group_ids"])):
        if data["lengths"][b] == 0:
            per_sequence.append(0.0)
            continue
        mean, _ = group_mean_std(data, b)
        per_sequence.append(ref_sequence_return(data, b) - mean)
    return broadcast(per_sequence, data)


def ref_reinforce_pp(data):
    g = ref_reward_to_go(data)
    tokens = [g[b, t] for b in range(g.shape[0]) for t in range(data["lengths"][b])]
    mean = sum(tokens) / len(tokens)
    std = math.sqrt(sum((x - mean) ** 2 for x in tokens) / len(tokens))
    out = np.zeros(g.shape)
    for b in range(g.shape[0]):
        for t in range(data["lengths"][b]):
            out[b, t] = (g[b, t] - mean) / (std + EPS)
    return out


REFERENCES = {
    "gae": ref_gae,
    "reinforce": ref_reinforce,
    "reinforce_baseline": ref_reinforce_baseline,
    "rloo": ref_rloo,
    "rloo_to_go": ref_rloo_to_go,
    "remax": ref_remax,
    "grpo": ref_grpo,
    "dr_grpo": ref_dr_grpo,
    "reinforce_pp": ref_reinforce_pp,
}


def common_kwargs(data):
    return dict(
        values=jnp.asarray(data["values"], jnp.float32),
        group_ids=jnp.asarray(data["group_ids"]),
        baseline_rewards=jnp.asarray(data["baseline_rewards"], jnp.float32),
        gamma=data["gamma"],
        lam=data["lam"],
    )


@functools.cache
def jitted(name):
    """``advantage_fn(name)`` under jit, called as ``f(rewards, mask, kwargs)``; gamma and lam traced."""
    estimator = advantage_fn(name)
    return jax.jit(lambda rewards, mask, kwargs: estimator(rewards, mask, **kwargs))


# ----------------------------------------------------------------------------------------------
# Against the references
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_loop_reference(name, seed):
    data = random_batch(seed)
    rewards = jnp.asarray(data["rewards"], jnp.float32)
    mask = jnp.asarray(data["mask"])
    got = np.asarray(jitted(name)(rewards, mask, common_kwargs(data)))
    want = REFERENCES[name](data)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got)), "garbage in padding leaked into the advantages"
    assert np.abs(want).max() > 1e-2, "degenerate test batch"
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert np.all(got[~data["mask"]] == 0)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_jit_matches_eager_and_static_num_groups(name):
    data = random_batch(10, contiguous_ids=True)
    estimator = advantage_fn(name)
    rewards = jnp.asarray(data["rewards"], jnp.float32)
    mask = jnp.asarray(data["mask"], jnp.float32)  # float masks work too
    kwargs = common_kwargs(data)
    eager = estimator(rewards, mask, **kwargs)
    compiled = jitted(name)(rewards, mask, kwargs)
    np.testing.assert_allclose(np.asarray(compiled), np.asarray(eager), rtol=1e-6, atol=1e-6)
    if "num_groups" in ADVANTAGES.options(name):
        with_static = advantage_fn(name, {"num_groups": len(data["group_ids"])})(rewards, mask, **kwargs)
        np.testing.assert_allclose(np.asarray(with_static), REFERENCES[name](data), rtol=RTOL, atol=ATOL)


def test_vmap_over_seeds_matches_per_seed_calls():
    batches = [random_batch(20 + i) for i in range(2)]
    stacked = {
        key: jnp.stack([jnp.asarray(b[key]) for b in batches])
        for key in ["rewards", "mask", "values", "group_ids", "baseline_rewards"]
    }
    for name in ALL_NAMES:
        estimator = advantage_fn(name)
        got = jax.vmap(
            lambda x: estimator(
                x["rewards"], x["mask"], values=x["values"], group_ids=x["group_ids"],
                baseline_rewards=x["baseline_rewards"], gamma=0.9, lam=0.7,
            )
        )(stacked)
        for i, data in enumerate(batches):
            want = REFERENCES[name]({**data, "gamma": 0.9, "lam": 0.7})
            np.testing.assert_allclose(np.asarray(got[i]), want, rtol=RTOL, atol=ATOL, err_msg=name)


def test_gae_returns_are_advantages_plus_values():
    data = random_batch(3)
    kwargs = common_kwargs(data)
    returns = adv.gae_returns(
        data["rewards"], data["mask"], values=kwargs["values"], gamma=data["gamma"], lam=data["lam"]
    )
    values = np.where(data["mask"], data["values"], 0.0)
    np.testing.assert_allclose(np.asarray(returns), ref_gae(data) + values, rtol=RTOL, atol=ATOL)
    # lam = 1: the lambda-return is the Monte-Carlo reward-to-go, whatever the critic says
    mc = adv.gae_returns(data["rewards"], data["mask"], values=kwargs["values"], gamma=data["gamma"], lam=1.0)
    np.testing.assert_allclose(np.asarray(mc), ref_reward_to_go(data), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.1, 1e6 + 0.1, -3.7])
def test_grpo_identical_group_rewards_give_exact_zero(value):
    rewards = jnp.array([[0.0, value], [0.0, value], [value, 0.0], [1.0, 0.0], [2.0, 0.0]], jnp.float32)
    mask = jnp.array([[1, 1], [1, 1], [1, 0], [1, 0], [1, 0]])
    group_ids = jnp.array([5, 5, 5, 9, 9])
    for name in ["grpo", "dr_grpo", "rloo"]:
        got = np.asarray(ADVANTAGES.get(name)(rewards, mask, group_ids=group_ids))
        assert np.all(np.isfinite(got))
        assert np.all(got[:3] == 0.0), (name, got[:3])
        assert np.all(got[3:][np.asarray(mask[3:]) > 0] != 0.0)
    np.testing.assert_allclose(np.asarray(adv.grpo(rewards, mask, group_ids=group_ids))[3:, 0], [-1.0, 1.0], rtol=1e-5)


def test_rloo_singletons_and_empty_rows_get_zero():
    rewards = jnp.array([[3.0, 1.0], [2.0, 0.0], [4.0, 0.0], [9.0, 9.0]])
    mask = jnp.array([[1, 1], [1, 0], [1, 0], [0, 0]])
    group_ids = jnp.array([0, 1, 1, 0])  # row 0's only partner is an empty row
    got = np.asarray(adv.rloo(rewards, mask, group_ids=group_ids))
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, [[0.0, 0.0], [-2.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    # a whole batch of singletons
    alone = np.asarray(adv.rloo(rewards, mask, group_ids=jnp.arange(4)))
    np.testing.assert_array_equal(alone, np.zeros((4, 2)))
    for name in ["grpo", "dr_grpo"]:
        np.testing.assert_array_equal(np.asarray(ADVANTAGES.get(name)(rewards, mask, group_ids=jnp.arange(4))), 0.0)


def test_all_masked_batch_is_zero_not_nan():
    rewards = jnp.ones((3, 4))
    mask = jnp.zeros((3, 4))
    kwargs = dict(values=jnp.ones((3, 4)), group_ids=jnp.array([0, 0, 1]), baseline_rewards=jnp.ones((3, 4)))
    for name in ALL_NAMES:
        np.testing.assert_array_equal(np.asarray(advantage_fn(name)(rewards, mask, **kwargs)), 0.0)


def test_reinforce_dense_vs_sparse_reward_to_go():
    mask = jnp.ones((1, 4))
    sparse = jnp.array([[0.0, 0.0, 0.0, 3.0]])
    dense = jnp.array([[1.0, 1.0, 1.0, 0.0]])  # same sequence return, credited earlier
    np.testing.assert_allclose(np.asarray(adv.reinforce(sparse, mask)), [[3.0, 3.0, 3.0, 3.0]])
    np.testing.assert_allclose(np.asarray(adv.reinforce(dense, mask)), [[3.0, 2.0, 1.0, 0.0]])
    # with discounting the sparse reward decays backwards; a reward on the first token does not
    np.testing.assert_allclose(np.asarray(adv.reinforce(sparse * 8 / 3, mask, gamma=0.5)), [[1.0, 2.0, 4.0, 8.0]])
    front = jnp.array([[8.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(adv.reinforce(front, mask, gamma=0.5)), [[8.0, 0.0, 0.0, 0.0]])
    # sequence-level estimators only see the return: dense and sparse agree there
    both = jnp.concatenate([sparse, dense])
    np.testing.assert_array_equal(np.asarray(adv.rloo(both, jnp.ones((2, 4)), group_ids=jnp.array([0, 0]))), 0.0)


def test_check_rewards_names_offending_samples():
    rewards = np.zeros((6, 4), np.float32)
    mask = np.ones((6, 4))
    mask[0, 2:] = 0
    rewards[0, 3] = np.nan  # padding: ignored
    rewards[2, 1] = np.nan
    rewards[5, 0] = np.inf
    with pytest.raises(ValueError, match=r"samples \[2, 5\]"):
        adv.check_rewards(rewards, mask)
    rewards[2, 1] = rewards[5, 0] = 0.0
    adv.check_rewards(rewards, mask)  # only padding is NaN: fine
    adv.check_rewards(jnp.asarray(rewards), jnp.asarray(mask))


def test_missing_inputs_and_bad_group_ids_raise_clearly():
    rewards, mask = jnp.ones((3, 2)), jnp.ones((3, 2))
    with pytest.raises(MissingInputError, match="'gae' needs values=.*critic"):
        advantage_fn("gae")(rewards, mask)
    with pytest.raises(ValueError, match="'grpo' needs group_ids"):
        advantage_fn("grpo")(rewards, mask)
    with pytest.raises(ValueError, match="baseline_rewards"):
        advantage_fn("remax")(rewards, mask)
    with pytest.raises(ValueError, match="group_ids"):
        adv.grpo(rewards, mask, group_ids=None)  # a direct call with None is caught too
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        adv.rloo(rewards, mask, group_ids=jnp.array([0, 7, 1]), num_groups=3)
    with pytest.raises(ValueError, match="mask shape"):
        adv.reinforce(rewards, jnp.ones((3, 3)))


def test_remax_baseline_mask():
    rewards = jnp.array([[1.0, 2.0, 0.0]])
    mask = jnp.array([[1, 1, 0]])
    greedy = jnp.array([[0.5, 0.5, 100.0]])
    np.testing.assert_allclose(np.asarray(adv.remax(rewards, mask, baseline_rewards=greedy)), [[-98.0, -98.0, 0.0]])
    got = adv.remax(rewards, mask, baseline_rewards=greedy, baseline_mask=jnp.array([[1, 1, 0]]))
    np.testing.assert_allclose(np.asarray(got), [[2.0, 2.0, 0.0]])


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


def test_registry_has_every_estimator_taking_exactly_its_arguments():
    assert ADVANTAGES.names() == ALL_NAMES
    data = random_batch(7)
    kwargs = common_kwargs(data)
    for name in ADVANTAGES:
        estimator = ADVANTAGES.get(name)
        params = inspect.signature(estimator).parameters
        positional = [p for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert [p.name for p in positional] == ["rewards", "mask"], name
        assert all(p.kind is p.KEYWORD_ONLY for p in list(params.values())[2:]), name
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), f"{name} must not take **kwargs"
        cites_paper = re.search(r"\((?:[^()]*, )?(19|20)\d\d", estimator.__doc__ or "")
        assert cites_paper, f"{name} docstring should cite its paper"
        # the adapter makes one call for every estimator
        got = advantage_fn(name)(data["rewards"], data["mask"], **kwargs)
        assert got.shape == data["rewards"].shape
        assert np.all(np.asarray(got)[~data["mask"]] == 0)


def test_the_adapter_passes_an_estimator_only_the_inputs_it_declares():
    seen = {}

    def spy(rewards, mask, *, group_ids, gamma=1.0, scale=1.0):
        seen.update(group_ids=group_ids, gamma=gamma, scale=scale)
        return scale * rewards

    ADVANTAGES.register("_test_spy", spy)
    try:
        rewards, mask = jnp.ones((2, 3)), jnp.ones((2, 3))
        got = advantage_fn("_test_spy", {"scale": 2.0})(
            rewards, mask, group_ids=jnp.array([0, 1]), values=jnp.zeros((2, 3)), gamma=0.5, lam=0.3,
            baseline_rewards=jnp.zeros((2, 3)),
        )  # values, lam and baseline_rewards are not declared: a call with them would be a TypeError
        np.testing.assert_array_equal(got, 2.0 * rewards)
        assert seen["gamma"] == 0.5 and seen["scale"] == 2.0
        assert ADVANTAGES.options("_test_spy") == {"scale": 1.0}  # inputs are not options
        with pytest.raises(MissingInputError, match="'_test_spy' needs group_ids"):
            advantage_fn("_test_spy")(rewards, mask)
    finally:
        ADVANTAGES._items.pop("_test_spy")


def test_a_misspelt_option_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"advantage estimator 'grpo' has no option 'esp'\. Did you mean 'eps'\? "
                                          r"Its options are: eps, num_groups"):
        advantage_fn("grpo", {"esp": 1e-3})
    with pytest.raises(ConfigError, match=r"'rloo' has no option 'gamma' \(an input its caller supplies"):
        advantage_fn("rloo", {"gamma": 0.9})
    with pytest.raises(ConfigError, match=r"Its options are: \(none\)"):
        advantage_fn("gae", {"lamda": 0.9})


def test_an_option_changes_the_estimate():
    """GRPO's eps against the hand value: a group with returns 0 and 1 has mean 1/2 and
    population std 1/2, so A = -/+ (1/2) / (1/2 + eps)."""
    rewards = jnp.array([[0.0], [1.0]])
    mask = jnp.ones((2, 1))
    ids = jnp.array([3, 3])
    default = advantage_fn("grpo")(rewards, mask, group_ids=ids)
    np.testing.assert_allclose(default[:, 0], [-0.5 / (0.5 + EPS), 0.5 / (0.5 + EPS)], rtol=1e-6)
    loose = advantage_fn("grpo", {"eps": 0.5})(rewards, mask, group_ids=ids)
    np.testing.assert_allclose(loose[:, 0], [-0.5, 0.5], rtol=1e-6)


def test_rloo_to_go_is_rloo_for_sparse_rewards_of_equal_length():
    rng = np.random.default_rng(3)
    mask = jnp.ones((8, 5))
    rewards = jnp.zeros((8, 5)).at[:, -1].set(jnp.asarray(rng.standard_normal(8), jnp.float32))
    ids = jnp.repeat(jnp.arange(2), 4)
    np.testing.assert_allclose(adv.rloo_to_go(rewards, mask, group_ids=ids), adv.rloo(rewards, mask, group_ids=ids), atol=1e-6)
