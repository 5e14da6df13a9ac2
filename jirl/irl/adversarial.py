"""Adversarial inverse RL at the token level: GAIL and AIRL.

Both train a discriminator D to tell expert tokens (label 1) from policy tokens (label 0) and
hand the policy a reward read off D; the RL loop (``jirl.rl.loop``) then improves the policy
against it, and the two alternate (``adversarial_iteration``).

Token MDP conventions (``jirl.models.scoring``): response step t is the token a_t at buffer slot
p + t; the state s_t is the buffer up to slot p + t - 1; s_{t+1} = s_t + a_t (deterministic);
the step with t = response_len - 1 (EOS, or the horizon) is terminal.

GAIL (Ho & Ermon 2016, "Generative adversarial imitation learning"). D(s,a) = sigmoid(l(s,a))
with l a free classifier logit: a ``TokenRewardModel`` read at slot p + t (per token), or a
``SequenceRewardModel`` (one logit per response). The discriminator minimises the Jensen-Shannon
GAN loss (binary cross-entropy, ``bce_terms``); the policy gets ``gail_rewards``.

AIRL (Fu, Luo & Levine 2018, "Learning robust rewards with adversarial inverse reinforcement
learning"). The discriminator has the special form

    D(s,a) = exp(f(s,a)) / (exp(f(s,a)) + pi(a|s)),   logit D = f(s,a) - log pi(a|s),      (A1)
    f(s,a) = g(s,a) + gamma h(s') - h(s),   h(terminal) = 0,                              (A2)

with pi the current policy (its log-probs are inputs, never differentiated). g is a
``TokenRewardModel`` read at slot p + t: a function of (s_t, a_t), equivalently of s_{t+1}
(a "state-only" reward on next states, which on the token tree is fully general). h is a
``ValueModel`` read at slot p + t - 1 (h(s_t)) and p + t (h(s_{t+1})). Both live in one module,
``AIRLDiscriminator`` (``params["g"]``, ``params["h"]``). With gamma = 1, (A2) telescopes along a
response: sum_t f_t = sum_t g_t - h(s_0).

Reference-relative AIRL (the LLM form; ``adversarial_iteration`` always uses it). An LLM
expert is modelled as pi_E ∝ pi_ref exp(R/beta) for a reference pi_ref, so (A1) is taken
relative to pi_ref:

    logit D = f(s,a) - [log pi(a|s) - log pi_ref(a|s)]                                    (A3)

(give ``ref_log_probs`` in the batch; without it (A3) is (A1)). Sequence-level optimum: the
discriminator over whole responses, logit = sum_t logit_t, is optimal (Fu et al., trajectory
form) when sum_t f_t = log pi_E(y|x)/pi_ref(y|x) + const, i.e. f = log(pi_E(a|s)/pi_ref(a|s)) up
to potential shaping, *whatever the policy pi* (a noise-contrastive estimate with pi as the
noise). For an expert pi_E ∝ pi_ref exp(R/beta) that is f = R/beta + shaping, and g recovers
r/beta up to shaping. The per-token (classic AIRL) discriminator reaches the same f only at
the equilibrium pi = pi_E: against a fixed pi it also absorbs log rho_E(s)/rho_pi(s).

The policy's AIRL reward is log D - log(1 - D) = logit D. Summed over a response with (A3),
F(x,y) = sum_t f_t,

    E_pi[sum_t f_t - (log pi - log pi_ref)] = E_pi[F] - KL(pi || pi_ref),

so the RL loop's KL-regularised objective with reward f, reference pi_ref and ``kl_coef = 1``
*is* the AIRL policy objective, and its optimum pi ∝ pi_ref exp(F) is pi_E at the discriminator's
optimum. ``airl_rewards`` therefore returns f (or the transferable g). For plain AIRL (A1)
(no reference) the policy objective E[sum_t f_t - log pi] is entropy-regularised RL; with the
uniform reference ``uniform_reference`` (log pi_ref = -log V) it equals KL-regularised RL at
beta = 1 with reward f + log V per token, not f: the per-token constant log V is not a shaping
(it pays per token, i.e. changes the preferred length), so use (A3) with ``ref_log_probs =
-log V`` and reward f, or pass ``token_bonus=log V`` to ``airl_rewards``.

Discriminator batch (``discriminator_batch``; expert and policy rows stacked, any order)::

    tokens        [B, W] int32  left-aligned prompt + response buffers
    prompt_len    [B]    int32
    mask          [B, H] bool   valid response steps (``response_mask(response_lens, H)``)
    label         [B]    float  1 = expert, 0 = policy
    log_probs     [B, H] float  AIRL only: log pi(a_t|s_t) under the *current* policy
    ref_log_probs [B, H] float  AIRL, optional: log pi_ref(a_t|s_t)
    weight        [B]    float  optional row weights (default 1), e.g. exact probabilities of
                                every response for the population objective on the oracle tree

Every entry is indexed by row, so the engine's micro-batching and sharding split it freely.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from jirl.irl.recovery import apply_potential_shaping, shaping_removed_token_correlation
from jirl.mdp import oracle
from jirl.mdp.best_of_n import complete_sequences
from jirl.mdp.demonstrations import Demonstrations, from_policy
from jirl.models.heads import SequenceRewardModel, TokenRewardModel, ValueModel
from jirl.models.scoring import gather_response, response_log_probs, response_mask
from jirl.models.transformer import Transformer, TransformerConfig
from jirl.rewards.models import terminal_rewards
from jirl.rl.loop import RLConfig, check_update_metrics, make_rl_update
from jirl.train.loop import NonFiniteLossError
from jirl.train.losses import OBJECTIVES, LossOutput
from jirl.train.step import TrainState, init_train_state, make_update_step

Level = Literal["token", "sequence"]


# ----------------------------------------------------------------------------------------------
# Discriminator models


class AIRLDiscriminator(nnx.Module):
    """AIRL's reward g (a ``TokenRewardModel``) and shaping potential h (a ``ValueModel``).

    ``__call__(tokens) -> (g_slots, h_slots)``, both ``[B, W]``: entry j of g is g of the token
    at slot j given the tokens before it; entry j of h is h of the state ending at slot j.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs, h_config: TransformerConfig | None = None):
        self.g = TokenRewardModel(config, rngs=rngs)
        self.h = ValueModel(h_config or config, rngs=rngs)

    def __call__(self, tokens):
        return self.g(tokens), self.h(tokens)


