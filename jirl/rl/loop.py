"""The RL loop for language policies: sample -> reward -> advantages -> minibatch updates.

One iteration is one pure function, ``update = make_rl_update(...)``,
``update(state, ref_params, key) -> (state, metrics)``: jittable, and vmappable over seeds
(``jax.vmap(update)``), with every metric left on device. ``make_rl_iteration`` is
``jax.jit(update)`` plus the host side: metrics as floats, and an error on a NaN update.
An iteration:

1. ``prompts_per_iteration`` prompts, each answered ``group_size`` times by the sampler
   (log-probs from the shared scoring path, contract 3);
2. dense ``[batch, time]`` rewards from the task (or any reward function), minus the per-token
   KL to the frozen reference when ``kl_in == "reward"`` (InstructGPT style);
3. advantages from any registered estimator (``ADVANTAGES``);
4. ``epochs`` passes of ``minibatches`` updates of a registered policy loss (``POLICY_LOSSES``),
   with the KL in the loss instead when ``kl_in == "loss"`` (GRPO style): ``lax.scan`` over
   the update step of ``jirl.train.step`` (``make_minibatch_update``), so gradient
   accumulation, clipping in the optimizer and the NaN guard hold in every caller.

A study that trains something else on the same samples (a process reward model, a return
decomposition) composes the two halves itself: ``collect`` and ``make_minibatch_update``.

With a critic (``ValueModel``), the train state's parameters are
``nnx.State({"policy": ..., "critic": ...})``; the critic's values feed GAE and its clipped
value loss is added with weight ``value_coef`` (PPO, Schulman et al. 2017).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jirl.config import ConfigError, at_least, finite, non_negative, positive, probability, registered
from jirl.mdp.env import sequence_rewards
from jirl.mdp.responses import sample_groups
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.models.scoring import gather_response, response_log_probs
from jirl.rl.advantages import ADVANTAGES, advantage_fn, check_rewards, gae_returns
from jirl.rl.kl import KL_CONTROLLERS, KLControllerState, kl_controller, kl_loss_terms, kl_penalized_rewards, kl_terms
from jirl.rl.policy_losses import POLICY_LOSSES, aggregate, clipped_value_terms, masked_mean, policy_loss_fn
from jirl.train.loop import NonFiniteLossError
from jirl.train.step import TrainState, update_fn


@dataclasses.dataclass
class RLConfig:
    """Settings of one RL iteration: the advantage estimator and policy loss (names in
    ``ADVANTAGES``/``POLICY_LOSSES``) and the loss ``aggregation``; ``prompts_per_iteration``
    prompts answered ``group_size`` times each, ``epochs`` x ``minibatches`` updates; the KL
    coefficient ``kl_coef`` (beta of J = E[R] - beta KL(pi || pi_ref)), where the KL goes
    (``kl_in``: the reward or the loss) and its estimator; the sampling ``temperature``; GAE's
    ``gamma`` and ``lam``; the critic's loss weight ``value_coef`` and ``value_clip``."""

    advantage: Annotated[str, registered(ADVANTAGES)] = "rloo"  # a name in ADVANTAGES
    policy_loss: Annotated[str, registered(POLICY_LOSSES)] = "pg"  # a name in POLICY_LOSSES
    aggregation: Literal["token_mean", "sequence_mean", "sequence_sum"] = "sequence_sum"
    group_size: Annotated[int, at_least(1)] = 8  # responses per prompt (RLOO/GRPO groups)
    prompts_per_iteration: Annotated[int, at_least(1)] = 16
    epochs: Annotated[int, at_least(1)] = 1
    minibatches: Annotated[int, at_least(1)] = 1
    kl_coef: Annotated[float, finite, non_negative] = 0.0  # beta of J = E[R] - beta KL(pi || pi_ref)
    kl_in: Literal["reward", "loss"] = "reward"
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    # How the coefficient moves between iterations (KL_CONTROLLERS): "fixed" keeps kl_coef;
    # "adaptive" (Ziegler et al. 2019) starts at kl_coef and steers the KL towards a target, e.g.
    # --set rl.kl_controller=adaptive rl.kl_controller_options.target=6; its coefficient lives in
    # the update state (init_rl_state).
    kl_controller: Annotated[str, registered(KL_CONTROLLERS)] = "fixed"
    kl_controller_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    temperature: Annotated[float, finite, positive] = 1.0
    gamma: Annotated[float, probability] = 1.0  # GAE discount (token-level MDP: no discounting)
    lam: Annotated[float, probability] = 0.95  # GAE lambda
    value_coef: Annotated[float, finite, non_negative] = 0.5  # weight of the critic's loss (critic runs only)
    value_clip: Annotated[float | None, positive] = 0.2
    # Options of the policy loss and the estimator, e.g. {"clip_low": 0.1, "dual_clip": 3.0} for
    # ppo or {"eps": 1e-4} for grpo (--set rl.policy_loss_options.clip_low=0.1); unknown ones are errors.
    policy_loss_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    advantage_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        """Minibatches must split an iteration's samples evenly; the options must be the loss's,
        the estimator's and the KL controller's."""
        policy_loss_fn(self.policy_loss, self.policy_loss_options)
        advantage_fn(self.advantage, self.advantage_options)
        self.controller()
        rows = self.prompts_per_iteration * self.group_size
        if rows % self.minibatches:
            raise ConfigError(
                f"minibatches={self.minibatches} does not divide the {rows} samples of an iteration "
                f"(prompts_per_iteration x group_size); pick a divisor of {rows}"
            )

    def controller(self):
        """The KL coefficient's controller (``jirl.rl.kl.kl_controller``), starting at ``kl_coef``."""
        return kl_controller(self.kl_controller, self.kl_coef, self.kl_controller_options)


