"""GAIL and AIRL at the token level (``jirl.irl.adversarial``), checked against plain Python and
the exact oracle on ``bigram``."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.irl import adversarial as adv
from jirl.irl.recovery import shaping_removed_token_correlation
from jirl.mdp import oracle
from jirl.mdp.demonstrations import from_optimum
from jirl.models.heads import SequenceRewardModel, TokenRewardModel
from jirl.models.scoring import logits_fn, response_mask
from jirl.models.transformer import Transformer, gpt2_tiny, llama_tiny
from jirl.rl.loop import RLConfig
from jirl.train.losses import OBJECTIVES
from jirl.train.step import init_train_state, make_update_step
from tests.convergence import iterate_to_convergence

BETA = 0.5


@pytest.fixture(scope="module")
def bigram():
    from jirl.mdp.tasks import make_task

    task = make_task("bigram", num_chars=3, horizon=3)
    spec = task.tree_spec()
    true = oracle.rewards_from_step_fn(spec, task.step_reward)
    uniform = oracle.uniform_log_probs(spec)
    expert = oracle.solve(spec, uniform, true, BETA).log_probs
    width = task.prompt_width + task.horizon
    config = gpt2_tiny(task.vocab_size, max_len=width, d_model=32)
    tiny = gpt2_tiny(task.vocab_size, max_len=width, d_model=16, num_layers=1, num_heads=2)  # for unit tests
    return {"task": task, "spec": spec, "true": true, "uniform": uniform, "expert": expert, "config": config, "tiny": tiny}


def _policy(config, seed=1):
    return nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))


# ----------------------------------------------------------------------------------------------
# Losses on a hand example


class _HandF(nnx.Module):
    """A 'discriminator' whose per-token f is a free parameter, to test the loss alone."""

    def __init__(self, f):
        self.f = nnx.Param(jnp.asarray(f, jnp.float32))


F = [[0.5, -1.0, 2.0], [0.3, 0.1, -0.4]]
LOG_PROBS = [[-1.2, -0.7, -2.0], [-0.5, -1.5, -0.9]]
REF_LOG_PROBS = [[-1.0, -1.0, -1.0], [-0.2, -2.0, -1.1]]
MASK = [[1, 1, 0], [1, 1, 1]]
LABELS = [1.0, 0.0]
ROW_WEIGHTS = [2.0, 0.5]


def _hand_batch(ref=True, weights=False):
    batch = {
        "tokens": jnp.zeros((2, 4), jnp.int32), "prompt_len": jnp.ones(2, jnp.int32),
        "mask": jnp.asarray(MASK, bool), "label": jnp.asarray(LABELS), "log_probs": jnp.asarray(LOG_PROBS),
    }
    if ref:
        batch["ref_log_probs"] = jnp.asarray(REF_LOG_PROBS)
    if weights:
        batch["weight"] = jnp.asarray(ROW_WEIGHTS)
    return batch


def _hand_loss(level, ref=True, weights=False):
    graphdef, params = nnx.split(_HandF(F))
    logits_of = lambda model, batch: adv.airl_logits(model.f[...], batch["log_probs"], batch.get("ref_log_probs"))
    loss_fn = adv.discriminator_loss(graphdef, logits_of, level)
    batch = _hand_batch(ref, weights)

    def total(params):
        out, _ = loss_fn(params, batch, jax.random.key(0))
        return out.total, out

    grads, out = jax.grad(total, has_aux=True)(params)
    return float(out.total), float(out.count), np.asarray(grads["f"][...])


def _python_logit(b, t, ref):
    return F[b][t] - LOG_PROBS[b][t] + (REF_LOG_PROBS[b][t] if ref else 0.0)


def _python_bce(logit, label):
    d = 1.0 / (1.0 + math.exp(-logit))
    return -(label * math.log(d) + (1 - label) * math.log(1 - d))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("ref", [True, False])
@pytest.mark.parametrize("weights", [False, True])
def test_token_level_airl_loss_and_gradient_match_plain_python(ref, weights):
    total, count, grad = _hand_loss("token", ref, weights)
    expected_total, expected_count, expected_grad = 0.0, 0.0, np.zeros((2, 3))
    for b in range(2):
        w = ROW_WEIGHTS[b] if weights else 1.0
        for t in range(3):
            if MASK[b][t]:
                logit = _python_logit(b, t, ref)
                expected_total += w * _python_bce(logit, LABELS[b])
                expected_count += w
                expected_grad[b, t] = w * (_sigmoid(logit) - LABELS[b])  # d BCE / d logit, d logit / d f = 1
    assert total == pytest.approx(expected_total, rel=1e-6)
    assert count == pytest.approx(expected_count)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ref", [True, False])
def test_sequence_level_airl_loss_and_gradient_match_plain_python(ref):
    total, count, grad = _hand_loss("sequence", ref)
    expected_total, expected_grad = 0.0, np.zeros((2, 3))
    for b in range(2):
        row_logit = sum(_python_logit(b, t, ref) for t in range(3) if MASK[b][t])
        expected_total += _python_bce(row_logit, LABELS[b])
        for t in range(3):
            expected_grad[b, t] = MASK[b][t] * (_sigmoid(row_logit) - LABELS[b])
    assert total == pytest.approx(expected_total, rel=1e-6)
    assert count == 2.0
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_policy_log_probs_get_no_gradient_through_the_airl_logit():
    grads = jax.grad(lambda lp, ref: jnp.sum(adv.airl_logits(jnp.asarray(F), lp, ref)), argnums=(0, 1))(
        jnp.asarray(LOG_PROBS), jnp.asarray(REF_LOG_PROBS)
    )
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)


def test_objectives_are_registered():
    assert OBJECTIVES.get("airl") is adv.airl_loss and OBJECTIVES.get("gail") is adv.gail_loss


# ----------------------------------------------------------------------------------------------
# The disentangled reward


@pytest.fixture(scope="module")
def airl_model(bigram):
    return nnx.split(adv.AIRLDiscriminator(bigram["tiny"], rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def uniform_samples(bigram):
    return oracle.sample(jax.random.key(3), bigram["spec"], bigram["uniform"], 64)


def test_disentangled_f_telescopes_to_sum_g_minus_h_of_the_prompt(bigram, airl_model, uniform_samples):
    graphdef, params = airl_model
    s = uniform_samples
    mask = response_mask(s.response_lens, bigram["task"].horizon)
    assert len(set(np.asarray(s.response_lens).tolist())) == 3  # lengths 1, 2 and 3 all occur
    airl_terms = jax.jit(adv.airl_terms, static_argnums=(0, 5))
    terms = airl_terms(graphdef, params, s.tokens, s.prompt_lens, mask, 1.0)
    sum_f = jnp.sum(jnp.where(mask, terms["f"], 0.0), axis=1)
    sum_g = jnp.sum(jnp.where(mask, terms["g"], 0.0), axis=1)
    np.testing.assert_allclose(sum_f, sum_g - terms["h"][:, 0], atol=1e-5)
    # h(s_{t+1}) at step t is h(s_t) at step t + 1 (the same slot), and h is not constant
    np.testing.assert_allclose(terms["h_next"][:, :-1], terms["h"][:, 1:], atol=1e-6)
    assert float(jnp.std(terms["h"][:, 0])) > 0
    # gamma < 1: f = g + gamma h(s') - h(s), h(s') = 0 at the last step
    f_09 = airl_terms(graphdef, params, s.tokens, s.prompt_lens, mask, 0.9)["f"]
    last = adv.terminal_steps(mask)
    expected = terms["g"] + 0.9 * np.where(last, 0.0, terms["h_next"]) - terms["h"]
    np.testing.assert_allclose(jnp.where(mask, f_09, 0), jnp.where(mask, expected, 0), atol=1e-6)


def test_reward_functions_and_trees_agree(bigram, airl_model, uniform_samples):
    """The RL reward function (buffers) and the oracle trees read the same f and g; f and g have
    the same shaping-removed correlation with any reward (f is g shaped by h)."""
    graphdef, params = airl_model
    spec, s = bigram["spec"], uniform_samples
    trees = adv.airl_reward_trees(spec, graphdef, params)
    for kind in ("f", "g"):
        rewards = adv.airl_rewards(graphdef, params, spec.horizon, kind)(s.tokens, s.prompt_lens, s.response_lens)
        np.testing.assert_allclose(rewards, oracle.step_values(spec, trees[kind], s), atol=1e-5)
    corr = lambda tree: float(shaping_removed_token_correlation(spec, tree, bigram["true"]))
    assert corr(trees["f"]) == pytest.approx(corr(trees["g"]), abs=1e-5)
    bonus = adv.airl_rewards(graphdef, params, spec.horizon, "f", token_bonus=math.log(4))(s.tokens, s.prompt_lens, s.response_lens)
    np.testing.assert_allclose(bonus, oracle.step_values(spec, [x + math.log(4) for x in trees["f"]], s), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Uniform reference, replay buffer, gradient penalty


@pytest.mark.parametrize("make_config", [gpt2_tiny, llama_tiny])
def test_uniform_reference_is_exactly_uniform(bigram, make_config):
    spec = bigram["spec"]
    config = make_config(spec.vocab_size, max_len=spec.buffer_width, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1)
    graphdef, params = _policy(config)
    before = jax.tree_util.tree_map(jnp.copy, params)
    ref = adv.uniform_reference(graphdef, params)
    tree = oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, ref))
    for t in range(spec.horizon):
        np.testing.assert_allclose(tree[t], -np.log(spec.vocab_size), rtol=0, atol=1e-7)
    # the policy's own parameters are untouched and not uniform
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), params, before))
    policy_tree = oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, params))
    assert float(jnp.abs(policy_tree[0] + np.log(spec.vocab_size)).max()) > 1e-4


def _rows(ids):
    ids = jnp.asarray(ids, jnp.int32)
    return jnp.stack([ids, ids + 100], axis=1), ids, ids % 3


def test_replay_buffer_keeps_the_newest_capacity_rows_fifo():
    buffer = adv.ReplayBuffer.create(capacity=5, width=2)
    buffer = buffer.push(*_rows(range(3)))
    assert int(buffer.size) == 3
    np.testing.assert_array_equal(buffer.contents()[1], [0, 1, 2])
    buffer = buffer.push(*_rows(range(3, 7)))  # wraps around: 0 and 1 are evicted
    tokens, prompt_lens, response_lens = buffer.contents()
    np.testing.assert_array_equal(prompt_lens, [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(tokens[:, 1], np.arange(2, 7) + 100)
    np.testing.assert_array_equal(response_lens, np.arange(2, 7) % 3)
    buffer = buffer.push(*_rows(range(7, 14)))  # more than capacity at once: its newest 5
    np.testing.assert_array_equal(buffer.contents()[1], [9, 10, 11, 12, 13])
    assert int(buffer.size) == 5


def test_replay_buffer_samples_uniformly_and_reproducibly():
    buffer = adv.ReplayBuffer.create(capacity=4, width=2).push(*_rows(range(10, 16)))  # holds 12..15
    with pytest.raises(ValueError, match="empty"):
        adv.ReplayBuffer.create(4, 2).sample(jax.random.key(0), 1)
    first = buffer.sample(jax.random.key(1), 40_000)
    second = buffer.sample(jax.random.key(1), 40_000)
    np.testing.assert_array_equal(first[0], second[0])
    counts = np.bincount(np.asarray(first[1]) - 12, minlength=4)
    assert counts.sum() == 40_000 and len(counts) == 4  # only the 4 stored rows
    np.testing.assert_allclose(counts / 40_000, 0.25, atol=0.01)  # 5 sigma is about 0.011
    np.testing.assert_array_equal(first[0][:, 0], first[1])  # rows stay whole


def test_input_gradient_matches_the_embedding_table_gradient(bigram, airl_model):
    """For one row of distinct tokens the gradient w.r.t. each input embedding is the gradient
    w.r.t. that token's row of the embedding table (the heads never read the tied logits)."""
    graphdef, params = airl_model
    tokens = jnp.asarray([[1, 2, 3, 0]], jnp.int32)
    score = lambda model: jnp.sum(model(tokens)[0][:, 1:] ** 2 + model(tokens)[1][:, :-1], axis=1)
    norms = jax.jit(lambda p: adv.input_gradient_sq_norms(score, graphdef, p, tokens))(params)
    table_grads = jax.jit(jax.grad(lambda p: jnp.sum(score(nnx.merge(graphdef, p)))))(params)
    expected = sum(float(jnp.sum(table_grads[m]["backbone"]["embed"]["embedding"][...] ** 2)) for m in ("g", "h"))
    assert norms.shape == (1,) and float(norms[0]) == pytest.approx(expected, rel=1e-4)
    assert expected > 0