# ----------------------------------------------------------------------------------------------
# Pure pieces of the losses


def bce_terms(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Binary cross-entropy of D = sigmoid(logits) (Goodfellow et al. 2014; GAIL's
    Jensen-Shannon objective, Ho & Ermon 2016, eq. 17):

        l = -[y log D + (1 - y) log(1 - D)] = y softplus(-logit) + (1 - y) softplus(logit).
    """
    return labels * jax.nn.softplus(-logits) + (1.0 - labels) * jax.nn.softplus(logits)


def terminal_steps(mask: jax.Array) -> jax.Array:
    """``[B, H]`` bool, True at each response's last valid step (t = response_len - 1)."""
    last = jnp.sum(mask, axis=1) - 1
    return jnp.arange(mask.shape[1])[None, :] == last[:, None]


def disentangled_reward(g, h, h_next, terminal, gamma: float = 1.0) -> jax.Array:
    """AIRL's disentangled reward (Fu et al. 2018, eq. in Sec. 5):

        f(s,a) = g(s,a) + gamma h(s') - h(s),   h(s') = 0 when (s, a) is terminal.
    """
    return g + gamma * jnp.where(terminal, 0.0, h_next) - h


def airl_logits(f, log_probs, ref_log_probs=None) -> jax.Array:
    """Logit of AIRL's discriminator (Fu et al. 2018, eq. for D_theta), relative to pi_ref
    when given (module docstring, (A1)/(A3)):

        logit D = f - log pi(a|s)   [ + log pi_ref(a|s) ].

    The policy (and reference) log-probs are constants for the discriminator (stop-gradient).
    """
    log_ratio = log_probs if ref_log_probs is None else log_probs - ref_log_probs
    return f - jax.lax.stop_gradient(log_ratio)


def airl_terms(graphdef, params, tokens, prompt_lens, mask, gamma: float = 1.0) -> dict:
    """``g, h, h_next, f`` ``[B, H]`` of a split ``AIRLDiscriminator`` along response steps:
    g(s_t,a_t) at slot p+t, h(s_t) at slot p+t-1, h(s_{t+1}) at slot p+t (0 past a terminal)."""
    g_slots, h_slots = nnx.merge(graphdef, params)(tokens)
    return _airl_terms_from_slots(g_slots, h_slots, prompt_lens, mask, gamma)


def _airl_terms_from_slots(g_slots, h_slots, prompt_lens, mask, gamma):
    horizon = mask.shape[1]
    g = gather_response(g_slots, prompt_lens, horizon)
    h = gather_response(h_slots, prompt_lens, horizon, shift=-1)
    h_next = gather_response(h_slots, prompt_lens, horizon)
    f = disentangled_reward(g, h, h_next, terminal_steps(mask), gamma)
    return {"g": g, "h": h, "h_next": h_next, "f": f}


# ----------------------------------------------------------------------------------------------
# Gradient penalty on the input embeddings


class _ShiftedEmbed(nnx.Module):
    """A token embedding plus an additive input perturbation ``shift [B, W, d]`` (so gradients
    with respect to the embedded inputs are gradients with respect to ``shift`` at 0)."""

    def __init__(self, embed, shift):
        self.embed = embed
        self.shift = shift

    def __call__(self, tokens):
        return self.embed(tokens) + self.shift.astype(self.embed.embedding.dtype)

    def attend(self, hidden):
        return self.embed.attend(hidden)


def _backbones(model) -> list:
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, Transformer)]