@struct.dataclass
class RLState:
    """The state of an RL run whose KL coefficient moves (``kl_controller="adaptive"``): the
    policy's ``TrainState`` and the controller's ``KLControllerState``. ``init_rl_state``
    builds it; ``make_rl_update``'s ``update`` takes it or a bare ``TrainState`` (a fixed
    coefficient, ``kl_coef``)."""

    train: TrainState
    kl: KLControllerState

    @property
    def full_params(self):
        """The policy's (and critic's) parameters, as ``TrainState.full_params``."""
        return self.train.full_params


def init_rl_state(train_state: TrainState, config: RLConfig) -> RLState:
    """``train_state`` with the KL controller's initial state (coefficient ``kl_coef``)."""
    return RLState(train=train_state, kl=config.controller().init())


def critic_values(critic_graphdef, critic_params, tokens, prompt_lens, horizon):
    """``V(s_t) [B, horizon]``: the critic read at the last token of each state's prefix
    (slot ``prompt_len + t - 1``), aligned with the response steps."""
    per_slot = nnx.merge(critic_graphdef, critic_params)(tokens)
    return gather_response(per_slot, prompt_lens, horizon, shift=-1)


def rl_loss(graphdef, config: RLConfig, horizon: int, critic_graphdef=None) -> Callable:
    """``loss_fn(params, batch, key)`` of a policy loss on a batch of sampled responses (plus
    the clipped value loss when ``critic_graphdef`` is given and ``params`` holds both)."""
    policy_loss = policy_loss_fn(config.policy_loss, config.policy_loss_options)

    def loss_fn(params, batch, key):
        del key
        policy_params = params["policy"] if critic_graphdef is not None else params
        log_probs = response_log_probs(graphdef, policy_params, batch["tokens"], batch["prompt_len"], horizon, config.temperature)
        mask = batch["mask"]
        terms, metrics = policy_loss(log_probs, batch["old_log_probs"], batch["advantages"], mask)
        if config.kl_in == "loss" and config.kl_coef:
            # Each row carries the coefficient it was collected with (it moves under a controller).
            coef = batch["kl_coef"][:, None] if "kl_coef" in batch else config.kl_coef
            terms = terms + coef * kl_loss_terms(log_probs, batch["ref_log_probs"], config.kl_estimator)
        if critic_graphdef is not None:
            values = critic_values(critic_graphdef, params["critic"], batch["tokens"], batch["prompt_len"], horizon)
            value_terms, _ = clipped_value_terms(values, batch["old_values"], batch["returns"], config.value_clip)
            terms = terms + config.value_coef * value_terms
            metrics["value_error"] = masked_mean(jnp.abs(values - batch["returns"]), mask)
        return aggregate(terms, mask, config.aggregation), metrics

    return loss_fn