def test_gradient_penalty_applies_to_expert_rows_only(bigram, airl_model, uniform_samples):
    graphdef, params = airl_model
    s = uniform_samples
    rows = (s.tokens[:8], s.prompt_lens[:8], s.response_lens[:8])
    policy_graphdef, policy_params = _policy(bigram["tiny"])
    batch = adv.discriminator_batch(rows, rows, 3, (policy_graphdef, policy_params, None))
    mask = batch["mask"]

    @jax.jit
    def losses(params, batch):
        plain, _ = adv.airl_loss(graphdef)(params, batch, None)
        penalised, _ = adv.airl_loss(graphdef, grad_penalty=0.1)(params, batch, None)
        score = lambda model: jnp.sum(jnp.where(mask, adv._airl_row_logits(1.0)(model, batch), 0.0), axis=1)
        return plain, penalised, adv.input_gradient_sq_norms(score, graphdef, params, batch["tokens"])

    plain, penalised, norms = losses(params, batch)
    assert float(penalised.total - plain.total) == pytest.approx(0.05 * float(jnp.sum(norms[:8])), rel=1e-4)
    assert float(penalised.count) == float(plain.count) and float(jnp.sum(norms[:8])) > 0
    plain, penalised, _ = losses(params, dict(batch, label=jnp.zeros_like(batch["label"])))  # policy rows only
    assert float(penalised.total) == pytest.approx(float(plain.total), rel=1e-6)