def input_gradient_sq_norms(row_scores: Callable, graphdef, params, tokens) -> jax.Array:
    """``[B]``: ||d score_b / d e_b||^2, e_b the embedded inputs of row b in every transformer
    backbone of the model (AIRL: g's and h's, concatenated). ``row_scores(model) -> [B]`` runs a
    merged model; rows must not interact (true for these models), so one backward pass of the
    summed score gives every row's gradient."""
    shapes = [tokens.shape + (b.config.d_model,) for b in _backbones(nnx.merge(graphdef, params))]

    def total(shifts):
        model = nnx.merge(graphdef, params)
        for backbone, shift in zip(_backbones(model), shifts):
            backbone.embed = _ShiftedEmbed(backbone.embed, shift)
        return jnp.sum(row_scores(model))

    grads = jax.grad(total)(tuple(jnp.zeros(s, jnp.float32) for s in shapes))
    return sum(jnp.sum(g.astype(jnp.float32) ** 2, axis=(1, 2)) for g in grads)


# ----------------------------------------------------------------------------------------------
# Losses


def _airl_row_logits(gamma):
    def logits_of(model, batch):
        g_slots, h_slots = model(batch["tokens"])
        f = _airl_terms_from_slots(g_slots, h_slots, batch["prompt_len"], batch["mask"], gamma)["f"]
        return airl_logits(f, batch["log_probs"], batch.get("ref_log_probs"))

    return logits_of


def _gail_logits(model, batch):
    if isinstance(model, SequenceRewardModel):
        return model(batch["tokens"], batch["prompt_len"] + jnp.sum(batch["mask"], axis=1))
    return gather_response(model(batch["tokens"]), batch["prompt_len"], batch["mask"].shape[1])


def _per_row_scores(logits, mask):
    """A row's total logit: sum_t m_t logit_t (per-token logits) or the row's logit."""
    return jnp.sum(jnp.where(mask, logits, 0.0), axis=1) if logits.ndim == 2 else logits


def discriminator_loss(graphdef, logits_of: Callable, level: Level = "token", grad_penalty: float = 0.0):
    """``loss_fn(params, batch, key)`` of a discriminator whose ``logits_of(model, batch)`` gives
    per-token ``[B, H]`` or per-sequence ``[B]`` logits.

    level="token": sum over valid tokens of ``bce_terms(logit_bt, label_b)``, count = tokens.
    level="sequence" (or per-sequence logits): the row's logit is sum_t m_t logit_t (the
    trajectory-level discriminator of Fu et al. 2018, App. A), BCE per row, count = rows.
    With row weights w_b (``batch["weight"]``) each row's terms and count are scaled by w_b.

    ``grad_penalty = c > 0`` adds an R1 penalty (Mescheder et al. 2018, "Which training methods
    for GANs actually converge?"; a zero-centred relative of the WGAN-GP penalty of Gulrajani et
    al. 2017) on the expert rows, taken at the embedded inputs since tokens are discrete:

        total += (c / 2) sum_{b: expert} || d (sum_t m_bt logit_bt) / d e_b ||^2,

    e_b the input embeddings of row b (``input_gradient_sq_norms``); it is divided by the same
    count as the BCE. The penalty smooths D around the expert data and keeps its logits from
    saturating. Metrics: token- (or row-) level accuracy on each class.
    """

    def loss_fn(params, batch, key):
        del key
        mask, labels = batch["mask"], batch["label"].astype(jnp.float32)
        row_weights = batch.get("weight", jnp.ones_like(labels)).astype(jnp.float32)
        logits = logits_of(nnx.merge(graphdef, params), batch)
        if logits.ndim == 2 and level == "token":
            weights, row_labels = mask * row_weights[:, None], labels[:, None]
        else:
            logits = _per_row_scores(logits, mask)
            weights, row_labels = row_weights, labels
        terms = bce_terms(logits, row_labels)
        total = jnp.sum(weights * terms)
        if grad_penalty:
            norms = input_gradient_sq_norms(lambda m: _per_row_scores(logits_of(m, batch), mask), graphdef, params, batch["tokens"])
            total = total + 0.5 * grad_penalty * jnp.sum(row_weights * labels * norms)
        correct = ((logits > 0) == (row_labels > 0.5)).astype(jnp.float32)
        expert_w, policy_w = weights * row_labels, weights * (1.0 - row_labels)
        metrics = {
            "expert_accuracy": jnp.sum(expert_w * correct) / jnp.maximum(jnp.sum(expert_w), 1.0),
            "policy_accuracy": jnp.sum(policy_w * correct) / jnp.maximum(jnp.sum(policy_w), 1.0),
        }
        return LossOutput(total=total, count=jnp.sum(weights)), metrics

    return loss_fn


