"""IRL methods by name: demonstrations in, a learned reward out (DESIGN.md contract 10).

Each method is ``method(context, settings) -> LearnedReward``: it learns a reward from the
expert's demonstrations and says how to optimise it so that the RL target is the expert
(which reference policy, which KL coefficient). ``jirl run quickstart --set irl=NAME`` and
``jirl run irl_recovery`` pick methods from ``IRL_METHODS``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jirl.config import JirlError, at_least, finite, non_negative, positive, registered
from jirl.irl.afd import AfDConfig
from jirl.irl.spin import SPINConfig
from jirl.mdp import oracle
from jirl.mdp.demonstrations import Demonstrations, from_policy
from jirl.registry import Registry
from jirl.rewards.models import reward_model_rewards
from jirl.rl.loop import RLConfig


@dataclasses.dataclass
class IRLContext:
    """What every method may use: the task, the expert's demonstrations, the policy's graphdef
    and config, the initial and SFT parameters, and a PRNG key."""

    task: Any
    demos: Demonstrations
    graphdef: Any
    model_config: Any
    init_params: Any
    sft_params: Any
    key: jax.Array
    spec: Any = None  # the oracle's TreeSpec when the task is enumerable (rewards are then also read as trees)


@dataclasses.dataclass
class LearnedReward:
    """What an IRL method returns: the learned reward as a function of its parameters,
    ``reward_model(reward_params) -> reward_fn`` with ``reward_fn(tokens, prompt_lens,
    response_lens) -> [B, horizon]`` for the RL loop (``reward_fn`` applies it), the
    ``reference`` parameters and KL coefficient ``beta`` at which the KL-regularised optimum of
    that reward is the expert (if the reward is exact), the reward on the oracle's tree
    (``tree``, when the task is enumerable), the policy trained along the way (``policy``; GAIL,
    AIRL) and training metrics (``info``).

    ``reward_model`` depends on the method's settings only, never on the seed, so the rewards
    of several seeds run side by side as one ``reward_model`` over their stacked
    ``reward_params`` (``jax.vmap``)."""

    reward_model: Callable  # reward_params -> the RL loop's reward_fn(tokens, prompt_lens, response_lens) -> [B, horizon]
    reward_params: Any  # the learned reward's parameters (a network's, or a reward tree)
    reference: Any  # parameters of the RL reference policy
    beta: float  # the KL coefficient at which the RL optimum is the expert, if the reward is exact
    tree: list | None = None  # the reward on the oracle's tree, where the task is enumerable
    policy: Any = None  # the policy the method trained along the way, if any (GAIL, AIRL)
    info: dict = dataclasses.field(default_factory=dict)  # training metrics worth reporting

    @property
    def reward_fn(self) -> Callable:
        """The RL loop's reward: ``reward_model`` at this method's ``reward_params``."""
        return self.reward_model(self.reward_params)


IRL_METHODS: Registry[Callable[[IRLContext, Any], LearnedReward]] = Registry("IRL method")


def check_demonstrations(demos: Demonstrations, vocab_size: int, context_length: int) -> None:
    """Refuse demonstrations the policy cannot learn from, naming the problem and the fix."""
    tokens = np.asarray(demos.tokens)
    if tokens.shape[0] == 0:
        raise JirlError("the demonstration set is empty; IRL needs at least one demonstration")
    if tokens.max() >= vocab_size or tokens.min() < 0:
        raise JirlError(
            f"demonstrations hold token ids up to {int(tokens.max())} but the policy's vocabulary has {vocab_size} ids: "
            "they were tokenised with another tokenizer. Re-tokenise them with the policy's tokenizer."
        )
    lengths = np.asarray(demos.prompt_lens) + np.asarray(demos.response_lens)
    if tokens.shape[1] > context_length or lengths.max() > context_length:
        raise JirlError(
            f"demonstrations are up to {max(tokens.shape[1], int(lengths.max()))} tokens long but the policy's context "
            f"is {context_length}; truncate them or build the policy with max_len >= {tokens.shape[1]}"
        )


@IRL_METHODS.register("afd")
def afd_method(context: IRLContext, settings) -> LearnedReward:
    """AfD (``jirl.irl.afd``): a BT discriminator of positives vs negatives as the reward; RL
    from the negatives' policy at beta = 1 targets the positives' policy."""
    from jirl.irl.afd import discriminator_pairs, sequence_reward_tree, train_discriminator, variant_sources

    positive, negative = variant_sources(settings.variant)
    keys = jax.random.split(context.key, 4)
    num = int(np.asarray(context.demos.tokens).shape[0])
    policies = {"init": context.init_params, "sft": context.sft_params}
    samples = {"demo": context.demos}
    for i, name in enumerate(sorted({positive, negative} - {"demo"})):
        samples[name] = from_policy(context.task, keys[i], num, context.graphdef, policies[name])
    pairs = discriminator_pairs(keys[2], samples[positive], samples[negative])
    graphdef, params, metrics = train_discriminator(keys[3], pairs, context.model_config, settings)
    task = context.task
    tree = sequence_reward_tree(context.spec, graphdef, params) if context.spec is not None else None
    return LearnedReward(
        reward_model=lambda reward_params: reward_model_rewards(graphdef, reward_params, task.vocab_size, task.horizon),
        reward_params=params,
        reference=policies[negative],
        beta=1.0,
        tree=tree,
        info={"discriminator_accuracy": metrics["accuracy"], "pairs": len(pairs["chosen"])},
    )


@dataclasses.dataclass
class MaxEntConfig:
    """Settings of the ``maxent`` method: gradient ``steps`` and ``learning_rate`` of the exact
    MaxEnt fit, and the ``l2`` penalty that keeps the rewards of never-demonstrated actions
    finite."""

    steps: Annotated[int, at_least(1)] = 500
    learning_rate: Annotated[float, finite, positive] = 0.1
    l2: Annotated[float, finite, non_negative] = 1e-3  # keeps rewards of never-demonstrated actions finite


def tree_reward_fn(spec, reward_tree) -> Callable:
    """The RL loop's reward function reading a reward tree along sampled responses."""
    return jax.jit(lambda tokens, prompt_lens, response_lens: oracle.tree_values(spec, reward_tree, tokens, prompt_lens, response_lens))


