"""An exactly solvable setting for experiments: a task, its oracle tree, a reference model.

Every oracle experiment starts the same way: build the task, enumerate its tree, read the
gold rewards into a reward tree, build a small policy whose initial parameters are the
reference, and turn any parameters into a policy tree the oracle can evaluate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jirl.mdp import oracle
from jirl.mdp.tasks import TaskConfig, build_task
from jirl.models.scoring import logits_fn
from jirl.models.transformer import ModelSize, Transformer


@dataclasses.dataclass
class ExactSetting:
    """A task solved exactly: the task, its oracle ``spec``, the gold ``rewards`` tree, a
    policy's ``graphdef`` with its initial parameters ``reference`` (also the KL reference) and
    that reference as a policy tree ``ref_tree``. Build with ``ExactSetting.build``."""

    task: Any
    spec: oracle.TreeSpec
    rewards: list  # the gold reward tree
    graphdef: Any
    reference: Any  # the initial (and reference) policy parameters
    ref_tree: list  # the reference as a policy tree

    @classmethod
    def build(cls, task: TaskConfig, model: ModelSize, seed: int) -> "ExactSetting":
        """Build the task named by ``task``, enumerate its tree, read its gold rewards and
        initialise a ``Transformer`` of size ``model`` (the task's vocabulary and context) from
        ``seed``; that initial policy is the reference."""
        task = build_task(task)
        spec = task.tree_spec()
        rewards = oracle.rewards_from_step_fn(spec, task.step_reward)
        model_config = model.build(task.vocab_size, task.prompt_width + task.horizon)
        graphdef, reference = nnx.split(Transformer(model_config, rngs=nnx.Rngs(seed)))
        reference = jax.tree_util.tree_map(jnp.copy, reference)
        ref_tree = oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, reference))
        return cls(task, spec, rewards, graphdef, reference, ref_tree)

    def policy_tree(self, params) -> list:
        """``log pi(a|s)`` over the whole tree for policy parameters ``params``."""
        return oracle.log_probs_from_logits_fn(self.spec, logits_fn(self.graphdef, params))

    def optimum(self, beta: float) -> list:
        """pi*_beta relative to the reference, as a policy tree."""
        return oracle.solve(self.spec, self.ref_tree, self.rewards, beta).log_probs

    def evaluate_tree(self, tree, beta: float, optimum=None) -> dict[str, float]:
        """Exact ``expected_reward``, ``kl_to_reference``, ``objective`` (and ``kl_to_optimal``)."""
        exact = oracle.evaluate(self.spec, tree, self.ref_tree, self.rewards, beta, optimum)
        return {k: float(v) for k, v in exact.items()}

    def evaluate(self, params, beta: float, optimum=None) -> dict[str, float]:
        """``evaluate_tree`` of the policy with parameters ``params``: exact ``expected_reward``,
        ``kl_to_reference``, ``objective`` at ``beta`` and, given ``optimum`` (a policy tree),
        ``kl_to_optimal``."""
        return self.evaluate_tree(self.policy_tree(params), beta, optimum)
