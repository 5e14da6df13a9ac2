import numpy as np
import pytest

from jirl.rewards.trees import TreeSettings, fit_tree_classifier, tree_rewards


def test_tree_classifier_logit_recovers_a_nonlinear_reward_order():
    # Chosen responses are those with the larger |x_0| (a reward no linear model can express).
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 4000, 3))
    a_wins = np.abs(a[:, 0]) > np.abs(b[:, 0])
    chosen, rejected = np.where(a_wins[:, None], a, b), np.where(a_wins[:, None], b, a)
    booster = fit_tree_classifier(chosen, rejected, seed=0, settings=TreeSettings(num_trees=50))
    test = rng.normal(size=(2000, 3))
    reward = tree_rewards(booster, test)
    truth = np.abs(test[:, 0])
    i, j = rng.integers(0, 2000, size=(2, 5000))
    agree = np.mean((reward[i] > reward[j]) == (truth[i] > truth[j]))
    assert agree > 0.85
    # The raw score is the logit of the predicted probability.
    prob = booster.predict(test[:5].astype(np.float32))
    np.testing.assert_allclose(reward[:5], np.log(prob / (1 - prob)), rtol=1e-5)


def test_tree_classifier_refuses_bad_embeddings():
    with pytest.raises(ValueError, match="one shape"):
        fit_tree_classifier(np.zeros((5, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        fit_tree_classifier(np.full((5, 3), np.nan), np.zeros((5, 3)))
