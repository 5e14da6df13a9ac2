"""What the runs of one study share: a task, a policy architecture and its reference.

Every study starts the same way: build the task, build a small policy whose initial parameters
are the reference (of every KL, and the start of every run) and, when the task is small enough
to enumerate, its oracle tree with the gold rewards, so that any policy can be evaluated
exactly. ``Setting`` holds those, plus whatever one study adds (its reward models, test
samples, ...) in ``extras``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jirl.mdp import oracle
from jirl.mdp.tasks import Task, TaskConfig, build_task
from jirl.models.scoring import logits_fn
from jirl.models.transformer import ModelSize, Transformer


@dataclasses.dataclass
class Setting:
    """A task, a policy and its reference: ``task``; the policy's ``model_config`` and
    ``graphdef``; ``reference``, its initial parameters (also the KL reference). For a task
    solved exactly (``exact``), its oracle ``spec``, the gold ``rewards`` tree and the reference
    as a policy tree ``ref_tree``; else these are ``None``. ``extras``: what one study adds (its
    reward models, test samples, ...), by name. Build with ``Setting.build``."""

    task: Any
    model_config: Any  # the policy's TransformerConfig
    graphdef: Any
    reference: Any  # the initial (and reference) policy parameters
    spec: oracle.TreeSpec | None = None
    rewards: list | None = None  # the gold reward tree
    ref_tree: list | None = None  # the reference as a policy tree
    extras: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def build(cls, task: TaskConfig | Task, model: ModelSize, seed: int, *, exact: bool = True) -> "Setting":
        """Build ``task`` (a ``TaskConfig``, or a task already built) and initialise a
        ``Transformer`` of size ``model`` (the task's vocabulary and context) from ``seed``; that
        initial policy is the reference. ``exact``: also enumerate the task's tree and read its
        gold rewards and the reference's policy tree (small tasks only)."""
        task = build_task(task) if isinstance(task, TaskConfig) else task
        model_config = model.build(task.vocab_size, task.prompt_width + task.horizon)
        graphdef, reference = nnx.split(Transformer(model_config, rngs=nnx.Rngs(seed)))
        reference = jax.tree_util.tree_map(jnp.copy, reference)
        setting = cls(task, model_config, graphdef, reference)
        if exact:
            setting.spec = task.tree_spec()
            setting.rewards = oracle.rewards_from_step_fn(setting.spec, task.step_reward)
            setting.ref_tree = setting.policy_tree(reference)
        return setting

    @property
    def exact(self) -> bool:
        """Whether the task's tree is enumerated (the exact evaluations below need it)."""
        return self.spec is not None

    def with_reference(self, reference) -> "Setting":
        """A copy of the setting with another reference policy (a trained one, say); its policy
        tree is recomputed when the setting is exact."""
        setting = dataclasses.replace(self, reference=reference, extras=dict(self.extras))
        if self.exact:
            setting.ref_tree = setting.policy_tree(reference)
        return setting

    def policy_tree(self, params) -> list:
        """``log pi(a|s)`` over the whole tree for policy parameters ``params``."""
        self._require_exact("policy_tree")
        return oracle.log_probs_from_logits_fn(self.spec, logits_fn(self.graphdef, params))

    def optimum(self, beta: float) -> list:
        """pi*_beta relative to the reference, as a policy tree."""
        self._require_exact("optimum")
        return oracle.solve(self.spec, self.ref_tree, self.rewards, beta).log_probs

    def evaluate_tree(self, tree, beta: float, optimum=None) -> dict[str, float]:
        """Exact ``expected_reward``, ``kl_to_reference``, ``objective`` (and ``kl_to_optimal``)."""
        self._require_exact("evaluate_tree")
        exact = oracle.evaluate(self.spec, tree, self.ref_tree, self.rewards, beta, optimum)
        return {k: float(v) for k, v in exact.items()}

    def evaluate(self, params, beta: float, optimum=None) -> dict[str, float]:
        """``evaluate_tree`` of the policy with parameters ``params``: exact ``expected_reward``,
        ``kl_to_reference``, ``objective`` at ``beta`` and, given ``optimum`` (a policy tree),
        ``kl_to_optimal``."""
        return self.evaluate_tree(self.policy_tree(params), beta, optimum)

    def _require_exact(self, what: str) -> None:
        if not self.exact:
            raise ValueError(f"Setting.{what} needs the task's tree: build the setting with exact=True (a small task)")