def test_loss_sums_and_counts_add_over_micro_batches(bigram, airl_model, uniform_samples):
    """DESIGN.md contract 2: the loss's total and count (gradient penalty included) are sums
    over rows, so any split of a batch adds up to the whole."""
    graphdef, params = airl_model
    s = uniform_samples
    rows = (s.tokens[:8], s.prompt_lens[:8], s.response_lens[:8])
    policy_graphdef, policy_params = _policy(bigram["tiny"])
    batch = adv.discriminator_batch(rows, tuple(x[::-1] for x in rows), 3, (policy_graphdef, policy_params, None))
    loss_fn = jax.jit(adv.airl_loss(graphdef, level="token", grad_penalty=0.1))
    whole, _ = loss_fn(params, batch, None)
    halves = [loss_fn(params, jax.tree_util.tree_map(lambda x, i=i: x[i::2], batch), None)[0] for i in range(2)]
    assert float(whole.total) == pytest.approx(sum(float(h.total) for h in halves), rel=1e-5)
    assert float(whole.count) == sum(float(h.count) for h in halves) == float(jnp.sum(batch["mask"]))


# ----------------------------------------------------------------------------------------------
# AIRL against a fixed policy: f recovers log(pi_E / pi_ref) exactly (up to shaping)


def _train(graphdef, params, loss_fn, batch, steps, learning_rate):
    optimizer = optax.adam(learning_rate)
    state = init_train_state(params, optimizer, jax.random.key(0))
    step = make_update_step(loss_fn, optimizer)
    for _ in range(steps):
        state, metrics = step(state, batch)
    return state.full_params, metrics


