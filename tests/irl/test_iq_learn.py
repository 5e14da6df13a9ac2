"""IQ-Learn (jirl.irl.iq_learn): per-token terms and the chi^2 objective against plain loops,
the gamma = 1 telescoping identity, the inverse soft Bellman property on the exact oracle tree,
the population optimum of the chi^2 objective, and training a tiny transformer on expert
demonstrations of the bigram task."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.irl import iq_learn as iq
from jirl.irl.recovery import apply_potential_shaping, returns_correlation
from jirl.mdp import oracle
from jirl.mdp.best_of_n import complete_sequences
from jirl.mdp.demonstrations import from_optimum
from jirl.mdp.tasks import make_task
from jirl.models.scoring import gather_response, logits_fn, response_log_probs, response_mask
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.train.losses import OBJECTIVES
from jirl.train.sft import sft_loss
from jirl.train.step import init_train_state, make_update_step

# Random arrays come from NumPy: eager jax.random compiles once per shape (slow in tests).


def random_spec(rng, vocab=4, eos_id=2, horizon=3, num_prompts=3):
    """Ragged prompts of non-EOS tokens, random prompt weights, EOS not the first id."""
    non_eos = [a for a in range(vocab) if a != eos_id]
    prompts = [list(rng.choice(non_eos, size=rng.integers(1, 4))) for _ in range(num_prompts)]
    return oracle.TreeSpec.from_prompts(vocab, eos_id, horizon, prompts, rng.dirichlet(np.ones(num_prompts)))


def random_tree(rng, spec, scale=1.0):
    return [jnp.asarray(scale * rng.standard_normal(spec.tree_shape(t)), jnp.float32) for t in range(spec.horizon)]


def tiny_model(vocab, seed=0):
    return nnx.split(Transformer(gpt2_tiny(vocab, max_len=8, d_model=32), rngs=nnx.Rngs(seed)))


def sharpened(params, factor=4.0):
    """Scale the (tied) token embedding so the random model's logits are far from uniform."""
    scale = lambda path, x: x * factor if jax.tree_util.keystr(path).startswith("['embed']") else x
    return jax.tree_util.tree_map_with_path(scale, params)


def ragged_batch(rng, spec, num):
    """Buffers of random responses from a random policy: some end with EOS, some at the horizon."""
    policy = [jax.nn.log_softmax(x, axis=-1) for x in random_tree(rng, spec)]
    samples = oracle.sample(jax.random.key(int(rng.integers(1 << 30))), spec, policy, num)
    return samples


@pytest.fixture(scope="module")
def lm():
    """A random tiny transformer with far-from-uniform logits, a random spec (EOS id 2, ragged
    prompts) and 32 responses sampled from a random policy, some ending with EOS, some at the horizon."""
    rng = np.random.default_rng(1)
    spec = random_spec(rng)
    graphdef, params = tiny_model(spec.vocab_size)
    samples = ragged_batch(rng, spec, 32)
    lens = np.asarray(samples.response_lens)
    assert np.any(lens < spec.horizon) and np.any(lens == spec.horizon) and np.any(lens == 1)
    batch = {"tokens": samples.tokens, "prompt_len": samples.prompt_lens, "response_len": samples.response_lens}
    return spec, graphdef, sharpened(params), samples, batch


tempered_log_probs = jax.jit(response_log_probs, static_argnums=(0, 4, 5))  # log softmax(logits/beta)[y_t]


def loop_value(q_row, beta, reference):
    v = beta * np.log(np.sum(np.exp(np.asarray(q_row, np.float64) / beta)))
    return v - beta * np.log(len(q_row)) if reference == "uniform" else v


# ----------------------------------------------------------------------------------------------
# Per-token terms and the loss against loops


