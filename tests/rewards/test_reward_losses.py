import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jirl.rewards.embedding_heads import head_reward, member_rewards, train_heads
from jirl.rewards.ensemble import aggregate_ensemble
from jirl.rewards.losses import (
    PAIRWISE_LOSSES,
    bradley_terry_loss,
    classification_loss,
    hinge_loss,
    outcome_decomposition_loss,
    step_label_loss,
)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_bt_and_classification_gradients_match_closed_forms():
    r_c, r_r, m = jnp.array([0.3, -1.2, 2.0]), jnp.array([0.5, -2.0, 0.1]), jnp.array([0.0, 0.5, 1.0])
    d = np.asarray(r_c - r_r - m)
    # BT: dl/dr+ = -(1 - sigma(d)),  dl/dr- = 1 - sigma(d)
    g_c, g_r = jax.grad(lambda a, b: bradley_terry_loss(a, b, m).sum(), argnums=(0, 1))(r_c, r_r)
    np.testing.assert_allclose(g_c, -(1 - sigmoid(d)), rtol=1e-6)
    np.testing.assert_allclose(g_r, 1 - sigmoid(d), rtol=1e-6)
    np.testing.assert_allclose(bradley_terry_loss(r_c, r_r, m), -np.log(sigmoid(d)), rtol=1e-6)
    # classification: dl/dr+ = sigma(r+) - 1,  dl/dr- = sigma(r-)
    g_c, g_r = jax.grad(lambda a, b: classification_loss(a, b).sum(), argnums=(0, 1))(r_c, r_r)
    np.testing.assert_allclose(g_c, sigmoid(np.asarray(r_c)) - 1, rtol=1e-6)
    np.testing.assert_allclose(g_r, sigmoid(np.asarray(r_r)), rtol=1e-6)
    expected = -np.log(sigmoid(np.asarray(r_c))) - np.log(1 - sigmoid(np.asarray(r_r)))
    np.testing.assert_allclose(classification_loss(r_c, r_r), expected, rtol=1e-6)
    np.testing.assert_allclose(hinge_loss(r_c, r_r, 1.0), np.maximum(0, 1 - np.asarray(r_c - r_r)), rtol=1e-6)
    assert set(PAIRWISE_LOSSES.names()) == {"bt", "classification", "hinge"}


def linear_bt_problem(num_pairs, seed=0, d=8, items=400):
    """Gold reward r* = phi . w*; pairs labelled by a Bradley-Terry annotator (plain NumPy)."""
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((items, d)).astype(np.float32)
    gold = phi @ rng.standard_normal(d).astype(np.float32)
    a, b = rng.integers(0, items, num_pairs), rng.integers(0, items, num_pairs)
    a_wins = rng.random(num_pairs) < sigmoid(gold[a] - gold[b])
    chosen, rejected = np.where(a_wins, a, b), np.where(a_wins, b, a)
    return phi, gold, chosen, rejected


def heldout_accuracy(params, phi, gold, seed=1, n=4000):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(phi), n), rng.integers(0, len(phi), n)
    keep = gold[a] != gold[b]
    a, b = a[keep], b[keep]
    r = np.asarray(head_reward(params, jnp.asarray(phi)))
    return np.mean((r[a] > r[b]) == (gold[a] > gold[b]))


def test_bt_recovers_a_well_specified_gold_reward_and_accuracy_rises_with_pairs():
    accuracies = []
    for num_pairs in (50, 500, 5000):
        phi, gold, chosen, rejected = linear_bt_problem(num_pairs)
        params, _ = train_heads(jax.random.key(0), phi[chosen], phi[rejected], loss="bt", steps=800, learning_rate=3e-2, weight_decay=0.0)
        params = jax.tree_util.tree_map(lambda x: x[0], params)
        accuracies.append(heldout_accuracy(params, phi, gold))
    r = np.asarray(head_reward(params, jnp.asarray(phi)))
    assert np.corrcoef(r, gold)[0, 1] >= 0.95  # up to a constant (and, for BT, the true scale)
    assert accuracies[0] < accuracies[1] < accuracies[2], accuracies