@IRL_METHODS.register("maxent")
def maxent_method(context: IRLContext, settings: MaxEntConfig) -> LearnedReward:
    """Exact maximum-causal-entropy IRL (``jirl.irl.maxent``) with a tabular reward, fitted to
    the demonstrations' empirical occupancy with the initial policy as the soft-optimal
    policy's reference at beta = 1 (so RL from it at beta = 1 targets the expert)."""
    from jirl.irl.maxent import empirical_occupancy, maxent_irl, tabular_reward
    from jirl.models.scoring import logits_fn

    spec = context.spec
    if spec is None:
        raise JirlError("maxent IRL solves the task exactly and needs an enumerable task (one with a tree spec)")
    demos = context.demos
    occupancy = empirical_occupancy(spec, demos.tokens, demos.prompt_lens, demos.response_lens)
    init_tree = oracle.log_probs_from_logits_fn(spec, logits_fn(context.graphdef, context.init_params))
    theta0 = [jnp.zeros(spec.tree_shape(t)) for t in range(spec.horizon)]
    result = maxent_irl(spec, occupancy, init_tree, 1.0, tabular_reward, theta0, settings.steps, settings.learning_rate, settings.l2)
    return LearnedReward(
        reward_model=lambda reward_tree: tree_reward_fn(spec, reward_tree), reward_params=result.rewards,
        reference=context.init_params, beta=1.0, tree=result.rewards,
        info={"log_likelihood": float(result.history["log_likelihood"][-1])},
    )


@IRL_METHODS.register("spin")
def spin_method(context: IRLContext, settings) -> LearnedReward:
    """SPIN from the SFT policy (``jirl.irl.spin``). Its reward is the last iteration's implicit
    reward beta log pi_K/pi_{K-1}, whose exact optimum at that reference and beta is pi_K itself."""
    from jirl.irl.spin import spin
    from jirl.models.scoring import logits_fn
    from jirl.preference.implicit import implicit_reward_fn

    final, previous = spin(context.key, context.task, context.graphdef, context.sft_params, context.demos, settings)
    task, tree = context.task, None
    if context.spec is not None:
        policy_tree = lambda p: oracle.log_probs_from_logits_fn(context.spec, logits_fn(context.graphdef, p))  # noqa: E731
        tree = [settings.beta * (a - b) for a, b in zip(policy_tree(final), policy_tree(previous))]
    return LearnedReward(
        reward_model=lambda pair: implicit_reward_fn(context.graphdef, pair[0], pair[1], task.horizon, settings.beta),
        reward_params=(final, previous),
        reference=previous, beta=settings.beta, tree=tree, info={"iterations": settings.iterations},
    )


