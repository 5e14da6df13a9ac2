"""Synthetic preference pairs from a task's gold reward, as a TFDS ``array_record`` dataset.

A pool of responses is drawn from the task's exact pi*_beta (large ``policy_beta``: nearly
uniform), pairs are formed by a pairing strategy (``within_prompt`` by default) and labelled by
a simulated Bradley-Terry annotator, P(a > b) = sigmoid(beta_ann (r_a - r_b)), with optional
label flips. Examples have the layout of ``jirl.data.preferences`` (``chosen``/``rejected``
buffers, ``prompt_len``, ``chosen_len``, ``rejected_len``, ``margin``) plus the gold returns
``chosen_gold``/``rejected_gold`` for evaluation.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jirl.data.builders import _build_task, _config_name, _reject_unknown, _task_params
from jirl.data.errors import DataError
from jirl.data.preferences import preference_features


@dataclasses.dataclass(eq=False)
class TaskPreferencesConfig(tfds.core.BuilderConfig):
    """Builder config of ``TaskPreferences``: the task (``task`` and ``task_args`` as
    ``key=value`` strings), the pool's policy pi*_beta (``policy_beta``; large = nearly uniform),
    ``pool_size`` responses, ``num_train``/``num_test`` pairs, the annotator's inverse
    temperature ``beta_ann`` and ``flip_rate``, the ``pairing`` strategy and the ``seed``. Make
    one with ``TaskPreferences.make_config``."""

    task: str = "gold_rm"
    task_args: tuple[str, ...] = ()
    policy_beta: float = 1000.0
    pool_size: int = 4096
    num_train: int = 2000
    num_test: int = 500
    beta_ann: float = 1.0
    flip_rate: float = 0.0
    pairing: str = "within_prompt"
    seed: int = 0


class TaskPreferences(tfds.core.GeneratorBasedBuilder):
    """Preference pairs of a jirl task labelled by a simulated annotator from its gold reward."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Synthetic BT-annotated pairs with gold returns."}
    PARAMS = ("task", "task_args", "policy_beta", "pool_size", "num_train", "num_test", "beta_ann", "flip_rate", "pairing", "seed")

    @classmethod
    def make_config(cls, **params) -> TaskPreferencesConfig:
        """A validated ``TaskPreferencesConfig`` from keyword parameters (names in ``PARAMS``;
        the others keep their defaults), named after the task and a hash of every parameter so
        that different settings never share a dataset folder. Raises ``DataError`` for unknown
        parameters, a ``flip_rate`` outside [0, 1] or empty splits."""
        _reject_unknown(params, cls.PARAMS, cls.__name__)
        values = {f.name: f.default for f in dataclasses.fields(TaskPreferencesConfig) if f.name in cls.PARAMS}
        values.update(params)
        values["task_args"] = tuple(values["task_args"])
        if not 0 <= values["flip_rate"] <= 1:
            raise DataError(f"flip_rate must be in [0, 1], got {values['flip_rate']}")
        if values["num_train"] < 1 or values["num_test"] < 0 or values["pool_size"] < 2:
            raise DataError("TaskPreferences needs num_train >= 1, num_test >= 0 and pool_size >= 2")
        task = _build_task(values["task"], values["task_args"])
        identity = {k: v for k, v in values.items() if k != "task_args"} | {"task_params": _task_params(task)}
        return TaskPreferencesConfig(
            name=_config_name(f"{task.name}-pairs", identity),
            description=f"task preferences {json.dumps(identity, sort_keys=True, default=str)}",
            **values,
        )

    def _info(self) -> tfds.core.DatasetInfo:
        task = self._task()
        features = dict(preference_features(task.prompt_width + task.horizon))
        features["chosen_gold"] = tfds.features.Scalar(dtype=np.float32)
        features["rejected_gold"] = tfds.features.Scalar(dtype=np.float32)
        return tfds.core.DatasetInfo(
            builder=self, description=type(self).__doc__, features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        examples = synthetic_pairs(self._task(), self.builder_config)
        splits = {"train": examples[: self.builder_config.num_train]}
        if self.builder_config.num_test:
            splits["test"] = examples[self.builder_config.num_train :]
        return {split: self._generate_examples(rows) for split, rows in splits.items()}

    def _generate_examples(self, rows):
        return enumerate(rows)  # keys are row indices, in generation order

    def _task(self):
        if not hasattr(self, "_cached_task"):
            self._cached_task = _build_task(self.builder_config.task, self.builder_config.task_args)
        return self._cached_task


def synthetic_pairs(task, config: TaskPreferencesConfig) -> list[dict[str, Any]]:
    """``num_train + num_test`` labelled pairs; test pairs use responses not seen in training."""
    import jax
    import jax.numpy as jnp

    from jirl.mdp.demonstrations import from_optimum
    from jirl.rewards.annotation import PAIRINGS, annotate, to_chosen_rejected

    pool_key, split_key, pair_key, label_key = jax.random.split(jax.random.key(config.seed), 4)
    demos = from_optimum(task, pool_key, config.pool_size, config.policy_beta)
    tokens, prompt_lens = np.asarray(demos.tokens), np.asarray(demos.prompt_lens)
    response_lens, gold = np.asarray(demos.response_lens), np.asarray(demos.returns)
    prompt_ids = np.unique(tokens[:, : task.prompt_width], axis=0, return_inverse=True)[1].reshape(-1)
    order = np.asarray(jax.random.permutation(split_key, len(tokens)))
    pools = {"train": order[: len(order) // 2], "test": order[len(order) // 2 :]}
    pairing = PAIRINGS.get(config.pairing)
    rows = []
    for split, count in (("train", config.num_train), ("test", config.num_test)):
        if not count:
            continue
        pool = pools[split]
        a, b = (pool[np.asarray(i)] for i in pairing(jax.random.fold_in(pair_key, len(rows)), count, jnp.asarray(prompt_ids[pool])))
        labels = annotate(jax.random.fold_in(label_key, len(rows)), jnp.asarray(gold[a]), jnp.asarray(gold[b]), config.beta_ann, config.flip_rate)
        chosen, rejected = (np.asarray(x) for x in to_chosen_rejected(jnp.asarray(a), jnp.asarray(b), labels))
        for c, r in zip(chosen, rejected):
            rows.append({
                "chosen": tokens[c], "rejected": tokens[r], "prompt_len": prompt_lens[c],
                "chosen_len": response_lens[c], "rejected_len": response_lens[r], "margin": np.float32(0.0),
                "chosen_gold": np.float32(gold[c]), "rejected_gold": np.float32(gold[r]),
            })
    return rows
