import numpy as np

from jirl.data.builders import data_source, prepare
from jirl.data.task_preferences import TaskPreferences
from jirl.eval.metrics import pairwise_accuracy
from jirl.mdp.env import sequence_rewards
from jirl.mdp.tasks import make_task


def read(builder, split):
    source = data_source(builder, split)
    rows = [source[i] for i in range(len(source))]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_synthetic_pairs_carry_gold_returns_and_follow_the_annotator(tmp_path):
    params = dict(task="bigram", task_args=("num_chars=3", "horizon=4"), num_train=3000, num_test=200, beta_ann=2.0, seed=1)
    builder = prepare(TaskPreferences, tmp_path, **params)
    train, test = read(builder, "train"), read(builder, "test")
    assert len(train["chosen"]) == 3000 and len(test["chosen"]) == 200
    task = make_task("bigram", num_chars=3, horizon=4)
    # Stored gold returns equal the task's rewards recomputed from the stored tokens.
    recomputed = sequence_rewards(task, train["chosen"], train["prompt_len"], train["chosen_len"]).sum(axis=1)
    np.testing.assert_allclose(recomputed, train["chosen_gold"], rtol=1e-5, atol=1e-5)
    assert np.all(train["chosen"][:, 0] == train["rejected"][:, 0])  # within-prompt pairs
    # The BT annotator: P(chosen has the higher gold return) = mean sigmoid(2 |r_a - r_b|).
    gap = np.abs(train["chosen_gold"] - train["rejected_gold"])
    expected = np.mean(1 / (1 + np.exp(-2.0 * gap[gap > 0])))
    observed = float(pairwise_accuracy(train["chosen_gold"][gap > 0], train["rejected_gold"][gap > 0]))
    assert abs(observed - expected) < 3 * np.sqrt(expected * (1 - expected) / (gap > 0).sum())
    # Same parameters, same data; flips make it noisier.
    again = read(prepare(TaskPreferences, tmp_path, **params), "train")
    np.testing.assert_array_equal(again["chosen"], train["chosen"])
    noisy = read(prepare(TaskPreferences, tmp_path, **{**params, "flip_rate": 0.4}), "train")
    noisy_acc = float(pairwise_accuracy(noisy["chosen_gold"][gap > 0], noisy["rejected_gold"][gap > 0]))
    assert noisy_acc < observed - 0.1
