"""DPO and IPO against closed forms: the exact expected loss over every pair of an enumerable
task, minimised by gradient descent through the training engine."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.mdp import oracle
from jirl.mdp.best_of_n import complete_sequences
from jirl.mdp.tasks import make_task
from jirl.models.scoring import logits_fn
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.preference.exact import exact_preference_pairs, ipo_fixed_point
from jirl.preference.objective import add_reference_log_probs, preference_loss
from jirl.train.step import init_train_state, make_update_step

TASK = make_task("bigram", num_chars=2, horizon=3)
BETA = 0.5


@functools.cache
def setting():
    spec = TASK.tree_spec()
    rewards = oracle.rewards_from_step_fn(spec, TASK.step_reward)
    graphdef, params = nnx.split(Transformer(gpt2_tiny(TASK.vocab_size, max_len=8, d_model=32), rngs=nnx.Rngs(0)))
    ref_tree = oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, params))
    pairs = exact_preference_pairs(spec, rewards)  # beta_ann = 1: P(i > j) = sigma(R_i - R_j)
    return spec, rewards, graphdef, params, ref_tree, pairs


def minimise(loss: str, steps: int = 200, learning_rate: float = 1e-2):
    """Full-batch Adam on the exact expected loss; returns the final policy tree."""
    spec, _, graphdef, params, _, pairs = setting()
    batch = {k: v for k, v in pairs.items() if k not in ("returns", "mu")}
    batch = {k: jnp.asarray(v) for k, v in add_reference_log_probs(graphdef, params, batch).items()}
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05))
    state = init_train_state(params, optimizer, jax.random.key(0))
    step = make_update_step(preference_loss(graphdef, loss, beta=BETA), optimizer)
    for _ in range(steps):
        state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    return oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, state.full_params))


def test_exact_pairs_enumerate_every_ordered_pair_with_bradley_terry_weights():
    spec, _, _, _, _, pairs = setting()
    returns = pairs["returns"]
    num = returns.shape[1]
    assert len(pairs["chosen"]) == spec.num_prompts * num * (num - 1)
    np.testing.assert_allclose(pairs["weight"].sum(), 1.0, rtol=1e-5)
    # Pair (i, j) and its mirror (j, i) carry sigma(R_i - R_j) and sigma(R_j - R_i) of the same mass.
    first, mirror = 0, num - 1  # rows (0, 1) and (1, 0) of prompt 0
    total = pairs["weight"][first] + pairs["weight"][mirror]
    expected = 1.0 / (1.0 + np.exp(-(returns[0, 0] - returns[0, 1])))
    np.testing.assert_allclose(pairs["weight"][first] / total, expected, rtol=1e-5)


@pytest.mark.slow
def test_the_exact_dpo_minimiser_is_the_kl_regularised_optimum_and_its_implicit_rewards_are_q_minus_v():
    spec, rewards, _, _, ref_tree, _ = setting()
    solution = oracle.solve(spec, ref_tree, rewards, BETA)
    policy = minimise("dpo")
    kl = float(oracle.kl_divergence(spec, policy, solution.log_probs))
    assert kl < 0.02, kl  # measured ~2e-4
    # From r to Q*: beta log pi/pi_ref (a|s) = Q*(s, a) - V*(s) at every (s, a) of the tree.
    implicit = np.concatenate([np.ravel(BETA * (p - r)) for p, r in zip(policy, ref_tree)])
    advantage = np.concatenate([np.ravel(q - v[..., None]) for q, v in zip(solution.q, solution.v)])
    assert np.corrcoef(implicit, advantage)[0, 1] >= 0.99


@pytest.mark.slow
def test_ipo_converges_to_its_closed_form_fixed_point():
    spec, rewards, _, _, ref_tree, pairs = setting()
    policy = minimise("ipo", steps=300)
    reference_log_p, _ = complete_sequences(spec, ref_tree, rewards)
    target = ipo_fixed_point(reference_log_p, pairs["returns"], pairs["mu"], tau=BETA)
    got, _ = complete_sequences(spec, policy, rewards)
    kl = np.sum(np.exp(got) * (got - target), axis=1)
    assert kl.max() < 1e-3, kl  # measured ~2e-6
    # ... and that fixed point is not pi*: IPO and DPO optimise different objectives.
    optimum, _ = complete_sequences(spec, oracle.solve(spec, ref_tree, rewards, BETA).log_probs, rewards)
    assert np.sum(np.exp(target) * (target - optimum), axis=1).max() > 10 * kl.max()