def score_responses(out, task, graphdef, ref_params, config: RLConfig, reward_fn=None, kl_coef=None):
    """Rewards ``[B, T]`` of sampled responses, the same minus the per-token KL to the
    reference times ``kl_coef`` (default ``config.kl_coef``) when ``kl_in == "reward"`` (the
    "shaped" rewards the advantages see), and the reference log-probs. ``reward_fn`` defaults
    to the task's gold reward."""
    reward_fn = reward_fn or (lambda t, p, r: sequence_rewards(task, t, p, r))
    rewards = reward_fn(out.tokens, out.prompt_lens, out.response_lens)
    check_rewards(rewards, out.response_mask)
    ref_log_probs = response_log_probs(graphdef, ref_params, out.tokens, out.prompt_lens, task.horizon, config.temperature)
    shaped = rewards
    if config.kl_in == "reward" and config.kl_coef:
        coef = config.kl_coef if kl_coef is None else kl_coef
        shaped = kl_penalized_rewards(rewards, out.log_probs, ref_log_probs, out.response_mask, coef, config.kl_estimator)
    return rewards, shaped, ref_log_probs


def collect(
    key, task, graphdef, params, ref_params, config: RLConfig, reward_fn=None, critic=None, kl_coef=None
) -> tuple[dict, dict]:
    """Sample a batch of responses and compute everything the update needs.

    ``reward_fn(tokens, prompt_lens, response_lens) -> [B, T]`` defaults to the task's gold
    reward (``jirl.rewards.models.reward_model_rewards`` wraps a learned reward model).
    ``critic = (critic_graphdef, critic_params)`` adds the values and GAE returns the value
    loss needs; ``advantage="remax"`` also decodes each prompt greedily for the baseline.
    ``kl_coef`` (a scalar, possibly traced: a controller's current coefficient) replaces
    ``config.kl_coef``; ``batch["kl_coef"]`` holds it per row for a KL in the loss.
    Returns the batch and sampling metrics, all device arrays: ``collect`` is a pure function
    of its array arguments (jittable, and vmappable over seeds when ``reward_fn`` is), and
    ``batch["rewards"]`` keeps the rewards before the KL penalty (auxiliary models such as a
    process reward model learn from them).
    """
    out, unique_prompts, unique_lens = sample_groups(task, graphdef, params, key, config.prompts_per_iteration, config.group_size, config.temperature)
    group_ids = jnp.repeat(jnp.arange(config.prompts_per_iteration), config.group_size)
    rewards, shaped, ref_log_probs = score_responses(out, task, graphdef, ref_params, config, reward_fn, kl_coef)
    mask = out.response_mask
    batch = {
        "tokens": out.tokens, "prompt_len": out.prompt_lens, "mask": mask, "old_log_probs": out.log_probs,
        "ref_log_probs": ref_log_probs, "rewards": rewards,
    }
    if kl_coef is not None:
        batch["kl_coef"] = jnp.full(mask.shape[:1], kl_coef, jnp.float32)
    baseline = {}
    if config.advantage == "remax":
        # ReMax's baseline: the (shaped) return of the greedy response to the same prompt.
        greedy_sampling = SamplingConfig(max_new_tokens=task.horizon, eos_id=task.eos_id, temperature=config.temperature, greedy=True)
        greedy = generate(graphdef, params, unique_prompts, unique_lens, key, greedy_sampling)
        _, greedy_shaped, _ = score_responses(greedy, task, graphdef, ref_params, config, reward_fn, kl_coef)
        baseline = {
            "baseline_rewards": jnp.repeat(greedy_shaped, config.group_size, axis=0),
            "baseline_mask": jnp.repeat(greedy.response_mask, config.group_size, axis=0),
        }
    values = None
    if critic is not None:
        values = critic_values(*critic, out.tokens, out.prompt_lens, task.horizon)
        batch["old_values"] = values
        batch["returns"] = gae_returns(shaped, mask, values=values, gamma=config.gamma, lam=config.lam)
    batch["advantages"] = advantage_fn(config.advantage, config.advantage_options)(
        shaped, mask, group_ids=group_ids, values=values, gamma=config.gamma, lam=config.lam, **baseline
    )
    kl = jnp.sum(jnp.where(mask, kl_terms(out.log_probs, ref_log_probs, "k1"), 0.0), axis=1)
    metrics = {
        "reward": jnp.mean(jnp.sum(jnp.where(mask, rewards, 0.0), axis=1)),
        # NaN/inf rewards on valid steps (check_rewards cannot read traced values): the update
        # then fails, and check_update_metrics says why.
        "nonfinite_rewards": jnp.sum(mask & ~jnp.isfinite(rewards)),
        "kl_to_reference": jnp.mean(kl),
        "response_length": jnp.mean(out.response_lens.astype(jnp.float32)),
        # Responses that hit max_new_tokens without EOS: cut there, and counted here.
        "truncated_fraction": jnp.mean(out.truncated.astype(jnp.float32)),
        "entropy_proxy": -masked_mean(out.log_probs, mask),
    }
    return batch, metrics


