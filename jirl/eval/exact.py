"""Exact evaluation of a policy against an expert on an enumerable task.

With the task's oracle tree enumerated (``jirl.mdp.oracle``), a policy's expected gold reward
and its KL to an expert are sums over the tree, computed without sampling. The shared setting
of exact studies (task, tree, reference) is ``jirl.eval.setting.Setting``.
"""

from __future__ import annotations

from jirl.mdp import oracle
from jirl.models.scoring import logits_fn


def exact_evaluator(spec: oracle.TreeSpec, graphdef, expert_log_probs, rewards):
    """``evaluate(params) -> {kl_expert_policy, gold_reward}``: ``KL(expert || pi)`` and the
    expected gold reward ``E_pi[R]`` of the policy with parameters ``params`` (a model of
    ``graphdef``), exactly over the tree ``spec``. ``expert_log_probs`` is the expert as a policy
    tree, ``rewards`` the gold reward tree; ``evaluate.from_tree(policy_tree)`` does the same for
    a policy given as a tree."""

    def from_tree(policy):
        return {
            "kl_expert_policy": float(oracle.kl_divergence(spec, expert_log_probs, policy)),
            "gold_reward": float(oracle.expected_reward(spec, policy, rewards)),
        }

    def evaluate(params):
        return from_tree(oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, params)))

    evaluate.from_tree = from_tree
    return evaluate