@pytest.mark.parametrize("reference", ["uniform", "none"])
@pytest.mark.parametrize("gamma,beta,alpha", [(1.0, 1.0, 0.5), (0.9, 0.7, 2.0), (1.0, 0.3, math.inf)])
def test_terms_match_a_python_loop(reference, gamma, beta, alpha):
    rng = np.random.default_rng(0)
    batch, horizon, vocab = 5, 4, 6
    logits = 3.0 * rng.standard_normal((batch, horizon, vocab)).astype(np.float32)
    actions = rng.integers(0, vocab, (batch, horizon))
    lens = np.array([4, 2, 1, 0, 3])
    mask = np.arange(horizon)[None, :] < lens[:, None]
    terms = iq.iq_learn_terms(
        jnp.asarray(logits), jnp.asarray(actions), jnp.asarray(mask), gamma, beta, alpha, reference
    )

    expected = {k: np.zeros((batch, horizon)) for k in ("q", "v", "v_next", "reward", "objective")}
    for b in range(batch):
        for t in range(lens[b]):
            q = float(logits[b, t, actions[b, t]])
            v = loop_value(logits[b, t], beta, reference)
            v_next = 0.0 if t == lens[b] - 1 else loop_value(logits[b, t + 1], beta, reference)  # terminal: 0
            r = q - gamma * v_next
            phi = r if math.isinf(alpha) else r - r * r / (4 * alpha)
            for name, value in zip(expected, (q, v, v_next, r, phi - (v - gamma * v_next))):
                expected[name][b, t] = value
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(getattr(terms, name)), value, rtol=1e-5, atol=1e-5, err_msg=name)
    # V = beta logsumexp(Q/beta) (+ beta log pi_ref): the policy is softmax(Q/beta) either way.
    log_pi = np.asarray(jax.nn.log_softmax(logits / beta, axis=-1))
    np.testing.assert_allclose(
        np.asarray(terms.log_probs),
        np.where(mask, np.take_along_axis(log_pi, actions[..., None], -1)[..., 0], 0),
        atol=1e-5,
    )


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "sequence_sum"])
def test_loss_is_the_chi2_objective_computed_by_a_loop(lm, aggregation):
    _, graphdef, params, samples, batch = lm
    gamma, beta, alpha = 1.0, 0.8, 0.5
    loss_fn = OBJECTIVES.get("iq_learn")(graphdef, gamma=gamma, beta=beta, alpha=alpha, aggregation=aggregation)
    out, metrics = jax.jit(loss_fn)(params, batch, jax.random.key(0))

    logits = np.asarray(logits_fn(graphdef, params)(samples.tokens), np.float64)
    tokens, prompt_lens, lens = (np.asarray(x) for x in (samples.tokens, samples.prompt_lens, samples.response_lens))
    per_sequence, rewards, qs, vs = [], [], [], []
    for b in range(len(lens)):
        values = [loop_value(logits[b, prompt_lens[b] + t - 1], beta, "uniform") for t in range(lens[b])] + [0.0]
        terms = []
        for t in range(lens[b]):
            q = logits[b, prompt_lens[b] + t - 1, tokens[b, prompt_lens[b] + t]]
            r = q - gamma * values[t + 1]
            terms.append(-(r - r * r / (4 * alpha) - (values[t] - gamma * values[t + 1])))
            rewards.append(r), qs.append(q), vs.append(values[t])
        per_sequence.append(terms)
    if aggregation == "token_mean":
        expected = sum(map(sum, per_sequence)) / sum(map(len, per_sequence))
    elif aggregation == "sequence_sum":
        expected = np.mean([sum(s) for s in per_sequence if s])
    else:
        expected = np.mean([np.mean(s) for s in per_sequence if s])
    np.testing.assert_allclose(float(out.value), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["iq_reward"]), np.mean(rewards), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(metrics["iq_q"]), np.mean(qs), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(metrics["iq_v"]), np.mean(vs), rtol=1e-4, atol=1e-6)


def test_without_the_regulariser_iq_learn_is_behaviour_cloning(lm):
    """Per token r_t - (V(s_t) - V(s_t+1)) = Q(s_t,a_t) - V(s_t) = beta log(pi/pi_ref): at alpha = inf
    the loss is beta * NLL of softmax(Q/beta) - beta log|V|; at beta = 1 it is SFT's loss minus
    log|V|, with SFT's gradient."""
    spec, graphdef, params, samples, batch = lm
    value = lambda fn: jax.jit(jax.value_and_grad(lambda p: fn(p, batch, jax.random.key(0))[0].value))
    log_v = np.log(spec.vocab_size)

    (iq_value, iq_grad), (sft_value, sft_grad) = (
        value(fn)(params) for fn in (iq.iq_learn_loss(graphdef, alpha=math.inf), sft_loss(graphdef))
    )
    np.testing.assert_allclose(float(iq_value), float(sft_value) - log_v, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(iq_grad), jax.tree_util.tree_leaves(sft_grad)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)

    beta = 0.6
    horizon = spec.horizon
    log_pi = np.asarray(tempered_log_probs(graphdef, params, samples.tokens, samples.prompt_lens, horizon, beta))
    mask = np.asarray(response_mask(samples.response_lens, horizon))
    nll = -np.sum(np.where(mask, log_pi, 0.0)) / np.sum(mask)
    tempered_loss = iq.iq_learn_loss(graphdef, beta=beta, alpha=math.inf)
    tempered_value = jax.jit(tempered_loss)(params, batch, jax.random.key(0))[0].value
    np.testing.assert_allclose(float(tempered_value), beta * nll - beta * log_v, rtol=1e-5)


