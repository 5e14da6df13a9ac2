"""SPIN from demonstrations, iteration by iteration, checked by the exact oracle."""

import jax
import pytest
from flax import nnx

from jirl.irl.spin import SPINConfig, spin
from jirl.mdp import oracle
from jirl.mdp.demonstrations import from_optimum
from jirl.mdp.tasks import make_task
from jirl.models.scoring import logits_fn
from jirl.models.transformer import Transformer, gpt2_tiny


@pytest.mark.slow
def test_spin_iterations_move_the_policy_towards_the_demonstrator():
    task = make_task("bigram", num_chars=3, horizon=3)
    spec = task.tree_spec()
    rewards = oracle.rewards_from_step_fn(spec, task.step_reward)
    expert = oracle.solve(spec, oracle.uniform_log_probs(spec), rewards, 0.5).log_probs
    graphdef, params = nnx.split(Transformer(gpt2_tiny(task.vocab_size, max_len=8, d_model=32), rngs=nnx.Rngs(0)))
    demos = from_optimum(task, jax.random.key(1), 2048, 0.5)

    def kl(p):
        return float(oracle.kl_divergence(spec, expert, oracle.log_probs_from_logits_fn(spec, logits_fn(graphdef, p))))

    curve = [kl(params)]
    spin(jax.random.key(2), task, graphdef, params, demos, SPINConfig(iterations=3, steps_per_iteration=150),
         on_iteration=lambda k, p: curve.append(kl(p)))
    # measured: 1.79 -> 0.146 -> 0.057 -> 0.059 nats
    assert curve[1] < 0.2 * curve[0] and curve[2] < curve[1] and curve[3] < 0.05 * curve[0], curve
