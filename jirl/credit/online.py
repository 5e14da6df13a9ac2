"""RL with dense credit, seeds side by side, and the models a credit scheme learns online.

Two schemes learn a model from the policy's own samples while the policy trains: PRIME's
implicit PRM (``jirl.credit.prime``, a copy of the reference) and randomised return
decomposition's token reward model (``jirl.credit.decomposition``). ``online_model`` builds the
one a scheme needs; ``make_credit_rl_programs`` runs RL whose rewards are a scheme's credit,
with one update of the online model per iteration on the same samples, as jitted programs
vmapped over seeds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jirl.credit.decomposition import decomposition_loss
from jirl.credit.prime import group_relative_labels, prime_loss
from jirl.eval.setting import Setting
from jirl.mdp.env import sequence_rewards
from jirl.models.heads import TokenRewardModel
from jirl.rl.loop import RLConfig, collect, make_minibatch_update, rl_loss
from jirl.train.step import init_train_state, update_fn


@dataclasses.dataclass(frozen=True)
class OnlineModel:
    """A model learned online from the policy's samples: its ``graphdef``, initial parameters
    ``init``, ``loss`` (``loss_fn(params, batch, key) -> (LossOutput, metrics)``) and
    ``optimizer``."""

    graphdef: Any
    init: Any
    loss: Callable
    optimizer: optax.GradientTransformation


def online_model(
    scheme: str, setting: Setting, optimizer: optax.GradientTransformation, *, seed: int, prime_beta: float,
    decomposition_subset: int,
) -> OnlineModel | None:
    """The model credit scheme ``scheme`` learns online, or ``None`` for a scheme that learns
    none. ``prime``: the implicit PRM, initialised from the reference, at ``prime_beta``;
    ``decomposition``: a ``TokenRewardModel`` of the policy's size initialised from ``seed``,
    fitted on random subsets of ``decomposition_subset`` steps."""
    horizon = setting.task.horizon
    if scheme == "prime":
        return OnlineModel(
            setting.graphdef, jax.tree_util.tree_map(jnp.copy, setting.reference), prime_loss(setting.graphdef, horizon, prime_beta),
            optimizer,
        )
    if scheme == "decomposition":
        graphdef, init = nnx.split(TokenRewardModel(setting.model_config, rngs=nnx.Rngs(seed)))
        return OnlineModel(graphdef, init, decomposition_loss(graphdef, horizon, decomposition_subset), optimizer)
    return None


class CreditRLPrograms(NamedTuple):
    """The programs of ``make_credit_rl_programs``: ``iterate(carry, keys) -> (carry,
    metrics)``, ``evaluate(carry, keys) -> dict`` (jitted and vmapped over seeds) and
    ``init(keys) -> carry`` (one seed per key)."""

    iterate: Callable
    evaluate: Callable
    init: Callable


def make_credit_rl_programs(
    setting: Setting, rl: RLConfig, optimizer: optax.GradientTransformation, credit_fn: Callable, evaluate_fn: Callable,
    online: OnlineModel | None = None,
) -> CreditRLPrograms:
    """Seed-vmapped RL from the setting's reference whose rewards are a credit scheme's.

    The carry of a seed is ``(policy_state, online_state)``, two ``TrainState``s (``None`` for
    the second without an online model). An iteration (``iterate``) is the library's
    ``collect`` with ``reward_fn = credit_fn(aux, tokens, prompt_lens, response_lens) -> [B,
    horizon]`` (``aux``: the online model's current parameters, ``{}`` without one), then
    ``make_minibatch_update`` of ``rl_loss`` with ``optimizer`` and, with ``online``, one
    ``jirl.train.step`` update (``online.optimizer``, NaN guard included) of ``online.loss`` on
    the same samples: their ``returns`` (the task's return) and, for outcome labels,
    ``group_relative_labels`` of those returns. Metrics: ``collect``'s plus ``update/nonfinite``
    and, with ``online``, ``online/loss`` and ``online/nonfinite`` (``check_update_metrics``
    raises on either flag). ``evaluate`` is ``evaluate_fn(policy_params, aux, key)`` of each
    seed. ``init(keys)``: every seed at the reference (and ``online.init``), the online model's
    state keyed by the seed's key (its loss may draw noise: return decomposition's subsets);
    the RL loss draws none, so every policy state starts from the same key."""
    task, graphdef, reference = setting.task, setting.graphdef, setting.reference
    train_on_batch = make_minibatch_update(rl_loss(graphdef, rl, task.horizon), optimizer, rl)
    online_step = update_fn(online.loss, online.optimizer) if online is not None else None

    def online_params(online_state):
        return online_state.full_params if online_state is not None else {}

    def iterate(carry, key):
        policy_state, online_state = carry
        aux = online_params(online_state)

        def reward_fn(tokens, prompt_lens, response_lens):
            return credit_fn(aux, tokens, prompt_lens, response_lens)

        collect_key, shuffle_key = jax.random.split(key)
        batch, metrics = collect(collect_key, task, graphdef, policy_state.full_params, reference, rl, reward_fn)
        policy_state, update_metrics = train_on_batch(policy_state, batch, shuffle_key)
        metrics["update/nonfinite"] = update_metrics["nonfinite"]
        if online is not None:
            response_lens = jnp.sum(batch["mask"], axis=1)
            returns = jnp.sum(sequence_rewards(task, batch["tokens"], batch["prompt_len"], response_lens), axis=1)
            online_batch = {
                "tokens": batch["tokens"], "prompt_len": batch["prompt_len"], "response_len": response_lens,
                "ref_log_probs": batch["ref_log_probs"], "returns": returns,
                "labels": group_relative_labels(returns, rl.group_size),
            }
            online_state, online_metrics = online_step(online_state, online_batch)
            metrics["online/loss"] = online_metrics["loss"]
            metrics["online/nonfinite"] = online_metrics["nonfinite"]
        return (policy_state, online_state), metrics

    def evaluate(carry, key):
        policy_state, online_state = carry
        return evaluate_fn(policy_state.full_params, online_params(online_state), key)

    def init(keys):
        num_seeds = keys.shape[0]
        policy = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num_seeds,) + x.shape), reference)
        policy_state = jax.vmap(lambda p: init_train_state(p, optimizer, jax.random.key(0)))(policy)
        online_state = None
        if online is not None:
            online_state = jax.vmap(lambda k: init_train_state(online.init, online.optimizer, k))(keys)
        return policy_state, online_state

    return CreditRLPrograms(jax.jit(jax.vmap(iterate)), jax.jit(jax.vmap(evaluate)), init)