@OBJECTIVES.register("airl")
def airl_loss(graphdef, gamma: float = 1.0, level: Level = "token", grad_penalty: float = 0.0):
    """AIRL discriminator objective (Fu et al. 2018): BCE of D with logit (A3),
    f - (log pi - log pi_ref), f = g + gamma h(s') - h(s); see ``discriminator_loss``.
    ``graphdef`` is a split ``AIRLDiscriminator``; the batch needs ``log_probs``."""
    return discriminator_loss(graphdef, _airl_row_logits(gamma), level, grad_penalty)


@OBJECTIVES.register("gail")
def gail_loss(graphdef, level: Level = "token", grad_penalty: float = 0.0):
    """GAIL discriminator objective (Ho & Ermon 2016, eq. 17): BCE of D = sigmoid(l), with l a
    ``TokenRewardModel``'s per-token logit or a ``SequenceRewardModel``'s per-response logit
    (the model type picks which); see ``discriminator_loss``."""
    return discriminator_loss(graphdef, _gail_logits, level, grad_penalty)


# ----------------------------------------------------------------------------------------------
# Rewards for the policy (the RL loop's reward_fn(tokens, prompt_lens, response_lens) -> [B, H])


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _airl_reward_terms(graphdef, params, tokens, prompt_lens, response_lens, horizon, gamma):
    return airl_terms(graphdef, params, tokens, prompt_lens, response_mask(response_lens, horizon), gamma)


def airl_rewards(graphdef, params, horizon: int, kind: Literal["f", "g"] = "f", gamma: float = 1.0, token_bonus: float = 0.0):
    """The RL loop's reward function from a split ``AIRLDiscriminator``: per-token f (the
    shaped reward whose KL-regularised optimum at ``kl_coef = 1`` against the discriminator's
    reference is AIRL's policy objective, module docstring) or g (the disentangled,
    transferable reward), plus ``token_bonus`` per token (log V turns a plain-AIRL (A1) f into
    the reward for KL-regularised RL against the uniform reference). 0 past each response."""

    def reward_fn(tokens, prompt_lens, response_lens):
        terms = _airl_reward_terms(graphdef, params, tokens, prompt_lens, response_lens, horizon, gamma)
        return jnp.where(response_mask(response_lens, horizon), terms[kind] + token_bonus, 0.0)

    return reward_fn


GAIL_REWARD_FORMS = {
    "softplus": lambda logit: jax.nn.softplus(logit),  # -log(1 - D) >= 0: a survival bonus
    "log_d": lambda logit: -jax.nn.softplus(-logit),  # log D <= 0: a per-token cost (favours EOS)
    "logit": lambda logit: logit,  # log D - log(1 - D): the log density ratio, no sign bias
}


@functools.partial(jax.jit, static_argnums=(0, 5))
def _gail_step_logits(graphdef, params, tokens, prompt_lens, response_lens, horizon):
    mask = response_mask(response_lens, horizon)
    return _gail_logits(nnx.merge(graphdef, params), {"tokens": tokens, "prompt_len": prompt_lens, "mask": mask})