def make_minibatch_update(loss_fn, optimizer, config: RLConfig, accumulation_steps: int = 1) -> Callable:
    """``train_on_batch(state, batch, key) -> (state, metrics)``: ``config.epochs`` passes over
    the sampled batch, each in a fresh random order (from ``key``) cut into ``config.minibatches``
    minibatches, one ``jirl.train.step`` update each, as one ``lax.scan``.

    After a non-finite update (loss, gradient or update NaN/inf; the step itself skips it) no
    later update of the batch is applied either: the state stays the last good one and
    ``metrics["nonfinite"]`` is True. Other metrics are the mean over the updates."""
    step = update_fn(loss_fn, optimizer, accumulation_steps)

    def train_on_batch(state, batch, key):
        rows = jax.tree_util.tree_leaves(batch)[0].shape[0]
        if rows % config.minibatches:
            raise ConfigError(f"minibatches={config.minibatches} does not divide the {rows} sampled rows")
        size = rows // config.minibatches
        orders = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), rows))(jnp.arange(config.epochs))

        def body(carry, index):
            state, failed = carry
            stepped, metrics = step(state, jax.tree_util.tree_map(lambda v: v[index], batch))
            state = jax.tree_util.tree_map(lambda old, new: jnp.where(failed, old, new), state, stepped)
            return (state, failed | metrics["nonfinite"]), metrics

        (state, failed), metrics = jax.lax.scan(body, (state, jnp.zeros((), bool)), orders.reshape(-1, size))
        metrics = {k: jnp.mean(v, axis=0) for k, v in metrics.items() if k != "nonfinite"}
        return state, {**metrics, "nonfinite": failed}

    return train_on_batch