def test_airl_against_a_fixed_uniform_policy_recovers_the_true_reward(bigram):
    """Sequence-level AIRL against the uniform policy, on the exact population objective: at
    the optimum sum_t f_t = log pi_E(y|x)/pi_ref(y|x) (Fu et al. 2018) = R(x,y)/beta - log Z(x),
    so g is the true reward / beta up to shaping; the loss reaches its minimum
    log 2 - JSD(p_E, p_pi). Adam runs until the loss stops improving (1e-5 over 100 steps), not
    for a fixed number of steps: 200 steps sufficed on one CPU and not on another."""
    spec = bigram["spec"]
    policy_graphdef, policy_params = _policy(bigram["tiny"])
    ref = adv.uniform_reference(policy_graphdef, policy_params)
    batch = adv.exact_discriminator_batch(spec, bigram["expert"], bigram["uniform"], (policy_graphdef, ref, ref))
    graphdef, params = nnx.split(adv.AIRLDiscriminator(bigram["tiny"], rngs=nnx.Rngs(0)))
    optimizer = optax.adam(1e-2)
    update = make_update_step(adv.airl_loss(graphdef, level="sequence"), optimizer)

    def step(state):
        state, metrics = update(state, batch)
        return state, metrics["loss"]

    state, loss, steps = iterate_to_convergence(step, init_train_state(params, optimizer, jax.random.key(0)), tol=1e-5)
    params = state.full_params

    p_e, p_u = np.split(np.asarray(batch["weight"], np.float64), 2)
    mid = (p_e + p_u) / 2
    jsd = 0.5 * np.sum(p_e * np.log(p_e / mid)) + 0.5 * np.sum(p_u * np.log(p_u / mid))
    print(f"fixed-policy AIRL converged in {steps} steps: loss {loss:.5f}, minimum {np.log(2) - jsd:.5f}")
    assert loss == pytest.approx(np.log(2) - jsd, abs=2e-3)

    report = adv.recovery_report(spec, bigram["true"], graphdef, params, bigram["expert"])
    print("fixed-policy AIRL:", report)
    assert report["g_corr_uniform"] > 0.95 and report["g_corr_expert"] > 0.99


