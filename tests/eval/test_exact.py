"""``exact_evaluator``: KL(expert || policy) and the expected gold reward summed over the oracle
tree equal the same sums over every response enumerated by hand and scored by the model."""

import itertools

import jax
import numpy as np
import pytest
from flax import nnx

from jirl.eval.exact import exact_evaluator
from jirl.mdp import oracle
from jirl.mdp.env import sequence_rewards
from jirl.mdp.tasks import make_task
from jirl.models.scoring import logits_fn, response_log_probs, response_mask
from jirl.models.transformer import ModelSize, Transformer


def every_response(task):
    """Every complete response to every prompt, as left-aligned buffers: ``tokens``,
    ``prompt_lens``, ``response_lens`` and the prompt index of each row. EOS ends a response;
    only the horizon cuts one without it."""
    prompts, lens, _ = task.prompts
    rows, prompt_lens, response_lens, prompt_ids = [], [], [], []
    for p, (prompt, plen) in enumerate(zip(prompts, lens)):
        for length in range(1, task.horizon + 1):
            for response in itertools.product(range(task.vocab_size), repeat=length):
                if task.eos_id in response[:-1] or (length < task.horizon and response[-1] != task.eos_id):
                    continue
                row = np.full(task.prompt_width + task.horizon, task.eos_id, np.int32)
                row[:plen] = prompt[:plen]
                row[plen : plen + length] = response
                rows.append(row), prompt_lens.append(plen), response_lens.append(length), prompt_ids.append(p)
    return np.stack(rows), np.asarray(prompt_lens), np.asarray(response_lens), np.asarray(prompt_ids)


def brute_force(task, graphdef, policy, expert):
    """``KL(expert || policy)`` and ``E_policy[R]``, prompts weighted uniformly, from the log-probs
    the model gives each enumerated response."""
    tokens, prompt_lens, response_lens, prompt_ids = every_response(task)
    mask = np.asarray(response_mask(response_lens, task.horizon))

    def log_p(params):
        return np.where(mask, np.asarray(response_log_probs(graphdef, params, tokens, prompt_lens, task.horizon)), 0.0).sum(1)

    log_q, log_e = log_p(policy), log_p(expert)
    returns = np.asarray(sequence_rewards(task, tokens, prompt_lens, response_lens)).sum(1)
    weights = task.prompts[2][prompt_ids]
    for p in range(len(task.prompts[1])):  # each prompt's responses are a distribution
        assert np.exp(log_q[prompt_ids == p]).sum() == pytest.approx(1.0, abs=1e-5)
    kl = float(np.sum(weights * np.exp(log_e) * (log_e - log_q)))
    reward = float(np.sum(weights * np.exp(log_q) * returns))
    return kl, reward


def test_exact_evaluator_matches_a_brute_force_sum_over_every_response():
    task = make_task("bigram", num_chars=2, horizon=3, seed=1)
    spec = task.tree_spec()
    rewards = oracle.rewards_from_step_fn(spec, task.step_reward)
    config = ModelSize(family="gpt2", d_model=16).build(task.vocab_size, task.prompt_width + task.horizon)
    graphdef, policy = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    _, expert = nnx.split(Transformer(config, rngs=nnx.Rngs(1)))
    expert = jax.tree_util.tree_map(lambda x: 3.0 * x, expert)  # sharper, far from the policy
    evaluate = exact_evaluator(spec, graphdef, oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, expert)), rewards)

    kl, reward = brute_force(task, graphdef, policy, expert)
    exact = evaluate(policy)
    assert kl > 0.05
    assert exact["kl_expert_policy"] == pytest.approx(kl, rel=1e-4)
    assert exact["gold_reward"] == pytest.approx(reward, rel=1e-4, abs=1e-5)
    # From a policy tree: the same numbers; the expert itself is at KL 0.
    assert evaluate.from_tree(oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, policy))) == exact
    assert evaluate(expert)["kl_expert_policy"] == pytest.approx(0.0, abs=1e-5)