@pytest.mark.parametrize("reference", ["uniform", "none"])
def test_implicit_rewards_telescope_to_the_log_ratio_plus_the_initial_value(lm, reference):
    """gamma = 1: sum_t r_t = beta log(pi(y|x)/pi_ref(y|x)) + V(s_0), pi_ref = 1/|V| per token
    ("uniform") or 1 ("none")."""
    spec, graphdef, params, samples, _ = lm
    beta, horizon = 0.7, spec.horizon
    args = (samples.tokens, samples.prompt_lens, samples.response_lens)
    rewards = iq.implicit_rewards(graphdef, params, *args, horizon, beta=beta, reference=reference)
    np.testing.assert_array_equal(np.asarray(rewards)[~np.asarray(response_mask(samples.response_lens, horizon))], 0.0)

    log_pi = tempered_log_probs(graphdef, params, samples.tokens, samples.prompt_lens, horizon, beta)
    mask = response_mask(samples.response_lens, horizon)
    log_ratio = jnp.sum(jnp.where(mask, log_pi, 0.0), axis=1)
    if reference == "uniform":
        log_ratio = log_ratio + samples.response_lens * np.log(spec.vocab_size)
    first_logits = gather_response(logits_fn(graphdef, params)(samples.tokens), samples.prompt_lens, 1, shift=-1)
    v0 = iq.soft_value(first_logits[:, 0], beta, reference)
    np.testing.assert_allclose(np.asarray(rewards.sum(axis=1)), np.asarray(beta * log_ratio + v0), rtol=1e-5, atol=1e-5)

    reward_fn = iq.iq_reward_fn(graphdef, params, horizon, beta=beta, reference=reference)
    np.testing.assert_allclose(np.asarray(reward_fn(*args)), np.asarray(rewards), rtol=1e-5, atol=1e-6)