@dataclasses.dataclass
class IQLearnConfig:
    """Settings of the ``iq_learn`` method: the chi^2 regulariser strength ``alpha`` (the
    optimum's KL to the expert shrinks about as 1/alpha^2) and minibatch Adam (``steps``,
    ``batch_size``, ``learning_rate``)."""

    alpha: Annotated[float, positive] = 8.0  # chi^2 strength; the optimum's KL to the expert shrinks ~1/alpha^2 (0.14 at 0.5)
    steps: Annotated[int, at_least(1)] = 500
    batch_size: Annotated[int, at_least(1)] = 256
    learning_rate: Annotated[float, finite, positive] = 5e-3


def train_on_demonstrations(key, graphdef, params, demos, loss_fn, steps: int, batch_size: int, learning_rate: float):
    """Minibatch Adam (cosine-decayed) of ``loss_fn`` on demonstration batches
    (``tokens``, ``prompt_len``, ``response_len``); returns the trained parameters."""
    import optax

    from jirl.train.loop import train_on_arrays
    from jirl.train.step import init_train_state, make_update_step

    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.1))
    state = init_train_state(params, optimizer, key)
    step = make_update_step(loss_fn, optimizer)
    batch = {"tokens": demos.tokens, "prompt_len": demos.prompt_lens, "response_len": demos.response_lens}
    state, _ = train_on_arrays(state, step, batch, steps, batch_size, int(jax.random.randint(key, (), 0, 2**30)))
    return state.full_params


@IRL_METHODS.register("iq_learn")
def iq_learn_method(context: IRLContext, settings: IQLearnConfig) -> LearnedReward:
    """IQ-Learn (``jirl.irl.iq_learn``): the policy's logits are a soft Q-function fitted to the
    demonstrations; its implicit reward Q(s,a) - V(s') has softmax(Q) as its exact soft-optimal
    policy over a uniform reference at beta = 1."""
    from jirl.irl.adversarial import uniform_reference
    from jirl.irl.iq_learn import implicit_reward_tree, iq_learn_loss, iq_reward_fn, q_tree_from_logits_fn
    from jirl.models.scoring import logits_fn

    loss_fn = iq_learn_loss(context.graphdef, alpha=settings.alpha)
    params = train_on_demonstrations(
        context.key, context.graphdef, context.init_params, context.demos, loss_fn,
        settings.steps, settings.batch_size, settings.learning_rate,
    )
    tree = None
    if context.spec is not None:
        tree = implicit_reward_tree(context.spec, q_tree_from_logits_fn(context.spec, logits_fn(context.graphdef, params)))
    return LearnedReward(
        reward_model=lambda q_params: iq_reward_fn(context.graphdef, q_params, context.task.horizon), reward_params=params,
        reference=uniform_reference(context.graphdef, context.init_params), beta=1.0, tree=tree,
        info={"alpha": settings.alpha},
    )


@dataclasses.dataclass
class AdversarialSettings:
    """Settings of the ``airl`` and ``gail`` methods: alternating ``iterations``, the AIRL
    discriminator loss ``level`` (``"sequence"`` or ``"token"``; GAIL always uses ``"token"``),
    ``disc_steps`` discriminator updates per iteration, the two learning rates and the policy's
    RL iteration ``rl`` (AIRL fixes its ``kl_coef`` to 1: only then is its RL objective AIRL's)."""

    iterations: Annotated[int, at_least(1)] = 200
    level: Annotated[str, registered(('sequence', 'token'))] = "sequence"  # discriminator loss per response ("sequence") or per token
    disc_steps: Annotated[int, at_least(1)] = 10
    policy_learning_rate: Annotated[float, finite, positive] = 3e-3
    disc_learning_rate: Annotated[float, finite, positive] = 1e-3
    rl: RLConfig = dataclasses.field(default_factory=lambda: RLConfig(prompts_per_iteration=16, group_size=8))


