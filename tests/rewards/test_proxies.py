"""Proxy reward models: vmapped BT training where each member sees only its own prefix of the
pairs, pool scoring in chunks, and the RL reward of an aggregated, KL-penalised ensemble."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.eval.setting import Setting
from jirl.mdp.tasks import make_task
from jirl.models.heads import SequenceRewardModel
from jirl.models.scoring import response_log_probs, response_mask
from jirl.models.transformer import ModelSize
from jirl.rewards.models import sequence_reward_fn
from jirl.rewards.proxies import ensemble_reward_fn, score_pool, train_proxies

TASK = make_task("bigram", num_chars=3, horizon=3, seed=0)
PROXY = ModelSize(family="llama", d_model=8, num_layers=1).build(TASK.vocab_size, TASK.prompt_width + TASK.horizon)


def proxy(seed: int):
    return nnx.split(SequenceRewardModel(PROXY, rngs=nnx.Rngs(seed)))


def pool_of(rows) -> dict:
    tokens = np.array(rows, np.int32)
    response_len = np.sum(tokens[:, 1:] != 0, axis=1) + 1  # letters, then EOS (or the horizon)
    response_len = np.minimum(response_len, TASK.horizon)
    prompt_len = np.ones(len(rows), np.int32)
    return {"tokens": tokens, "prompt_len": prompt_len, "response_len": response_len, "length": prompt_len + response_len}


POOL = pool_of([[1, 2, 3, 0], [1, 3, 2, 0], [2, 1, 1, 1], [2, 3, 0, 0], [3, 1, 0, 0], [3, 2, 2, 2]])


def test_each_member_learns_from_its_own_prefix_of_the_pairs():
    """Pairs 0..7 prefer response 0 to 1; pairs 8.. prefer 1 to 0. A member that sees the first
    8 pairs ranks 0 above 1; a member that sees all 108 (mostly the reverse) ranks 1 above 0."""
    chosen = np.array([0] * 8 + [1] * 100)
    rejected = np.array([1] * 8 + [0] * 100)
    graphdef, _ = proxy(0)
    inits = [proxy(1)[1], proxy(2)[1]]
    params = train_proxies(
        graphdef, inits, POOL, (chosen, rejected), [8, 108], optimizer=optax.adam(1e-2), steps=40, batch_size=8,
        key=jax.random.key(0), order_seeds=[0, 1],
    )
    scores = score_pool(graphdef, params, POOL)
    assert scores.shape == (2, 6)
    assert scores[0, 0] > scores[0, 1] + 0.5
    assert scores[1, 1] > scores[1, 0] + 0.5
    untrained = train_proxies(
        graphdef, inits, POOL, (chosen, rejected), [8, 108], optimizer=optax.adam(1e-2), steps=0, batch_size=8,
        key=jax.random.key(0), order_seeds=[0, 1],
    )
    assert all(np.array_equal(a[1], b) for a, b in zip(jax.tree_util.tree_leaves(untrained), jax.tree_util.tree_leaves(inits[1])))
    with pytest.raises(ValueError, match="one init, pair count and order seed per member"):
        train_proxies(graphdef, inits, POOL, (chosen, rejected), [8], optimizer=optax.adam(1e-2), steps=1, batch_size=8,
                      key=jax.random.key(0), order_seeds=[0, 1])


def test_score_pool_scores_every_response_under_every_member_in_chunks():
    graphdef, a = proxy(1)
    _, b = proxy(2)
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), a, b)
    scores = score_pool(graphdef, stacked, POOL, chunk=4)  # 6 responses: a full chunk and a short one
    score = sequence_reward_fn(graphdef)
    for m, params in enumerate((a, b)):
        np.testing.assert_allclose(scores[m], np.asarray(score(params, POOL["tokens"], POOL["length"])), rtol=1e-5, atol=1e-6)


def test_ensemble_reward_is_the_aggregated_score_at_the_last_step_minus_the_kl_penalty():
    setting = Setting.build(TASK, ModelSize(family="gpt2", d_model=8), seed=0, exact=False)
    graphdef, a = proxy(1)
    _, b = proxy(2)
    params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), a, b)
    tokens, prompt_lens, response_lens = (jnp.asarray(POOL[k]) for k in ("tokens", "prompt_len", "response_len"))
    score = sequence_reward_fn(graphdef)
    members = np.stack([np.asarray(score(p, POOL["tokens"], POOL["length"])) for p in (a, b)])
    last = np.arange(TASK.horizon)[None, :] == (POOL["response_len"][:, None] - 1)

    def rewards(ensemble, policy=None):
        return np.asarray(ensemble_reward_fn(setting, graphdef, ensemble, policy)(tokens, prompt_lens, response_lens))

    worst = rewards({"params": params, "min": True, "k": 0.0, "kl_coef": 0.0})
    np.testing.assert_allclose(worst, np.where(last, members.min(0)[:, None], 0.0), rtol=1e-5, atol=1e-6)
    cautious = rewards({"params": params, "min": False, "k": 2.0, "kl_coef": 0.0})
    np.testing.assert_allclose(cautious, np.where(last, (members.mean(0) - 2.0 * members.std(0))[:, None], 0.0), rtol=1e-5, atol=1e-5)
    # KL in the reward: minus kl_coef log pi / pi_ref on every valid step; zero at the reference.
    plain = {"params": params, "min": False, "k": 0.0, "kl_coef": 0.5}
    np.testing.assert_allclose(rewards(plain, setting.reference), np.where(last, members.mean(0)[:, None], 0.0), rtol=1e-5, atol=1e-6)
    policy = jax.tree_util.tree_map(lambda x: 2.0 * x, setting.reference)
    log_ratio = response_log_probs(setting.graphdef, policy, tokens, prompt_lens, TASK.horizon) - response_log_probs(
        setting.graphdef, setting.reference, tokens, prompt_lens, TASK.horizon
    )
    mask = np.asarray(response_mask(response_lens, TASK.horizon))
    expected = np.where(last, members.mean(0)[:, None], 0.0) - 0.5 * np.where(mask, np.asarray(log_ratio), 0.0)
    assert np.abs(np.where(mask, np.asarray(log_ratio), 0.0)).max() > 1e-3
    np.testing.assert_allclose(rewards(plain, policy), expected, rtol=1e-5, atol=1e-5)