def make_rl_update(
    task, graphdef, optimizer, config: RLConfig, *, reward_fn=None, critic_graphdef=None, accumulation_steps: int = 1,
    host_reward: bool = False,
) -> Callable:
    """One RL iteration as a pure function ``update(state, ref_params, key, reward_fn=None) ->
    (state, metrics)``: ``collect`` a batch, then ``make_minibatch_update``'s epochs x
    minibatches of the policy loss (``rl_loss``).

    ``state`` is a ``TrainState`` (the KL coefficient fixed at ``kl_coef``) or an ``RLState``
    (``init_rl_state``), whose controller state sets the coefficient of this iteration and is
    then updated from its KL (``kl_controller``; metric ``kl_coef``). A moving controller
    needs the ``RLState``.

    ``reward_fn(tokens, prompt_lens, response_lens) -> [B, T]`` defaults to the task's gold
    reward; passing one to ``update`` itself lets a caller build it inside its own trace from
    traced arrays (a discriminator's current parameters, one ensemble member per vmapped
    row). With ``critic_graphdef`` the state's parameters hold ``policy`` and ``critic``.
    Metrics (device arrays): the sampling metrics of ``collect`` and ``update/<name>`` of the
    updates (``update/nonfinite``: an update was NaN/inf and the state is the last good one).
    ``jax.jit(update)`` compiles it; ``jax.vmap(update)`` runs seeds side by side.

    ``host_reward=True`` is for a reward computed on the host (text detokenised for another
    model's tokenizer, a Python verifier): ``update`` is then not jittable; it collects
    eagerly (the sampler is compiled on its own) and runs the compiled minibatch updates."""
    config.validate()  # minibatches divide the samples; the loss's and estimator's options exist
    train_on_batch = make_minibatch_update(rl_loss(graphdef, config, task.horizon, critic_graphdef), optimizer, config, accumulation_steps)
    if host_reward:
        train_on_batch = jax.jit(train_on_batch, donate_argnums=0)
    default_reward_fn = reward_fn

    controller = config.controller()

    def update(state, ref_params, key, reward_fn=None):
        moving = isinstance(state, RLState)
        if not moving and config.kl_controller != "fixed":
            raise ConfigError(
                f"kl_controller={config.kl_controller!r} carries its coefficient in the update state: pass "
                "init_rl_state(train_state, config) instead of a bare TrainState"
            )
        train_state = state.train if moving else state
        kl_coef = state.kl.coef if moving else None
        collect_key, shuffle_key = jax.random.split(key)
        params, critic = train_state.full_params, None
        if critic_graphdef is not None:
            critic, params = (critic_graphdef, params["critic"]), params["policy"]
        batch, metrics = collect(collect_key, task, graphdef, params, ref_params, config, reward_fn or default_reward_fn, critic, kl_coef)
        train_state, update_metrics = train_on_batch(train_state, batch, shuffle_key)
        metrics = {**metrics, **{f"update/{k}": v for k, v in update_metrics.items()}}
        if not moving:
            return train_state, metrics
        # The coefficient for the next iteration, from this batch's KL (Ziegler et al. 2019:
        # n_steps counts the samples seen).
        metrics["kl_coef"] = state.kl.coef
        kl_state = controller.update(state.kl, metrics["kl_to_reference"], n_steps=batch["mask"].shape[0])
        return RLState(train=train_state, kl=kl_state), metrics

    return update


def check_update_metrics(metrics: dict, where: str = "RL") -> None:
    """Raise ``NonFiniteLossError`` if any row of (possibly seed-stacked) update metrics saw a
    non-finite reward, RL update (``update/nonfinite``) or update of a model learned alongside
    (``online/nonfinite``, ``jirl.credit.online``). Reads the flags from the device."""
    bad_rewards = np.asarray(metrics.get("nonfinite_rewards", 0))
    if np.any(bad_rewards):
        raise NonFiniteLossError(
            f"{where}: the reward function returned NaN/inf on {int(np.sum(bad_rewards))} valid response step(s); "
            "the update was not applied. Check the reward model or verifier output (jirl.rl.advantages.check_rewards "
            "names the samples when called on concrete rewards)."
        )
    for part, what in (("update", "the RL loss"), ("online", "the online model's loss")):
        if np.any(np.asarray(metrics.get(f"{part}/nonfinite", False))):
            shown = ", ".join(
                f"{k}={float(v):.4g}" for k, v in metrics.items() if k.startswith(f"{part}/") and np.ndim(v) == 0 and k != f"{part}/nonfinite"
            )
            raise NonFiniteLossError(
                f"{where}: {what}, its gradient or update became NaN/inf ({part} metrics: {shown or 'per seed'}); the update was "
                "not applied. Lower the learning rate or the temperature, or check the rewards."
            )


def make_rl_iteration(
    task, graphdef, optimizer, config: RLConfig, *, reward_fn=None, critic_graphdef=None, accumulation_steps: int = 1,
    host_reward: bool = False,
) -> Callable:
    """``iteration(state, ref_params, key) -> (state, metrics)``: ``make_rl_update`` compiled
    (the state donated), its metrics fetched as floats. A NaN/inf reward or update raises
    ``NonFiniteLossError``; nothing of the failed update was applied, and the error's
    ``state`` attribute holds the last good state (the one passed in was donated)."""
    update = make_rl_update(
        task, graphdef, optimizer, config, reward_fn=reward_fn, critic_graphdef=critic_graphdef,
        accumulation_steps=accumulation_steps, host_reward=host_reward,
    )
    if not host_reward:
        update = jax.jit(update, donate_argnums=0)

    def iteration(state, ref_params, key):
        state, metrics = update(state, ref_params, key)
        metrics = jax.device_get(metrics)
        try:
            check_update_metrics(metrics)
        except NonFiniteLossError as error:
            error.state = state
            raise
        return state, {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}

    return iteration