def run_adversarial(context: IRLContext, settings: AdversarialSettings, method: str):
    """AIRL or GAIL (``jirl.irl.adversarial``) from the initial policy: alternating
    discriminator and RLOO updates. Returns (discriminator graphdef, params, policy params, reference)."""
    import optax
    from flax import nnx

    from jirl.irl import adversarial as adv
    from jirl.models.heads import TokenRewardModel

    keys = jax.random.split(context.key, 3)
    if method == "airl":
        reference = adv.uniform_reference(context.graphdef, context.init_params)
        disc = adv.AIRLDiscriminator(context.model_config, rngs=nnx.Rngs(int(jax.random.randint(keys[0], (), 0, 2**30))))
        rl = dataclasses.replace(settings.rl, kl_coef=1.0)
        config = adv.AdversarialConfig(method="airl", level=settings.level, disc_steps=settings.disc_steps)
    else:
        reference = context.init_params
        disc = TokenRewardModel(context.model_config, rngs=nnx.Rngs(int(jax.random.randint(keys[0], (), 0, 2**30))))
        rl = settings.rl
        config = adv.AdversarialConfig(method="gail", level="token", gail_reward="logit", disc_steps=settings.disc_steps)
    disc_graphdef, disc_params = nnx.split(disc)
    setup, policy_state, disc_state, buffer = adv.init_adversarial(
        keys[1], context.task, context.demos, context.graphdef, context.init_params, reference, disc_graphdef, disc_params,
        rl, config,
        optax.adam(optax.cosine_decay_schedule(settings.policy_learning_rate, settings.iterations, alpha=0.1)),
        optax.adam(optax.cosine_decay_schedule(settings.disc_learning_rate, settings.iterations * settings.disc_steps, alpha=0.1)),
    )
    for i in range(1, settings.iterations + 1):
        policy_state, disc_state, buffer, _ = adv.adversarial_iteration(jax.random.fold_in(keys[2], i), setup, policy_state, disc_state, buffer)
    return disc_graphdef, disc_state.full_params, policy_state.full_params, reference


@IRL_METHODS.register("airl")
def airl_method(context: IRLContext, settings: AdversarialSettings) -> LearnedReward:
    """AIRL (``jirl.irl.adversarial``): the disentangled reward g of the discriminator
    f = g + h(s') - h(s), whose optimum over a uniform reference at beta = 1 is the expert."""
    from jirl.irl.adversarial import airl_reward_trees, airl_rewards

    disc_graphdef, disc_params, policy, reference = run_adversarial(context, settings, "airl")
    tree = airl_reward_trees(context.spec, disc_graphdef, disc_params)["g"] if context.spec is not None else None
    return LearnedReward(
        reward_model=lambda params: airl_rewards(disc_graphdef, params, context.task.horizon, "g"), reward_params=disc_params,
        reference=reference, beta=1.0, tree=tree, policy=policy,
    )


@IRL_METHODS.register("gail")
def gail_method(context: IRLContext, settings: AdversarialSettings) -> LearnedReward:
    """GAIL (``jirl.irl.adversarial``): a token-level discriminator's logit as the reward. At
    the game's equilibrium the discriminator is uninformative, so GAIL's result is its policy,
    not a reward to re-optimise (``tree`` is None)."""
    from jirl.irl.adversarial import gail_rewards

    disc_graphdef, disc_params, policy, reference = run_adversarial(context, settings, "gail")
    return LearnedReward(
        reward_model=lambda params: gail_rewards(disc_graphdef, params, context.task.horizon, "logit"), reward_params=disc_params,
        reference=reference, beta=0.0, tree=None, policy=policy,
    )


@dataclasses.dataclass
class IRLSettings:
    """Every IRL method's settings, each under the method's registered name
    (``--set settings.afd.variant=init_demo``)."""

    afd: AfDConfig = dataclasses.field(default_factory=AfDConfig)
    maxent: MaxEntConfig = dataclasses.field(default_factory=MaxEntConfig)
    spin: SPINConfig = dataclasses.field(default_factory=SPINConfig)
    iq_learn: IQLearnConfig = dataclasses.field(default_factory=IQLearnConfig)
    airl: AdversarialSettings = dataclasses.field(default_factory=AdversarialSettings)
    gail: AdversarialSettings = dataclasses.field(
        default_factory=lambda: AdversarialSettings(iterations=100, level="token", disc_steps=2, disc_learning_rate=3e-3)
    )
