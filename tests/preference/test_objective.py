"""Preference objectives through the training engine: log-prob sums, references, weights,
micro-batching, KTO's mismatched pairs, implicit rewards, online DPO and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.config import ConfigError
from jirl.data.errors import DataError
from jirl.mdp import oracle
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.mdp.tasks import make_task
from jirl.models.scoring import logits_fn
from jirl.models.transformer import Transformer, gpt2_tiny
from jirl.preference.implicit import implicit_reward_fn, implicit_sequence_rewards
from jirl.preference.losses import dpo_loss
from jirl.preference.objective import (
    POLICY_ONLY,
    MissingReferenceError,
    add_reference_log_probs,
    check_pairs,
    kto_objective,
    mismatched_buffers,
    preference_loss,
    sequence_log_prob_sums,
    with_reference,
)
from jirl.preference.online import OnlineConfig, online_iteration
from jirl.rl.loop import RLConfig, collect
from jirl.train.losses import OBJECTIVES
from jirl.train.step import init_train_state, make_update_step

TASK = make_task("bigram", num_chars=3, horizon=4, seed=0)
BETA = 0.2


def models():
    config = gpt2_tiny(TASK.vocab_size, max_len=8, d_model=32)
    graphdef, policy = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    _, reference = nnx.split(Transformer(config, rngs=nnx.Rngs(1)))
    return graphdef, policy, reference


def sampled_pairs(num=8, seed=0):
    """Two sampled responses per prompt from a random model, the first called chosen."""
    graphdef, _, reference = models()
    prompts, lens = TASK.sample_prompts(jax.random.key(seed), num)
    sampling = SamplingConfig(max_new_tokens=TASK.horizon, eos_id=TASK.eos_id)
    out = generate(graphdef, reference, jnp.repeat(prompts, 2, 0), jnp.repeat(lens, 2), jax.random.key(seed + 1), sampling)
    return {
        "chosen": np.asarray(out.tokens[0::2]), "rejected": np.asarray(out.tokens[1::2]), "prompt_len": np.asarray(lens),
        "chosen_len": np.asarray(out.response_lens[0::2]), "rejected_len": np.asarray(out.response_lens[1::2]),
    }


def loop_log_prob_sum(graphdef, params, tokens, prompt_len, response_len):
    """sum_t log softmax(logits at slot p + t - 1)[token at slot p + t], one row at a time."""
    logits = np.asarray(logits_fn(graphdef, params)(np.asarray(tokens)[None]))[0]
    total = 0.0
    for t in range(int(response_len)):
        slot = int(prompt_len) + t
        row = logits[slot - 1] - logits[slot - 1].max()
        total += row[tokens[slot]] - np.log(np.exp(row).sum())
    return total


def test_sequence_sums_match_a_token_loop():
    graphdef, policy, _ = models()
    pairs = sampled_pairs()
    got = sequence_log_prob_sums(graphdef, policy, jnp.asarray(pairs["chosen"]), jnp.asarray(pairs["prompt_len"]), jnp.asarray(pairs["chosen_len"]))
    for b in range(len(got)):
        expected = loop_log_prob_sum(graphdef, policy, pairs["chosen"][b], pairs["prompt_len"][b], pairs["chosen_len"][b])
        np.testing.assert_allclose(float(got[b]), expected, rtol=1e-5, atol=1e-5)


def test_a_response_horizon_changes_no_number_and_a_response_past_it_is_refused_not_truncated():
    """``response_horizon`` = the longest response gives the default's loss and gradients (the
    LM head just runs at fewer slots); a shorter one makes the loss NaN and counts the pairs."""
    graphdef, policy, reference = models()
    pairs = {k: jnp.asarray(v) for k, v in sampled_pairs().items()}
    for key in ("chosen", "rejected"):  # right padding: wider buffers than prompt + longest response
        pairs[key] = jnp.pad(pairs[key], ((0, 0), (0, 3)))
    params = with_reference(policy, reference)
    longest = int(max(pairs["chosen_len"].max(), pairs["rejected_len"].max()))
    assert longest == TASK.horizon < pairs["chosen"].shape[1] - 1  # the default scores more slots than this
    value_and_grad = lambda loss_fn: jax.jit(jax.value_and_grad(lambda p: loss_fn(p, pairs, None)[0].value))  # noqa: E731
    default_loss, default_grads = value_and_grad(preference_loss(graphdef, "dpo", beta=BETA))(params)
    bounded_loss, bounded_grads = value_and_grad(preference_loss(graphdef, "dpo", beta=BETA, response_horizon=longest))(params)
    assert float(bounded_loss) == pytest.approx(float(default_loss), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), bounded_grads, default_grads)

    out, metrics = preference_loss(graphdef, "dpo", beta=BETA, response_horizon=longest - 1)(params, pairs, None)
    expected_past = int(np.sum(np.maximum(pairs["chosen_len"], pairs["rejected_len"]) > longest - 1))
    assert np.isnan(float(out.value)) and int(metrics["responses_past_horizon"]) == expected_past > 0
    with pytest.raises(ConfigError, match="response_horizon"):
        preference_loss(graphdef, "dpo", response_horizon=0)


def test_dpo_objective_is_the_mean_pair_loss_with_either_source_of_reference():
    graphdef, policy, reference = models()
    pairs = sampled_pairs()
    sums = lambda params, key: sequence_log_prob_sums(  # noqa: E731
        graphdef, params, jnp.asarray(pairs[key]), jnp.asarray(pairs["prompt_len"]), jnp.asarray(pairs[f"{key}_len"])
    )
    expected = float(jnp.mean(dpo_loss(sums(policy, "chosen"), sums(policy, "rejected"), sums(reference, "chosen"), sums(reference, "rejected"), beta=BETA)))
    loss_fn = preference_loss(graphdef, "dpo", beta=BETA)
    precomputed = {k: jnp.asarray(v) for k, v in add_reference_log_probs(graphdef, reference, pairs, batch_size=3).items()}
    out_a, metrics = loss_fn(policy, precomputed, None)
    out_b, _ = loss_fn(with_reference(policy, reference), {k: jnp.asarray(v) for k, v in pairs.items()}, None)
    assert float(out_a.value) == pytest.approx(expected, rel=1e-5)
    assert float(out_b.value) == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= float(metrics["reward_accuracy"]) <= 1.0


def test_pair_weights_count_like_repeated_rows_and_micro_batching_changes_nothing():
    graphdef, policy, reference = models()
    pairs = sampled_pairs(num=8)
    weights = np.array([1, 2, 1, 3, 1, 1, 2, 1], np.float32)
    weighted = {**{k: jnp.asarray(v) for k, v in pairs.items()}, "weight": jnp.asarray(weights)}
    repeated = {k: jnp.asarray(np.repeat(v, weights.astype(int), axis=0)) for k, v in pairs.items()}
    params = with_reference(policy, reference)
    loss_fn = preference_loss(graphdef, "dpo", beta=BETA)
    grad = jax.jit(lambda batch: jax.grad(lambda p: loss_fn(p, batch, None)[0].value)(params)["policy"])  # compiled: eager is slower
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grad(weighted), grad(repeated))

    def one_step(accumulation):
        optimizer = optax.sgd(0.1)
        state = init_train_state(params, optimizer, jax.random.key(0), trainable=POLICY_ONLY)
        return make_update_step(loss_fn, optimizer, accumulation)(state, weighted)

    (whole, m1), (split, m4) = one_step(1), one_step(4)
    np.testing.assert_allclose(float(m1["loss"]), float(m4["loss"]), rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), whole.params, split.params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, whole.frozen, split.frozen)  # the reference never moves


def test_a_loss_that_needs_a_reference_says_so_and_reference_free_losses_do_not_need_one():
    graphdef, policy, _ = models()
    batch = {k: jnp.asarray(v) for k, v in sampled_pairs().items()}
    with pytest.raises(MissingReferenceError, match="needs a reference model"):
        preference_loss(graphdef, "dpo", beta=BETA)(policy, batch, None)
    with pytest.raises(MissingReferenceError, match="kto needs a reference"):
        kto_objective(graphdef, beta=BETA)(policy, batch, None)
    for name in ("simpo", "orpo", "slic"):
        out, _ = preference_loss(graphdef, name, beta=BETA)(policy, batch, None)
        assert np.isfinite(float(out.value))


def test_pairs_that_answer_different_prompts_are_refused():
    pairs = sampled_pairs()
    pairs["rejected"] = pairs["rejected"].copy()
    pairs["rejected"][3, 0] = (pairs["chosen"][3, 0] % (TASK.vocab_size - 1)) + 1  # another prompt letter
    with pytest.raises(DataError, match=r"pairs \[3\] have chosen and rejected responses to different prompts"):
        check_pairs(pairs)
    with pytest.raises(DataError, match="missing"):
        check_pairs({"chosen": pairs["chosen"]})


def test_mismatched_buffers_pair_each_prompt_with_the_next_rows_response():
    tokens = np.array([[1, 2, 3, 0, 0], [2, 2, 1, 1, 0], [3, 1, 0, 0, 0]])
    prompt_len, response_len = np.array([1, 2, 1]), np.array([2, 3, 1])
    got_tokens, got_prompt, got_len = (np.asarray(x) for x in mismatched_buffers(jnp.asarray(tokens), jnp.asarray(prompt_len), jnp.asarray(response_len)))
    for b in range(3):
        nxt = (b + 1) % 3
        response = tokens[nxt, prompt_len[nxt] : prompt_len[nxt] + response_len[nxt]]
        np.testing.assert_array_equal(got_tokens[b, : prompt_len[b]], tokens[b, : prompt_len[b]])
        np.testing.assert_array_equal(got_tokens[b, prompt_len[b] : prompt_len[b] + len(response)], response)
        assert got_prompt[b] == prompt_len[b] and got_len[b] == response_len[nxt]


def test_kto_objective_trains_through_the_engine():
    graphdef, policy, reference = models()
    batch = {k: jnp.asarray(v) for k, v in sampled_pairs().items()}
    optimizer = optax.adam(1e-2)
    state = init_train_state(with_reference(policy, reference), optimizer, jax.random.key(0), trainable=POLICY_ONLY)
    step = make_update_step(OBJECTIVES.get("kto")(graphdef, beta=BETA), optimizer)
    losses = []
    for _ in range(20):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] and float(metrics["kl_reference"]) >= 0


def test_implicit_rewards_sum_to_beta_log_ratio_and_plug_into_the_rl_loop():
    graphdef, policy, reference = models()
    pairs = sampled_pairs()
    tokens, prompt_len, lens = (jnp.asarray(pairs[k]) for k in ("chosen", "prompt_len", "chosen_len"))
    dense = implicit_reward_fn(graphdef, policy, reference, TASK.horizon, BETA)(tokens, prompt_len, lens)
    terminal = implicit_reward_fn(graphdef, policy, reference, TASK.horizon, BETA, dense=False)(tokens, prompt_len, lens)
    for b in range(len(lens)):
        expected = BETA * (
            loop_log_prob_sum(graphdef, policy, pairs["chosen"][b], pairs["prompt_len"][b], pairs["chosen_len"][b])
            - loop_log_prob_sum(graphdef, reference, pairs["chosen"][b], pairs["prompt_len"][b], pairs["chosen_len"][b])
        )
        np.testing.assert_allclose(float(dense[b].sum()), expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(terminal[b, lens[b] - 1]), expected, rtol=1e-4, atol=1e-5)
        assert np.count_nonzero(np.asarray(dense[b, lens[b] :])) == 0
    sequence = implicit_sequence_rewards(graphdef, policy, reference, tokens, prompt_len, lens, TASK.horizon, BETA)
    np.testing.assert_allclose(np.asarray(sequence), np.asarray(dense.sum(1)), rtol=1e-5, atol=1e-6)

    # As the RL loop's reward: the sampled batch's rewards are the implicit ones of its samples.
    reward_fn = implicit_reward_fn(graphdef, policy, reference, TASK.horizon, BETA)
    batch, metrics = collect(jax.random.key(4), TASK, graphdef, policy, reference, RLConfig(prompts_per_iteration=2, group_size=4), reward_fn=reward_fn)
    lens = batch["mask"].sum(1)
    expected = implicit_sequence_rewards(graphdef, policy, reference, batch["tokens"], batch["prompt_len"], lens, TASK.horizon, BETA)
    assert metrics["reward"] == pytest.approx(float(expected.mean()), rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_online_dpo_with_a_gold_labeller_raises_the_exact_gold_reward():
    spec = TASK.tree_spec()
    rewards = oracle.rewards_from_step_fn(spec, TASK.step_reward)
    graphdef, policy, _ = models()
    optimizer = optax.adam(3e-3)
    state = init_train_state(with_reference(policy, policy), optimizer, jax.random.key(0), trainable=POLICY_ONLY)
    step = make_update_step(preference_loss(graphdef, "dpo", beta=0.5), optimizer)

    def gold(params):
        return float(oracle.expected_reward(spec, oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, params)), rewards))

    curve = [gold(policy)]
    for iteration in range(60):
        state, metrics = online_iteration(jax.random.key(iteration), TASK, graphdef, state, step, OnlineConfig())
        if (iteration + 1) % 20 == 0:
            curve.append(gold(state.full_params["policy"]))
    assert curve[-1] > curve[0] + 0.3 and curve[1] > curve[0], curve


def test_a_misspelled_loss_option_is_refused_with_the_valid_ones():
    graphdef, _, _ = models()
    with pytest.raises(ConfigError, match=r"preference loss 'cdpo' has no option 'label_smoothin'\. Did you mean "
                                          r"'label_smoothing'\? Its options are: label_smoothing"):
        preference_loss(graphdef, "cdpo", label_smoothin=0.2)
    with pytest.raises(ConfigError, match=r"Did you mean 'desirable_weight'\? Its options are: desirable_weight, undesirable_weight"):
        OBJECTIVES.get("kto")(graphdef, beta=BETA, desirable_wieght=2.0)
    preference_loss(graphdef, "simpo", gamma=1.0)  # a real option is accepted
    kto_objective(graphdef, beta=BETA, undesirable_weight=2.0)


def test_a_loss_registered_once_after_import_is_an_objective():
    """A plugin's paired loss, registered only in PREFERENCE_LOSSES after jirl.preference.objective
    was imported, is built from OBJECTIVES with its option and trains; being reference-free
    (no ref_* parameters) it needs no reference."""
    from jirl.preference.losses import PREFERENCE_LOSSES

    def _test_margin_loss(policy_chosen, policy_rejected, *, margin=1.0):
        return jax.nn.relu(margin - (policy_chosen - policy_rejected))

    PREFERENCE_LOSSES.register("_test_margin", _test_margin_loss)
    try:
        graphdef, policy, _ = models()
        batch = {k: jnp.asarray(v) for k, v in sampled_pairs().items()}
        with pytest.raises(ConfigError, match="Did you mean 'margin'"):
            OBJECTIVES.get("_test_margin")(graphdef, beta=BETA, margn=2.0)
        out, _ = OBJECTIVES.get("_test_margin")(graphdef, beta=BETA, margin=50.0)(policy, batch, None)
        sums = [sequence_log_prob_sums(graphdef, policy, batch[k], batch["prompt_len"], batch[f"{k}_len"]) for k in ("chosen", "rejected")]
        np.testing.assert_allclose(float(out.value), float(jnp.mean(50.0 - (sums[0] - sums[1]))), rtol=1e-5)
        optimizer = optax.adam(1e-2)
        step = make_update_step(OBJECTIVES.get("_test_margin")(graphdef, beta=BETA), optimizer)
        state, metrics = step(init_train_state(policy, optimizer, jax.random.key(0)), batch)
        assert np.isfinite(float(metrics["loss"]))
    finally:
        PREFERENCE_LOSSES._items.pop("_test_margin")
        OBJECTIVES._items.pop("_test_margin")


def test_orpo_objective_includes_the_chosen_nll():
    """ORPO declares chosen_nll_per_token, so its objective passes it: with lam = 0 the loss is
    exactly the chosen responses' mean per-token NLL."""
    graphdef, policy, _ = models()
    batch = {k: jnp.asarray(v) for k, v in sampled_pairs().items()}
    out, _ = preference_loss(graphdef, "orpo", beta=BETA, lam=0.0)(policy, batch, None)
    chosen = sequence_log_prob_sums(graphdef, policy, batch["chosen"], batch["prompt_len"], batch["chosen_len"])
    expected = jnp.mean(-chosen / jnp.maximum(batch["chosen_len"], 1))
    np.testing.assert_allclose(float(out.value), float(expected), rtol=1e-5)