def gail_rewards(graphdef, params, horizon: int, form: str = "softplus"):
    """The RL loop's reward function from a split GAIL discriminator (Ho & Ermon 2016 give the
    policy the cost log D(s,a) with D the *policy*-class probability; with D = P(expert) here
    the matching reward is -log(1 - D), form "softplus"). Per-token for a
    ``TokenRewardModel``, at the last step for a ``SequenceRewardModel``.

    forms (``GAIL_REWARD_FORMS``): "softplus" -log(1-D) > 0 (biased towards long responses),
    "log_d" log D < 0 (biased towards short ones), "logit" log D - log(1-D) (unbiased; AIRL's
    reward for a free-form D). 0 past each response."""
    transform = GAIL_REWARD_FORMS[form]

    def reward_fn(tokens, prompt_lens, response_lens):
        logits = transform(_gail_step_logits(graphdef, params, tokens, prompt_lens, response_lens, horizon))
        if logits.ndim == 1:
            return terminal_rewards(logits, response_lens, horizon)
        return jnp.where(response_mask(response_lens, horizon), logits, 0.0)

    return reward_fn


def uniform_reference(graphdef, params):
    """Parameters of the policy ``(graphdef, params)`` with an exactly uniform next-token
    distribution: the final norm's scale (and bias) are zeroed, so the final hidden states and
    hence the logits (tied embedding or bias-free LM head) are exactly 0. Works for GPT-2
    (LayerNorm) and Llama (RMSNorm) configs; raises if the logits are not 0."""
    zero_final_norm = lambda path, x: jnp.zeros_like(x) if path[0] == jax.tree_util.DictKey("final_norm") else jnp.copy(x)
    uniform = jax.tree_util.tree_map_with_path(zero_final_norm, params)
    logits = nnx.merge(graphdef, uniform)(jnp.zeros((1, 1), jnp.int32)).logits
    if not bool(jnp.all(logits == 0)):
        raise ValueError("zeroing the final norm did not give zero logits (an LM-head bias?); cannot build a uniform reference")
    return uniform


# ----------------------------------------------------------------------------------------------
# Reading a learned reward on the oracle's tree


def token_reward_tree(spec: oracle.TreeSpec, reward_at_slots_fn: Callable, batch_size: int = 4096) -> oracle.Tree:
    """Reward tree r(s,a) ``[P, C**t, V]`` of a per-slot reward ``reward_at_slots_fn(tokens
    [N, W]) -> [N, W]`` (entry j = reward of the token at slot j), read at slot p + t of every
    (x, s, a) buffer of the tree."""

    def step_reward(tokens, prompt_lens, t, terminal):
        slots = reward_at_slots_fn(jnp.asarray(tokens))
        return slots[jnp.arange(slots.shape[0]), jnp.asarray(prompt_lens + t)]

    return oracle.rewards_from_step_fn(spec, step_reward, batch_size)


def state_value_tree(spec: oracle.TreeSpec, value_at_slots_fn: Callable) -> oracle.StateTree:
    """State tree h(s) ``[P, C**t]`` of a per-slot value ``value_at_slots_fn(tokens) -> [N, W]``
    (entry j = value of the state ending at slot j), read at slot p + t - 1 of each state."""
    values = []
    for t in range(spec.horizon):
        tokens = oracle.enumerate_state_tokens(spec, t)
        prompt_index = np.repeat(np.arange(spec.num_prompts), spec.num_states(t))
        slots = spec.prompt_lens[prompt_index] + t - 1
        per_slot = value_at_slots_fn(jnp.asarray(tokens))
        values.append(per_slot[np.arange(len(slots)), slots].reshape(spec.num_prompts, spec.num_states(t)))
    return values


@functools.partial(jax.jit, static_argnums=0)
def _airl_slots(graphdef, params, tokens):
    return nnx.merge(graphdef, params)(tokens)


def airl_reward_trees(spec: oracle.TreeSpec, graphdef, params, gamma: float = 1.0) -> dict:
    """AIRL's g and f as reward trees and h as a state tree, over the whole oracle tree:
    f = g + gamma [non-terminal] h(child) - h(s) = shaping of g by gamma h, minus (1 - gamma) h."""
    g = token_reward_tree(spec, lambda tokens: _airl_slots(graphdef, params, tokens)[0])
    h = state_value_tree(spec, lambda tokens: _airl_slots(graphdef, params, tokens)[1])
    shaped = apply_potential_shaping(spec, g, [gamma * v for v in h])
    f = [s - (1.0 - gamma) * v[..., None] for s, v in zip(shaped, h)]
    return {"g": g, "f": f, "h": h}


def recovery_report(spec, true_rewards, graphdef, params, expert_log_probs, gamma: float = 1.0) -> dict:
    """Shaping-removed per-token correlation (``jirl.irl.recovery``) of AIRL's g with the true
    reward tree, uniform over (s, a) and weighted by the expert's occupancy. (With gamma = 1, f
    is g shaped by h and has exactly the same correlations.)"""
    g = airl_reward_trees(spec, graphdef, params, gamma)["g"]
    return {
        "g_corr_uniform": float(shaping_removed_token_correlation(spec, g, true_rewards)),
        "g_corr_expert": float(shaping_removed_token_correlation(spec, g, true_rewards, log_probs=expert_log_probs)),
    }