# ----------------------------------------------------------------------------------------------
# GAIL


def test_gail_discriminator_separates_expert_from_uniform(bigram):
    spec, task = bigram["spec"], bigram["task"]
    batch = adv.exact_discriminator_batch(spec, bigram["expert"], bigram["uniform"])
    graphdef, params = nnx.split(TokenRewardModel(bigram["tiny"], rngs=nnx.Rngs(0)))
    params, metrics = _train(graphdef, params, adv.gail_loss(graphdef), batch, 100, 1e-2)
    # token-level accuracy on each class, weighted by the exact probabilities of the responses
    # (about 0.86 and 0.68: many uniform tokens are likely under the expert too)
    expert_accuracy, policy_accuracy = float(metrics["expert_accuracy"]), float(metrics["policy_accuracy"])
    assert (expert_accuracy + policy_accuracy) / 2 > 0.7 and min(expert_accuracy, policy_accuracy) > 0.6, metrics
    # on fresh samples: the reward "logit" = log D/(1-D) is positive on expert tokens, negative on uniform ones
    reward_fn = adv.gail_rewards(graphdef, params, task.horizon, "logit")
    mean_logit = lambda s: float(jnp.sum(reward_fn(s.tokens, s.prompt_lens, s.response_lens)) / jnp.sum(s.response_lens))
    expert_samples = from_optimum(task, jax.random.key(4), 2048, BETA)  # 2048: the loop test's size (one compile)
    uniform_samples = oracle.sample(jax.random.key(5), spec, bigram["uniform"], 2048)
    assert mean_logit(expert_samples) > 0.3 and mean_logit(uniform_samples) < -0.3