def test_sequence_and_tree_implicit_rewards_agree(lm):
    """The [B, T] rewards of sampled buffers equal the tree's r(s, a) along the same paths
    (EOS-terminal and horizon-terminal steps both get V(next) = 0)."""
    spec, graphdef, params, samples, _ = lm
    q_tree = iq.q_tree_from_logits_fn(spec, logits_fn(graphdef, params))
    for beta, gamma in ((1.0, 1.0), (0.5, 0.8)):
        tree = iq.implicit_reward_tree(spec, q_tree, gamma, beta)
        batch = iq.implicit_rewards(
            graphdef, params, samples.tokens, samples.prompt_lens, samples.response_lens, spec.horizon, gamma, beta
        )
        np.testing.assert_allclose(
            np.asarray(batch), np.asarray(oracle.step_values(spec, tree, samples)), rtol=1e-5, atol=1e-5
        )
    # The logits tree normalises to the oracle's policy tree.
    expected = oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, params))
    for a, b in zip(iq.policy_tree(q_tree), expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Exact properties on the oracle tree


@pytest.mark.parametrize("beta", [1.0, 0.25, 3.0])
def test_inverse_soft_bellman_the_implicit_reward_is_solved_by_softmax_q(beta):
    """oracle.solve(uniform, Q - V(child), beta) has Q* = Q, V* = V and pi* = softmax(Q/beta)."""
    rng = np.random.default_rng(5)
    spec = random_spec(rng)
    q_tree = random_tree(rng, spec, scale=2.0)
    rewards = iq.implicit_reward_tree(spec, q_tree, 1.0, beta)
    solution = oracle.solve(spec, oracle.uniform_log_probs(spec), rewards, beta)
    values = iq.soft_value_tree(spec, q_tree, beta)
    for t in range(spec.horizon):
        np.testing.assert_allclose(
            np.asarray(solution.log_probs[t]), np.asarray(jax.nn.log_softmax(q_tree[t] / beta)), atol=1e-5
        )
        np.testing.assert_allclose(np.asarray(solution.q[t]), np.asarray(q_tree[t]), atol=1e-5)
        np.testing.assert_allclose(np.asarray(solution.v[t]), np.asarray(values[t]), atol=1e-5)
    # The entropy-regularised convention (V = beta logsumexp(Q/beta), no reference) pays
    # beta log|V| more per non-terminal token, which is not a shaping: its optimum differs.
    other = iq.implicit_reward_tree(spec, q_tree, 1.0, beta, reference="none")
    differs = oracle.solve(spec, oracle.uniform_log_probs(spec), other, beta).log_probs
    assert float(oracle.kl_divergence(spec, iq.policy_tree(q_tree, beta), differs)) > 1e-3


def test_the_expert_soft_q_gives_back_the_true_reward_exactly():
    task = make_task("bigram", num_chars=3, horizon=3)
    spec = task.tree_spec()
    true = oracle.rewards_from_step_fn(spec, task.step_reward)
    for beta in (0.5, 2.0):
        expert = oracle.solve(spec, oracle.uniform_log_probs(spec), true, beta)
        for r, r_true in zip(iq.implicit_reward_tree(spec, expert.q, 1.0, beta), true):
            np.testing.assert_allclose(np.asarray(r), np.asarray(r_true), atol=1e-5)


def test_shifting_q_per_state_is_potential_shaping():
    """Q + c(s) keeps the policy and changes r by the shaping with Phi = -c."""
    rng = np.random.default_rng(6)
    spec = random_spec(rng)
    q_tree = random_tree(rng, spec)
    shift = [
        jnp.asarray(rng.standard_normal((spec.num_prompts, spec.num_states(t))), jnp.float32)
        for t in range(spec.horizon)
    ]
    shifted = [q + c[..., None] for q, c in zip(q_tree, shift)]
    expected = apply_potential_shaping(spec, iq.implicit_reward_tree(spec, q_tree), [-c for c in shift])
    for a, b in zip(iq.implicit_reward_tree(spec, shifted), expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    for a, b in zip(iq.policy_tree(shifted), iq.policy_tree(q_tree)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_tree_objective_is_the_expert_weighted_sequence_loss(lm):
    """expected_objective_tree = -E_{x~rho, y~pi_E}[per-sequence IQ loss] over every complete response."""
    spec, graphdef, params, _, _ = lm
    rng = np.random.default_rng(7)
    expert = [jax.nn.log_softmax(x, axis=-1) for x in random_tree(rng, spec)]
    beta, alpha = 0.7, 0.4
    q_tree = iq.q_tree_from_logits_fn(spec, logits_fn(graphdef, params))
    exact = float(iq.expected_objective_tree(spec, q_tree, expert, beta, alpha))

    tokens, lens = oracle.complete_response_tokens(spec)
    num_prompts, per_prompt = lens.shape
    flat_tokens = jnp.asarray(tokens.reshape(num_prompts * per_prompt, -1))
    prompt_lens = jnp.asarray(np.repeat(spec.prompt_lens, per_prompt))
    horizon = spec.horizon
    step_logits = gather_response(logits_fn(graphdef, params)(flat_tokens), prompt_lens, horizon, shift=-1)
    terms = iq.iq_learn_terms(
        step_logits,
        gather_response(flat_tokens, prompt_lens, horizon),
        response_mask(jnp.asarray(lens.ravel()), horizon),
        1.0,
        beta,
        alpha,
    )
    log_p, _ = complete_sequences(spec, expert, q_tree)
    weights = np.asarray(spec.prompt_weights)[:, None] * np.exp(log_p)
    per_sequence = np.asarray(terms.objective.sum(axis=1)).reshape(num_prompts, per_prompt)
    np.testing.assert_allclose(exact, float(np.sum(weights * per_sequence)), rtol=1e-4, atol=1e-5)


@functools.partial(jax.jit, static_argnames=("spec", "steps"))
def population_optimum(spec, expert, beta, alpha, steps=200):
    """argmax over a tabular Q of the exact objective (2) under the expert's occupancy (L-BFGS)."""
    loss = lambda q: -iq.expected_objective_tree(spec, q, expert, beta, alpha)
    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def body(_, carry):
        q, state = carry
        value, grad = value_and_grad(q, state=state)
        updates, state = optimizer.update(grad, state, q, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(q, updates), state

    q = [jnp.zeros(spec.tree_shape(t)) for t in range(spec.horizon)]
    q, _ = jax.lax.fori_loop(0, steps, body, (q, optimizer.init(q)))
    return q, optax.tree.norm(jax.grad(loss)(q))


@pytest.fixture(scope="module")
def bigram():
    task = make_task("bigram", num_chars=3, horizon=3)
    spec = task.tree_spec()
    true = oracle.rewards_from_step_fn(spec, task.step_reward)
    expert = oracle.solve(spec, oracle.uniform_log_probs(spec), true, 0.5).log_probs
    return task, spec, true, expert


@pytest.mark.slow
def test_the_chi2_optimum_approaches_the_expert_as_alpha_grows(bigram):
    """Theory (module docstring): the tabular optimum pi_alpha of (2) is pi_E only at alpha = inf,
    KL(pi_E||pi_alpha) shrinks as O((beta/alpha)^2), and pi_alpha depends on alpha/beta only.
    Its implicit reward still matches the true one up to shaping."""
    _, spec, true, expert = bigram
    kls = {}
    for beta, alpha in ((1.0, 0.5), (1.0, 8.0), (1.0, 32.0), (1.0, math.inf), (0.5, 0.25)):
        q, grad_norm = population_optimum(spec, expert, jnp.float32(beta), jnp.float32(alpha))
        assert float(grad_norm) < 1e-3, (beta, alpha, float(grad_norm))
        kls[beta, alpha] = float(oracle.kl_divergence(spec, expert, iq.policy_tree(q, beta)))
        correlation = float(returns_correlation(spec, iq.implicit_reward_tree(spec, q, 1.0, beta), true))
        assert correlation > 0.98, (beta, alpha, correlation)
    print("KL(pi_E||pi_alpha):", {k: round(v, 6) for k, v in kls.items()})
    assert kls[1.0, math.inf] < 1e-5  # float32
    assert kls[1.0, 0.5] > kls[1.0, 8.0] > kls[1.0, 32.0] > kls[1.0, math.inf]
    assert kls[1.0, 0.5] > 0.1  # the default regulariser moves the policy measurably
    assert 10 < kls[1.0, 8.0] / kls[1.0, 32.0] < 20  # ~ (32/8)^2 = 16
    np.testing.assert_allclose(kls[0.5, 0.25], kls[1.0, 0.5], rtol=1e-3)


# ----------------------------------------------------------------------------------------------
# Training a transformer through the engine


def train_iq_learn(task, alpha, steps=500, batch_size=256, num_demos=4000):
    demos = from_optimum(task, jax.random.key(0), num_demos, beta=0.5)
    data = {
        "tokens": np.asarray(demos.tokens),
        "prompt_len": np.asarray(demos.prompt_lens),
        "response_len": np.asarray(demos.response_lens),
    }
    graphdef, params = tiny_model(task.vocab_size)
    optimizer = optax.adam(5e-3)
    state = init_train_state(params, optimizer, jax.random.key(1))
    step = make_update_step(iq.iq_learn_loss(graphdef, alpha=alpha), optimizer)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        rows = rng.integers(0, num_demos, batch_size)
        state, metrics = step(state, {k: v[rows] for k, v in data.items()})
    assert not bool(metrics["nonfinite"])
    return iq.q_tree_from_logits_fn(task.tree_spec(), logits_fn(graphdef, state.full_params))


@pytest.mark.slow
def test_training_with_the_default_regulariser_converges_to_the_chi2_optimum(bigram):
    """alpha = 0.5, beta = 1: the network lands on pi_alpha (KL(pi_E||pi_alpha) = 0.144), not pi_E."""
    task, spec, true, expert = bigram
    q_tree = train_iq_learn(task, alpha=0.5)
    policy = iq.policy_tree(q_tree)
    optimum, _ = population_optimum(spec, expert, jnp.float32(1.0), jnp.float32(0.5))
    theory = float(oracle.kl_divergence(spec, expert, iq.policy_tree(optimum)))
    to_expert = float(oracle.kl_divergence(spec, expert, policy))
    to_optimum = float(oracle.kl_divergence(spec, iq.policy_tree(optimum), policy))
    print(f"alpha=0.5: KL(expert||net)={to_expert:.4f} (theory {theory:.4f}), KL(pi_alpha||net)={to_optimum:.4f}")
    assert to_optimum < 0.04, to_optimum
    assert abs(to_expert - theory) < 0.04, (to_expert, theory)
    correlation = float(returns_correlation(spec, iq.implicit_reward_tree(spec, q_tree), true))
    print(f"alpha=0.5: returns correlation {correlation:.4f}")
    assert correlation > 0.85, correlation


@pytest.mark.slow
def test_weakly_regularised_training_imitates_the_expert_and_recovers_its_reward(bigram):
    task, spec, true, expert = bigram
    q_tree = train_iq_learn(task, alpha=8.0)
    to_expert = float(oracle.kl_divergence(spec, expert, iq.policy_tree(q_tree)))
    correlation = float(returns_correlation(spec, iq.implicit_reward_tree(spec, q_tree), true))
    print(f"alpha=8: KL(expert||net)={to_expert:.4f}, returns correlation {correlation:.4f}")
    assert to_expert < 0.05, to_expert
    assert correlation > 0.85, correlation


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="reference"):
        iq.iq_learn_loss(None, reference="model")
    with pytest.raises(ValueError, match="alpha"):
        iq.iq_learn_loss(None, alpha=0.0)
    with pytest.raises(ValueError, match="gamma"):
        iq.iq_reward_fn(None, None, 3, gamma=1.5)