# ----------------------------------------------------------------------------------------------
# Replay buffer of policy samples


@struct.dataclass
class ReplayBuffer:
    """Fixed-capacity FIFO ring of policy responses (pure: ``push`` returns a new buffer).

    Row i of ``tokens``/``prompt_lens``/``response_lens`` is valid for i < ``size``; ``head`` is
    the next slot to overwrite (the oldest row once full). A push of more than ``capacity`` rows
    keeps only its newest ``capacity``. ``sample`` draws rows uniformly with replacement.
    """

    tokens: jax.Array  # [capacity, W] int32
    prompt_lens: jax.Array  # [capacity] int32
    response_lens: jax.Array  # [capacity] int32
    size: jax.Array  # int32 scalar, rows filled
    head: jax.Array  # int32 scalar, next slot to write

    @classmethod
    def create(cls, capacity: int, width: int) -> ReplayBuffer:
        """An empty buffer (size 0) of ``capacity`` zero rows ``width`` tokens wide."""
        zeros = lambda *shape: jnp.zeros(shape, jnp.int32)
        return cls(zeros(capacity, width), zeros(capacity), zeros(capacity), zeros(), zeros())

    @property
    def capacity(self) -> int:
        """The number of rows the buffer holds when full."""
        return self.tokens.shape[0]

    def push(self, tokens, prompt_lens, response_lens) -> ReplayBuffer:
        """A new buffer with the rows ``tokens [n, W]``, ``prompt_lens [n]``, ``response_lens
        [n]`` written at ``head`` onwards (overwriting the oldest rows once full); of more than
        ``capacity`` rows only the newest ``capacity`` are kept."""
        tokens, prompt_lens, response_lens = tokens[-self.capacity :], prompt_lens[-self.capacity :], response_lens[-self.capacity :]
        num = tokens.shape[0]
        slots = (self.head + jnp.arange(num)) % self.capacity
        return self.replace(
            tokens=self.tokens.at[slots].set(tokens.astype(jnp.int32)),
            prompt_lens=self.prompt_lens.at[slots].set(prompt_lens.astype(jnp.int32)),
            response_lens=self.response_lens.at[slots].set(response_lens.astype(jnp.int32)),
            size=jnp.minimum(self.size + num, self.capacity),
            head=(self.head + num) % self.capacity,
        )

    def contents(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The valid rows, oldest first."""
        order = (self.head - self.size + jnp.arange(int(self.size))) % self.capacity
        return self.tokens[order], self.prompt_lens[order], self.response_lens[order]

    def sample(self, key, num: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``num`` valid rows drawn uniformly with replacement: ``(tokens [num, W], prompt_lens
        [num], response_lens [num])``. Raises ValueError on an empty buffer."""
        if int(self.size) == 0:
            raise ValueError("cannot sample from an empty replay buffer; push policy samples first")
        rows = jax.random.randint(key, (num,), 0, self.size)
        return self.tokens[rows], self.prompt_lens[rows], self.response_lens[rows]


# ----------------------------------------------------------------------------------------------
# The adversarial loop

_score = jax.jit(response_log_probs, static_argnums=(0, 4))


def discriminator_batch(expert, policy, horizon: int, scorer=None) -> dict:
    """Stack ``expert`` and ``policy`` rows, each ``(tokens, prompt_lens, response_lens)``, into
    the discriminator batch (module docstring). ``scorer = (policy_graphdef, policy_params,
    ref_params)`` adds AIRL's ``log_probs`` (current policy) and ``ref_log_probs`` (reference;
    ``ref_params=None`` leaves them out, plain AIRL (A1))."""
    tokens, prompt_lens, response_lens = (jnp.concatenate([e, p]) for e, p in zip(expert, policy))
    labels = jnp.concatenate([jnp.ones(expert[0].shape[0]), jnp.zeros(policy[0].shape[0])])
    batch = {"tokens": tokens, "prompt_len": prompt_lens, "mask": response_mask(response_lens, horizon), "label": labels}
    if scorer is not None:
        graphdef, params, ref_params = scorer
        batch["log_probs"] = _score(graphdef, params, tokens, prompt_lens, horizon)
        if ref_params is not None:
            batch["ref_log_probs"] = _score(graphdef, ref_params, tokens, prompt_lens, horizon)
    return batch


def exact_discriminator_batch(spec: oracle.TreeSpec, expert_log_probs, policy_log_probs, scorer=None) -> dict:
    """The discriminator's *population* objective on the oracle tree as one weighted batch: every
    complete response twice, as an expert row weighted by rho(x) pi_E(y|x) and as a policy row
    weighted by rho(x) pi(y|x) (each class's weights sum to 1). Its loss is the exact expected
    BCE, with no sampling noise; ``scorer`` as in ``discriminator_batch``."""
    tokens, lengths = oracle.complete_response_tokens(spec)
    prompt_lens = np.repeat(spec.prompt_lens, tokens.shape[1])
    rows = (jnp.asarray(tokens.reshape(-1, tokens.shape[2])), jnp.asarray(prompt_lens), jnp.asarray(lengths.reshape(-1)))
    zeros = [jnp.zeros(spec.tree_shape(t)) for t in range(spec.horizon)]

    def probabilities(log_probs):
        log_p, _ = complete_sequences(spec, log_probs, zeros)
        return jnp.asarray((np.asarray(spec.prompt_weights)[:, None] * np.exp(log_p)).reshape(-1), jnp.float32)

    batch = discriminator_batch(rows, rows, spec.horizon, scorer)
    batch["weight"] = jnp.concatenate([probabilities(expert_log_probs), probabilities(policy_log_probs)])
    return batch


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
    """Settings of GAIL/AIRL training (``adversarial_iteration``): the ``method``, whether the
    discriminator loss is per token or per response (``level``), AIRL's ``gamma`` and which of f
    or g the policy is paid (``reward``), GAIL's reward form (``gail_reward``, a key of
    ``GAIL_REWARD_FORMS``), an R1 ``grad_penalty``, the replay buffer (``samples_per_iteration``
    pushed, ``buffer_capacity``) and ``disc_steps`` updates of ``disc_batch_size`` rows per class
    per iteration."""

    method: Literal["airl", "gail"] = "airl"
    level: Level = "sequence"  # discriminator loss per token or per response (see discriminator_loss)
    gamma: float = 1.0  # AIRL's discount in f = g + gamma h(s') - h(s)
    grad_penalty: float = 0.0  # R1 coefficient on the expert embeddings
    samples_per_iteration: int = 128  # fresh policy responses pushed to the buffer per iteration
    buffer_capacity: int = 256
    disc_steps: int = 10  # discriminator updates per iteration
    disc_batch_size: int = 128  # rows of each class per discriminator update
    reward: Literal["f", "g"] = "f"  # AIRL: reward handed to the policy
    gail_reward: str = "softplus"  # GAIL: a key of GAIL_REWARD_FORMS

    def __post_init__(self):
        choices = {"method": ("airl", "gail"), "level": ("token", "sequence"), "reward": ("f", "g"), "gail_reward": tuple(GAIL_REWARD_FORMS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"AdversarialConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if min(self.disc_steps, self.disc_batch_size, self.samples_per_iteration, self.buffer_capacity) < 1:
            raise ValueError("disc_steps, disc_batch_size, samples_per_iteration and buffer_capacity must all be >= 1")


@dataclasses.dataclass(frozen=True)
class AdversarialSetup:
    """What an adversarial run holds fixed: task, expert demos, the policy (graphdef, reference,
    compiled RL update ``policy_update(state, ref_params, key, disc_params)``, RL config) and the
    discriminator (graphdef, compiled step)."""

    task: Any
    expert: Demonstrations
    policy_graphdef: Any
    ref_params: Any
    policy_update: Callable
    rl: RLConfig
    disc_graphdef: Any
    disc_step: Callable
    config: AdversarialConfig


def init_adversarial(
    key, task, expert: Demonstrations, policy_graphdef, policy_params, ref_params, disc_graphdef, disc_params,
    rl: RLConfig, config: AdversarialConfig, policy_optimizer: optax.GradientTransformation,
    disc_optimizer: optax.GradientTransformation,
) -> tuple[AdversarialSetup, TrainState, TrainState, ReplayBuffer]:
    """Compile both update steps and build the train states and an empty replay buffer.

    AIRL runs reference-relative (A3) against ``ref_params`` (``uniform_reference`` for the
    classic uniform-reference setting) and needs ``rl.kl_coef = 1``: only then is the RL
    objective E[F] - KL(pi || pi_ref) AIRL's policy objective, with optimum pi_E."""
    if config.method == "airl" and rl.kl_coef != 1.0:
        raise ValueError(
            f"AIRL's policy objective is KL-regularised RL with reward f at kl_coef = 1 against the discriminator's "
            f"reference; got kl_coef={rl.kl_coef}. Set RLConfig(kl_coef=1.0)."
        )
    if config.method == "airl":
        disc_loss = airl_loss(disc_graphdef, config.gamma, config.level, config.grad_penalty)
    else:
        disc_loss = gail_loss(disc_graphdef, config.level, config.grad_penalty)
    policy_key, disc_key = jax.random.split(key)
    rl_update = make_rl_update(task, policy_graphdef, policy_optimizer, rl)

    def policy_update(state, reference, rl_key, disc_params):  # the reward is rebuilt from traced parameters
        return rl_update(state, reference, rl_key, reward_fn=policy_reward_fn(setup, disc_params))

    setup = AdversarialSetup(
        task, expert, policy_graphdef, ref_params, jax.jit(policy_update, donate_argnums=0),
        rl, disc_graphdef, make_update_step(disc_loss, disc_optimizer), config,
    )
    policy_state = init_train_state(policy_params, policy_optimizer, policy_key)
    disc_state = init_train_state(disc_params, disc_optimizer, disc_key)
    buffer = ReplayBuffer.create(config.buffer_capacity, expert.tokens.shape[1])
    return setup, policy_state, disc_state, buffer


def policy_reward_fn(setup: AdversarialSetup, disc_params) -> Callable:
    """The reward the policy is trained on with the current discriminator."""
    config, horizon = setup.config, setup.task.horizon
    if config.method == "airl":
        return airl_rewards(setup.disc_graphdef, disc_params, horizon, config.reward, config.gamma)
    return gail_rewards(setup.disc_graphdef, disc_params, horizon, config.gail_reward)


def adversarial_iteration(key, setup: AdversarialSetup, policy_state, disc_state, buffer: ReplayBuffer):
    """One round: sample the policy into the replay buffer, ``disc_steps`` discriminator updates
    on expert vs replayed rows, then one RL iteration (``make_rl_update``) on the discriminator's reward.
    AIRL's log-probs are recomputed under the current policy at every update; with replay
    that is an approximation (replayed rows come from recent policies, not the current one),
    exact when ``buffer_capacity <= samples_per_iteration``. ``policy_gold_return`` (the task's
    gold return of the fresh samples) is a diagnostic only; nothing trains on it.
    Returns ``(policy_state, disc_state, buffer, metrics)``."""
    task, config, expert = setup.task, setup.config, setup.expert
    sample_key, disc_key, rl_key = jax.random.split(key, 3)
    policy_params = policy_state.full_params
    fresh = from_policy(task, sample_key, config.samples_per_iteration, setup.policy_graphdef, policy_params)
    buffer = buffer.push(fresh.tokens, fresh.prompt_lens, fresh.response_lens)
    scorer = (setup.policy_graphdef, policy_params, setup.ref_params) if config.method == "airl" else None
    nonfinite = jnp.zeros((), bool)  # checked once after the loop: no host sync per update
    for step_key in jax.random.split(disc_key, config.disc_steps):
        expert_key, policy_key = jax.random.split(step_key)
        rows = jax.random.randint(expert_key, (config.disc_batch_size,), 0, expert.tokens.shape[0])
        expert_rows = (expert.tokens[rows], expert.prompt_lens[rows], expert.response_lens[rows])
        batch = discriminator_batch(expert_rows, buffer.sample(policy_key, config.disc_batch_size), task.horizon, scorer)
        disc_state, disc_metrics = setup.disc_step(disc_state, batch)
        nonfinite = nonfinite | disc_metrics["nonfinite"]
    if bool(nonfinite):  # a nonfinite update is skipped by the step, so later ones saw the last good state
        raise NonFiniteLossError(
            f"a {config.method} discriminator update was NaN/inf before step {int(disc_state.step) + 1} "
            f"(last loss {float(disc_metrics['loss']):.4g}); lower disc_learning_rate or check the expert data"
        )
    policy_state, rl_metrics = setup.policy_update(policy_state, setup.ref_params, rl_key, disc_state.full_params)
    rl_metrics = jax.device_get(rl_metrics)
    check_update_metrics(rl_metrics, where=f"{config.method} policy update")
    metrics = {f"disc/{k}": float(v) for k, v in disc_metrics.items() if np.ndim(v) == 0}
    metrics.update({f"rl/{k}": float(v) for k, v in rl_metrics.items()})
    metrics["policy_gold_return"] = float(jnp.mean(fresh.returns))
    return policy_state, disc_state, buffer, metrics