def test_sequence_level_gail_scores_whole_responses(bigram, uniform_samples):
    """A ``SequenceRewardModel`` discriminator: one BCE term per response (count = rows), and
    its reward -log(1 - D) = softplus(logit) is paid at each response's last step."""
    s = uniform_samples
    graphdef, params = nnx.split(SequenceRewardModel(bigram["tiny"], rngs=nnx.Rngs(0)))
    rows = (s.tokens[:6], s.prompt_lens[:6], s.response_lens[:6])
    batch = adv.discriminator_batch(rows, rows, 3)
    out, _ = jax.jit(adv.gail_loss(graphdef))(params, batch, jax.random.key(0))
    logits = np.asarray(nnx.merge(graphdef, params)(s.tokens[:6], s.prompt_lens[:6] + s.response_lens[:6]), np.float64)
    expected = sum(_python_bce(float(x), 1.0) + _python_bce(float(x), 0.0) for x in logits)
    assert float(out.count) == 12 and float(out.total) == pytest.approx(expected, rel=1e-5)
    rewards = adv.gail_rewards(graphdef, params, 3)(*rows)
    last = np.asarray(rows[2]) - 1
    np.testing.assert_allclose(np.asarray(rewards)[np.arange(6), last], np.log1p(np.exp(logits)), rtol=1e-5)
    assert float(jnp.abs(jnp.where(response_mask(rows[2] - 1, 3), rewards, 0.0)).max()) == 0.0


def test_adversarial_config_and_airl_kl_coefficient_are_checked(bigram):
    with pytest.raises(ValueError, match="method"):
        adv.AdversarialConfig(method="wgan")
    with pytest.raises(ValueError, match="gail_reward"):
        adv.AdversarialConfig(gail_reward="exp")
    graphdef, params = _policy(bigram["tiny"])
    with pytest.raises(ValueError, match="kl_coef"):
        adv.init_adversarial(
            jax.random.key(0), bigram["task"], None, graphdef, params, params, graphdef, params,
            RLConfig(kl_coef=0.1), adv.AdversarialConfig(), optax.adam(1e-3), optax.adam(1e-3),
        )


def _gold(spec, graphdef, params, true):
    return float(oracle.expected_reward(spec, oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, params)), true))


def test_gail_loop_raises_the_policy_gold_reward(bigram):
    """``adversarial_iteration`` with GAIL (token-level D, reward log D - log(1 - D), no KL)
    from a random policy: the exact gold reward climbs from about the uniform policy's towards
    the expert's."""
    spec, task = bigram["spec"], bigram["task"]
    policy_graphdef, policy_params = _policy(bigram["tiny"])
    disc_graphdef, disc_params = nnx.split(TokenRewardModel(bigram["tiny"], rngs=nnx.Rngs(0)))
    demos = from_optimum(task, jax.random.key(0), 2048, BETA)
    rl = RLConfig(kl_coef=0.0, prompts_per_iteration=16, group_size=8)
    config = adv.AdversarialConfig(method="gail", level="token", gail_reward="logit", samples_per_iteration=128, disc_steps=2)
    setup, policy_state, disc_state, buffer = adv.init_adversarial(
        jax.random.key(1), task, demos, policy_graphdef, policy_params, policy_params, disc_graphdef, disc_params,
        rl, config, optax.adam(3e-3), optax.adam(3e-3),
    )
    before = _gold(spec, policy_graphdef, policy_params, bigram["true"])
    for i in range(40):
        policy_state, disc_state, buffer, metrics = adv.adversarial_iteration(jax.random.key(10 + i), setup, policy_state, disc_state, buffer)
    after = _gold(spec, policy_graphdef, policy_state.full_params, bigram["true"])
    expert = float(oracle.expected_reward(spec, bigram["expert"], bigram["true"]))
    print(f"GAIL loop: gold reward {before:.3f} -> {after:.3f} (expert {expert:.3f}); last metrics {metrics}")
    assert int(buffer.size) == config.buffer_capacity and int(disc_state.step) == 40 * config.disc_steps
    assert after > before + 0.6


