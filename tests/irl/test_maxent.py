"""Exact MaxEnt IRL (jirl.irl.maxent): shaping invariance, the feature-matching gradient,
recovery of the expert's policy and reward (up to shaping) on the bigram task, and
convergence from sampled demonstrations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jirl.irl import maxent
from jirl.irl.recovery import apply_potential_shaping
from jirl.mdp import demonstrations, oracle
from jirl.mdp.best_of_n import complete_sequences
from jirl.mdp.tasks import make_task


def random_spec(rng, vocab=4, eos_id=2, horizon=3, num_prompts=3):
    """Ragged prompts of non-EOS tokens, random prompt weights, EOS not the first id."""
    non_eos = [a for a in range(vocab) if a != eos_id]
    prompts = [list(rng.choice(non_eos, size=rng.integers(1, 4))) for _ in range(num_prompts)]
    return oracle.TreeSpec.from_prompts(vocab, eos_id, horizon, prompts, rng.dirichlet(np.ones(num_prompts)))


# Random arrays come from NumPy: eager jax.random compiles once per shape (slow in tests).


def random_tree(rng, spec, dtype=jnp.float32, extra=()):
    return [jnp.asarray(rng.standard_normal(spec.tree_shape(t) + extra), dtype) for t in range(spec.horizon)]


def random_log_probs(rng, spec, dtype=jnp.float32):
    """log_softmax of N(0, 1) logits at every state (as oracle.random_log_probs)."""
    return [jax.nn.log_softmax(x, axis=-1) for x in random_tree(rng, spec, dtype)]


def bigram_setup(beta=1.0, ref=None, **task_args):
    task = make_task("bigram", **task_args)
    spec = task.tree_spec()
    rewards = oracle.rewards_from_step_fn(spec, task.step_reward)
    ref = oracle.uniform_log_probs(spec) if ref is None else ref(spec)
    expert = oracle.solve(spec, ref, rewards, beta).log_probs
    return task, spec, rewards, ref, expert


def kls(spec, expert, learned):
    return float(oracle.kl_divergence(spec, expert, learned)), float(oracle.kl_divergence(spec, learned, expert))


def return_error(spec, learned_rewards, true_rewards):
    learned = maxent.shaping_invariant_returns(spec, learned_rewards)
    true = maxent.shaping_invariant_returns(spec, true_rewards)
    return float(np.max(np.abs(learned - true)))


# ----------------------------------------------------------------------------------------------
# Shaping


def test_potential_shaping_leaves_centred_returns_and_the_optimum_unchanged():
    rng = np.random.default_rng(0)
    spec = random_spec(rng)
    rewards = random_tree(rng, spec)
    ref = random_log_probs(rng, spec)
    potential = [jnp.asarray(rng.standard_normal(spec.tree_shape(t)[:2]), jnp.float32) for t in range(spec.horizon)]
    shaped = apply_potential_shaping(spec, rewards, potential)
    beta = 0.7

    # Shaping really changes the rewards, and shifts every raw return of x by exactly -Phi(x).
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(shaped, rewards)) > 0.5
    _, raw = complete_sequences(spec, ref, rewards)
    _, raw_shaped = complete_sequences(spec, ref, shaped)
    np.testing.assert_allclose(raw_shaped - raw, np.broadcast_to(-np.asarray(potential[0]), raw.shape), atol=1e-5)

    centred = maxent.shaping_invariant_returns(spec, rewards)
    np.testing.assert_allclose(centred.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(maxent.shaping_invariant_returns(spec, shaped), centred, atol=1e-5)
    base = oracle.solve(spec, ref, rewards, beta).log_probs
    for a, b in zip(oracle.solve(spec, ref, shaped, beta).log_probs, base):
        np.testing.assert_allclose(a, b, atol=1e-5)

    # A perturbation that is not shaping (one depth-1 transition's reward) changes both.
    bumped = [r for r in rewards]
    bumped[1] = rewards[1].at[0, 1, 0].add(1.0)
    assert np.max(np.abs(maxent.shaping_invariant_returns(spec, bumped) - centred)) > 0.5
    moved = oracle.solve(spec, ref, bumped, beta).log_probs
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(moved, base)) > 0.1


def test_potential_shaping_rejects_a_wrong_shape():
    rng = np.random.default_rng(1)
    spec = random_spec(rng)
    rewards = random_tree(rng, spec)
    with pytest.raises(ValueError, match="potential"):
        apply_potential_shaping(spec, rewards, [jnp.zeros(spec.tree_shape(t)) for t in range(spec.horizon)])


# ----------------------------------------------------------------------------------------------
# The gradient is feature matching: dL/dtheta = (mu_E - mu_theta)/beta - l2 theta


def test_likelihood_gradient_is_the_feature_matching_gradient():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        spec = random_spec(rng, vocab=4, eos_id=1, horizon=3, num_prompts=3)
        num_features, beta, l2 = 6, 0.7, 0.3
        features = random_tree(rng, spec, jnp.float64, extra=(num_features,))
        ref = random_log_probs(rng, spec, jnp.float64)
        expert = random_log_probs(rng, spec, jnp.float64)
        # The expert's prompt marginal differs from spec.prompt_weights: mu_theta must use it.
        expert_prompts = rng.dirichlet(np.ones(spec.num_prompts))
        occupancy = maxent.state_action_occupancy(spec, expert, expert_prompts)
        np.testing.assert_allclose(maxent.prompt_marginal(occupancy), expert_prompts, rtol=1e-12)
        theta = jnp.asarray(rng.standard_normal(num_features), jnp.float64)

        def likelihood(th):
            return maxent.log_likelihood(spec, occupancy, ref, maxent.linear_reward(th, features), beta)

        grad = jax.jit(jax.grad(likelihood))(theta)
        learned = oracle.solve(spec, ref, maxent.linear_reward(theta, features), beta).log_probs
        mu_expert = maxent.occupancy_feature_expectations(occupancy, features)
        mu_theta = maxent.feature_expectations(spec, learned, features, maxent.prompt_marginal(occupancy))
        analytic = (mu_expert - mu_theta) / beta
        assert float(jnp.max(jnp.abs(analytic))) > 0.1  # not a vacuous 0 == 0
        np.testing.assert_allclose(grad, analytic, rtol=1e-4, atol=1e-10)
        # The brute-force view: L = E_E[log pi_theta(y|x)] over complete responses.
        log_p_theta, _ = complete_sequences(spec, learned, ref)
        log_p_expert, _ = complete_sequences(spec, expert, ref)
        brute = np.sum(expert_prompts[:, None] * np.exp(log_p_expert) * log_p_theta)
        np.testing.assert_allclose(likelihood(theta), brute, rtol=1e-10)

        # maxent_irl ascends exactly this gradient (one SGD step of size 1), l2 term included.
        reward_fn = functools.partial(maxent.linear_reward, features=features)
        step = maxent.maxent_irl(spec, occupancy, ref, beta, reward_fn, theta, 1, l2=l2, optimizer=optax.sgd(1.0))
        np.testing.assert_allclose(step.theta - theta, analytic - l2 * theta, rtol=1e-4, atol=1e-10)

        # Tabular reward = one-hot features: dL/dr(s,a) = (rho_E(s,a) - rho_theta(s,a))/beta.
        rewards = random_tree(rng, spec, jnp.float64)
        tab_grad = jax.jit(jax.grad(lambda r: maxent.log_likelihood(spec, occupancy, ref, maxent.tabular_reward(r), beta)))(rewards)
        learned = oracle.solve(spec, ref, rewards, beta).log_probs
        rho_theta = maxent.state_action_occupancy(spec, learned, expert_prompts)
        for g, rho_e, rho_t in zip(tab_grad, occupancy, rho_theta):
            np.testing.assert_allclose(g, (rho_e - rho_t) / beta, rtol=1e-4, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Acceptance: recovery from the exact expert occupancy


def test_tabular_maxent_recovers_the_expert_and_its_reward_up_to_shaping():
    _task, spec, rewards, ref, expert = bigram_setup(beta=1.0, num_chars=2, horizon=3)
    occupancy = maxent.state_action_occupancy(spec, expert)
    theta0 = [jnp.zeros_like(r) for r in rewards]
    result = maxent.maxent_irl(spec, occupancy, ref, 1.0, maxent.tabular_reward, theta0, steps=1000)

    forward, reverse = kls(spec, expert, result.log_probs)
    assert forward < 1e-3 and reverse < 1e-3, (forward, reverse)
    assert return_error(spec, result.rewards, rewards) < 1e-3
    # The likelihood gap to the expert's own is KL(expert || learned): it closed.
    best = float(maxent.log_likelihood(spec, occupancy, ref, rewards, 1.0))
    history = np.asarray(result.history["log_likelihood"])
    assert history[0] < best - 0.1 and abs(history[-1] - best) < 1e-3
    # The tabular reward itself is not the true table (shaping freedom), only its returns are.
    start = oracle.solve(spec, ref, theta0, 1.0).log_probs
    assert kls(spec, expert, start)[0] > 0.1


def test_tabular_maxent_with_a_non_uniform_reference():
    beta = 1.0
    ref_fn = functools.partial(random_log_probs, np.random.default_rng(7))
    _task, spec, rewards, ref, expert = bigram_setup(beta=beta, ref=ref_fn, num_chars=2, horizon=3)
    occupancy = maxent.state_action_occupancy(spec, expert)
    theta0 = [jnp.zeros_like(r) for r in rewards]
    result = maxent.maxent_irl(spec, occupancy, ref, beta, maxent.tabular_reward, theta0, steps=1000)
    forward, reverse = kls(spec, expert, result.log_probs)
    assert forward < 1e-3 and reverse < 1e-3, (forward, reverse)
    assert return_error(spec, result.rewards, rewards) < 1e-3
    # Fitting against the wrong (uniform) reference explains the expert with a wrong reward.
    wrong = maxent.maxent_irl(
        spec, occupancy, oracle.uniform_log_probs(spec), beta, maxent.tabular_reward, theta0, steps=1000
    )
    assert kls(spec, expert, wrong.log_probs)[0] < 1e-3
    assert return_error(spec, wrong.rewards, rewards) > 0.1


def test_linear_bigram_maxent_recovers_the_score_table():
    """With one-hot (previous, next) features the bigram reward is identified exactly (not
    just up to shaping): a time-homogeneous table can only absorb a potential that is 0, since
    the same entry score[u, v] is paid at the last step (terminal) and earlier (non-terminal).
    Only the row prev = EOS is free: it never occurs, gets no gradient and stays at theta0."""
    task, spec, rewards, ref, expert = bigram_setup(beta=1.0, num_chars=3, horizon=3)
    features = maxent.bigram_features(spec)
    for f, r in zip(maxent.linear_reward(jnp.asarray(task.score_table.reshape(-1)), features), rewards):
        np.testing.assert_allclose(f, r, atol=1e-6)

    occupancy = maxent.state_action_occupancy(spec, expert)
    reward_fn = functools.partial(maxent.linear_reward, features=features)
    theta0 = jnp.zeros(spec.vocab_size**2)
    result = maxent.maxent_irl(spec, occupancy, ref, 1.0, reward_fn, theta0, steps=1000)

    forward, reverse = kls(spec, expert, result.log_probs)
    assert forward < 1e-3 and reverse < 1e-3, (forward, reverse)
    assert return_error(spec, result.rewards, rewards) < 1e-3
    table = np.asarray(result.theta).reshape(spec.vocab_size, spec.vocab_size)
    used = np.arange(spec.vocab_size) != spec.eos_id
    np.testing.assert_allclose(table[used], task.score_table[used], atol=1e-3)
    np.testing.assert_array_equal(table[spec.eos_id], 0.0)


# ----------------------------------------------------------------------------------------------
# Sampled demonstrations


def test_empirical_occupancy_counts_the_visited_transitions():
    rng = np.random.default_rng(3)
    spec = random_spec(rng, vocab=4, eos_id=2, horizon=3, num_prompts=3)
    policy = random_log_probs(rng, spec)
    num = 3000
    samples = oracle.sample(jax.random.key(4), spec, policy, num)
    occupancy = maxent.empirical_occupancy(spec, samples.tokens, samples.prompt_lens, samples.response_lens)

    # Independent count from the sampler's own state indices.
    counts = [np.zeros(spec.tree_shape(t)) for t in range(spec.horizon)]
    lens = np.asarray(samples.response_lens)
    for t in range(spec.horizon):
        rows = lens > t
        np.add.at(
            counts[t],
            (np.asarray(samples.prompt_index)[rows], np.asarray(samples.state_index)[rows, t], np.asarray(samples.response_tokens)[rows, t]),
            1.0,
        )
    for got, want in zip(occupancy, counts):
        np.testing.assert_allclose(got, want / num, atol=1e-7)
    exact = maxent.state_action_occupancy(spec, policy)
    assert sum(float(jnp.abs(a - b).sum()) for a, b in zip(occupancy, exact)) < 0.2

    reweighted = maxent.empirical_occupancy(spec, samples.tokens, samples.prompt_lens, samples.response_lens, reweight_prompts=True)
    np.testing.assert_allclose(maxent.prompt_marginal(reweighted), spec.prompt_weights, rtol=1e-5)
    frequencies = np.bincount(np.asarray(samples.prompt_index), minlength=spec.num_prompts) / num
    np.testing.assert_allclose(maxent.prompt_marginal(occupancy), frequencies, rtol=1e-5)


def test_empirical_occupancy_rejects_invalid_demonstrations():
    spec = oracle.TreeSpec.from_prompts(3, 0, 3, [[1], [2, 1]])
    tokens = np.array([[1, 2, 1, 0, 0], [2, 1, 1, 0, 0]])  # rows: x=[1] y=(2,1,EOS); x=[2,1] y=(1,EOS)
    occupancy = maxent.empirical_occupancy(spec, tokens, [1, 2], [3, 2])
    assert float(occupancy[0][0, 0, 2]) == 0.5 and float(occupancy[1][0, 1, 1]) == 0.5  # 2 -> state 1
    assert float(occupancy[2][0, 1 * 2 + 0, 0]) == 0.5  # (2, 1) -> state 2, then EOS
    assert float(occupancy[1][1, 0, 0]) == 0.5 and sum(float(o.sum()) for o in occupancy) == 2.5
    with pytest.raises(ValueError, match="must end with EOS"):
        maxent.empirical_occupancy(spec, tokens, [1, 2], [2, 2])
    with pytest.raises(ValueError, match="EOS at step"):
        maxent.empirical_occupancy(spec, tokens, [1, 2], [3, 3])
    with pytest.raises(ValueError, match="not a prompt"):
        maxent.empirical_occupancy(spec, tokens, [2, 2], [3, 2])


def test_learned_policy_converges_with_more_demonstrations():
    """The MLE's KL(expert || learned) shrinks like (#identified parameters)/(2N) = 12/(2N).
    The 200 demonstrations are the first 200 of the 20000 (i.i.d. draws; one compiled sampler)."""
    beta = 1.0
    task, spec, _rewards, ref, expert = bigram_setup(beta=beta, num_chars=3, horizon=3)
    reward_fn = functools.partial(maxent.linear_reward, features=maxent.bigram_features(spec))
    demos = demonstrations.from_optimum(task, jax.random.key(0), 20000, beta)
    divergences = {}
    for num in (200, 20000):
        occupancy = maxent.empirical_occupancy(spec, demos.tokens[:num], demos.prompt_lens[:num], demos.response_lens[:num])
        result = maxent.maxent_irl(spec, occupancy, ref, beta, reward_fn, jnp.zeros(spec.vocab_size**2), 1000)
        divergences[num] = kls(spec, expert, result.log_probs)[0]
    assert divergences[20000] < 2e-3, divergences
    assert divergences[200] > 10 * divergences[20000], divergences
