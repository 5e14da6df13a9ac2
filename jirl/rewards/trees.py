"""Gradient-boosted-tree reward models on cached embeddings (Sun et al., ICLR 2025, CLF-LGB).

The order-consistent *classification* reward model of Sun, Shen & Ton ("Rethinking
Bradley-Terry models in preference-based reward modeling") needs no pairwise architecture: every
chosen response is a positive example, every rejected one a negative, and any probabilistic
classifier ``P(chosen | x)`` gives a reward through its logit,

    r(x) = log P(chosen | x) - log(1 - P(chosen | x)),

which is order-consistent with the annotator's preferences whenever the classifier is. Their
tree-based variant fits LightGBM (Ke et al. 2017) to the embeddings with the binary log-loss;
the reward is the booster's raw score (the logit). LightGBM is an optional dependency: install
the ``trees`` extra (``pip install "jirl[trees]"``).

Public API: ``TreeSettings``, ``fit_tree_classifier``, ``tree_rewards``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TreeSettings:
    """LightGBM settings: its own defaults (100 boosting rounds of 31-leaf trees, learning rate
    0.1), which Sun et al. state they use, on ``num_threads`` threads."""

    num_trees: int = 100
    num_leaves: int = 31
    learning_rate: float = 0.1
    min_data_in_leaf: int = 20
    num_threads: int = 2


def _lightgbm():
    try:
        import lightgbm
    except ImportError as error:  # pragma: no cover - the test extra installs it
        raise ImportError(
            "the tree reward model (CLF-GBDT) needs LightGBM: pip install 'jirl[trees]' (or pip install lightgbm)"
        ) from error
    return lightgbm


def fit_tree_classifier(chosen, rejected, seed: int = 0, settings: TreeSettings = TreeSettings()):
    """A LightGBM binary classifier of chosen (label 1) vs rejected (label 0) embeddings
    ``[P, d]`` each, minimising the log-loss ``-sum_y [y log p + (1 - y) log(1 - p)]``. Returns
    the booster; ``tree_rewards`` reads its logits."""
    chosen, rejected = np.asarray(chosen, np.float32), np.asarray(rejected, np.float32)
    if chosen.ndim != 2 or chosen.shape != rejected.shape:
        raise ValueError(f"chosen and rejected must be [pairs, dim] arrays of one shape, got {chosen.shape} and {rejected.shape}")
    if not (np.isfinite(chosen).all() and np.isfinite(rejected).all()):
        raise ValueError("the embeddings hold NaN or inf; recompute them (a NaN in the backbone's forward pass?)")
    lightgbm = _lightgbm()
    features = np.concatenate([chosen, rejected])
    labels = np.concatenate([np.ones(len(chosen)), np.zeros(len(rejected))])
    params = {
        "objective": "binary", "num_leaves": settings.num_leaves, "learning_rate": settings.learning_rate,
        "min_data_in_leaf": settings.min_data_in_leaf, "num_threads": settings.num_threads, "seed": seed,
        "deterministic": True, "force_row_wise": True, "verbosity": -1,
    }
    return lightgbm.train(params, lightgbm.Dataset(features, labels), num_boost_round=settings.num_trees)


def tree_rewards(booster, x) -> np.ndarray:
    """Rewards ``[N]``: the classifier's logit ``log p / (1 - p)`` of embeddings ``x [N, d]``."""
    return np.asarray(booster.predict(np.asarray(x, np.float32), raw_score=True), np.float64)