# ----------------------------------------------------------------------------------------------
# Acceptance: AIRL from demonstrations, end to end


def run_airl(bigram, level, iterations=200, num_demos=4096, seed=0):
    """AIRL (reference-relative, uniform reference, kl_coef = 1) from ``num_demos`` samples of
    the exact optimum at beta = 0.5; both learning rates cosine-decayed to 10%."""
    spec, task = bigram["spec"], bigram["task"]
    policy_graphdef, policy_params = _policy(bigram["config"], seed + 1)
    ref = adv.uniform_reference(policy_graphdef, policy_params)
    disc_graphdef, disc_params = nnx.split(adv.AIRLDiscriminator(bigram["config"], rngs=nnx.Rngs(seed)))
    demos = from_optimum(task, jax.random.key(seed), num_demos, BETA)
    rl = RLConfig(kl_coef=1.0, prompts_per_iteration=16, group_size=8)
    config = adv.AdversarialConfig(method="airl", level=level, disc_steps=10, disc_batch_size=128, buffer_capacity=256)
    setup, policy_state, disc_state, buffer = adv.init_adversarial(
        jax.random.key(seed + 5), task, demos, policy_graphdef, policy_params, ref, disc_graphdef, disc_params, rl, config,
        optax.adam(optax.cosine_decay_schedule(3e-3, iterations, alpha=0.1)),
        optax.adam(optax.cosine_decay_schedule(1e-3, iterations * config.disc_steps, alpha=0.1)),
    )
    for i in range(1, iterations + 1):
        key = jax.random.fold_in(jax.random.key(seed + 7), i)
        policy_state, disc_state, buffer, _ = adv.adversarial_iteration(key, setup, policy_state, disc_state, buffer)
    policy_tree = oracle.log_probs_from_logits_fn(spec, logits_fn(policy_graphdef, policy_state.full_params))
    gold = lambda tree: float(oracle.expected_reward(spec, tree, bigram["true"]))
    report = adv.recovery_report(spec, bigram["true"], disc_graphdef, disc_state.full_params, bigram["expert"])
    report.update(
        kl_expert_policy=float(oracle.kl_divergence(spec, bigram["expert"], policy_tree)),
        kl_expert_initial=float(oracle.kl_divergence(spec, bigram["expert"], oracle.log_probs_from_logits_fn(spec, logits_fn(policy_graphdef, policy_params)))),
        gold_policy=gold(policy_tree), gold_expert=gold(bigram["expert"]), gold_reference=gold(bigram["uniform"]),
    )
    return report


@pytest.mark.slow
# The sequence level guards the results page's AIRL finding in the default run; the token level
# is heavy (the same recovery, checked against a fixed policy above and against plain Python).
@pytest.mark.parametrize("level", ["sequence", pytest.param("token", marks=pytest.mark.heavy)])
def test_airl_recovers_the_bigram_reward_and_imitates_the_expert(bigram, level):
    """AIRL from 4096 demos (200 iterations, about 65 s each on 2 CPU cores; numbers printed).
    Shaping-removed per-token correlation of g with the true reward: above 0.9 uniform over
    (s, a) and about 0.99 under the expert's occupancy. The uniform one is limited by the demos:
    the expert reaches some states with probability ~2e-4, so they are barely seen."""
    r = run_airl(bigram, level)
    print(f"AIRL ({level}):", {k: round(v, 4) for k, v in r.items()})
    # measured 0.93-0.97 (sequence) and 0.91-0.94 (token) over seeds 0 and 2: margins below those
    assert r["g_corr_uniform"] > (0.9 if level == "sequence" else 0.87) and r["g_corr_expert"] > 0.97
    assert r["kl_expert_policy"] < 0.06 and r["kl_expert_initial"] > 1.0
    assert r["gold_policy"] > r["gold_reference"] + 0.9 * (r["gold_expert"] - r["gold_reference"])