def test_classification_reward_is_order_consistent_on_separable_data():
    """Deterministic labels (the higher gold reward always wins) on tabular items: at the
    optimum of the classification loss, the learned order equals the gold order."""
    items = 12
    gold = np.random.default_rng(3).permutation(items).astype(np.float32)
    pairs = np.array([(i, j) for i in range(items) for j in range(items) if i != j])
    chosen = np.where(gold[pairs[:, 0]] > gold[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
    rejected = np.where(gold[pairs[:, 0]] > gold[pairs[:, 1]], pairs[:, 1], pairs[:, 0])
    one_hot = np.eye(items, dtype=np.float32)
    params, losses = train_heads(jax.random.key(0), one_hot[chosen], one_hot[rejected], loss="classification",
                                 steps=3000, learning_rate=5e-2, weight_decay=0.0)
    learned = np.asarray(head_reward(jax.tree_util.tree_map(lambda x: x[0], params), jnp.asarray(one_hot)))
    order_agrees = (learned[:, None] > learned[None, :]) == (gold[:, None] > gold[None, :])
    assert order_agrees[~np.eye(items, dtype=bool)].all()
    assert float(losses[0, -1]) < float(losses[0, 0])


def test_ensemble_members_differ_and_aggregations_match_numpy():
    phi, gold, chosen, rejected = linear_bt_problem(300, seed=4)
    params, _ = train_heads(jax.random.key(1), phi[chosen], phi[rejected], num_members=4, hidden=16, steps=200)
    rewards = np.asarray(member_rewards(params, jnp.asarray(phi)))
    assert rewards.shape == (4, len(phi))
    assert not np.allclose(rewards[0], rewards[1], atol=1e-3)
    np.testing.assert_allclose(aggregate_ensemble(rewards, "mean"), rewards.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aggregate_ensemble(rewards, "min"), rewards.min(0), rtol=1e-6)
    np.testing.assert_allclose(aggregate_ensemble(rewards, "mean_minus_std", k=2.0), rewards.mean(0) - 2 * rewards.std(0), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown ensemble aggregation"):
        aggregate_ensemble(rewards, "median")


def test_process_losses_match_hand_computation():
    r = jnp.array([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]])
    labels = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    out = step_label_loss(r, labels, mask)
    expected = (-np.log(sigmoid(0.5)) - np.log(1 - sigmoid(-1.0)) - np.log(1 - sigmoid(1.0))) / 3
    assert float(out.value) == pytest.approx(expected, rel=1e-6)
    out = outcome_decomposition_loss(r, mask, jnp.array([0.0, 2.0]))
    assert float(out.value) == pytest.approx(((0.5 - 1.0 - 0.0) ** 2 + (1.0 - 2.0) ** 2) / 2, rel=1e-6)


def test_mlp_recipe_learns_a_nonlinear_reward_and_stops_early():
    from jirl.rewards.embedding_heads import mlp_reward, train_mlp_reward

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3000, 4)).astype(np.float32)
    truth = lambda x: np.abs(x[:, 0]) - 0.5 * x[:, 1]  # noqa: E731
    a_wins = truth(a) > truth(b)
    chosen, rejected = np.where(a_wins[:, None], a, b), np.where(a_wins[:, None], b, a)
    test = rng.normal(size=(2000, 4)).astype(np.float32)
    i, j = rng.integers(0, 2000, size=(2, 5000))
    for loss in ("bt", "classification"):
        layers, info = train_mlp_reward(jax.random.key(1), chosen, rejected, loss=loss, hidden=(64, 32), epochs=300,
                                        batch_size=512, learning_rate=3e-3)
        reward = np.asarray(mlp_reward(layers, test))
        assert np.mean((reward[i] > reward[j]) == (truth(test)[i] > truth(test)[j])) > 0.9, loss
        assert 4 <= int(info["epochs_run"]) <= 300
    # A validation loss that rises from the start stops training after patience + 1 epochs:
    # labels that are pure noise make the held-out loss grow as the MLP memorises them.
    noise = rng.normal(size=(2, 400, 4)).astype(np.float32)
    _, info = train_mlp_reward(jax.random.key(2), noise[0], noise[1], hidden=(256, 256), epochs=200, batch_size=64,
                               learning_rate=1e-2, patience=3)
    run = int(info["epochs_run"])
    assert run < 200
    curve = np.asarray(info["validation_loss"])[:run]
    assert np.all(curve[-1] > curve[-4:-1])  # it stopped at the first epoch worse than the 3 before
    assert not np.any(np.all(curve[3:-1, None] > np.stack([curve[i:i + len(curve) - 4] for i in range(3)], 1), axis=1))
