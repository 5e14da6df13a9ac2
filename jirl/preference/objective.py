"""Preference losses as training-engine objectives: ``loss_fn(params, batch, key)``.

Batches use the pair layout of ``jirl.data.preferences``: ``chosen``/``rejected`` left-aligned
buffers ``[B, L]`` sharing a prompt of ``prompt_len`` tokens, ``chosen_len``/``rejected_len``
response lengths, and optionally ``weight [B]`` (pair weights; the loss is the weighted mean).

The reference policy comes from one of two places:

* precomputed sums ``ref_chosen``/``ref_rejected`` in the batch (``add_reference_log_probs``,
  the usual offline set-up: one pass of the reference over the dataset), or
* frozen parameters next to the policy's: ``params = with_reference(policy, reference)`` and
  ``init_train_state(..., trainable=POLICY_ONLY)``, the reference scored inside the step
  (online training, where responses are new every iteration).

Reference-free losses (SimPO, ORPO, SLiC: those whose signature has no ``ref_*``) need neither.

Every paired loss in ``PREFERENCE_LOSSES``, a plugin's included, is registered as an objective
in ``OBJECTIVES`` under its own name (``OBJECTIVES.get(name)(graphdef, beta=..., **options)``),
whenever it is registered; ``kto`` as ``kto_objective``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jirl.config import ConfigError, JirlError
from jirl.data.errors import DataError
from jirl.models.scoring import response_log_probs, response_mask
from jirl.preference.losses import (
    PREFERENCE_LOSSES,
    implicit_reward,
    is_paired,
    kto_kl_reference,
    needs_reference,
    preference_loss_fn,
)
from jirl.train.losses import OBJECTIVES, LossOutput

POLICY_ONLY = nnx.PathContains("policy")  # the trainable filter when params carry a reference
PAIR_KEYS = ("chosen", "rejected", "prompt_len", "chosen_len", "rejected_len")


class MissingReferenceError(JirlError):
    """A loss that compares the policy with a reference was given no reference."""


def with_reference(policy_params, reference_params) -> nnx.State:
    """``{"policy", "reference"}`` parameters: train with ``trainable=POLICY_ONLY`` so the
    reference stays frozen (and is checkpointed with the run)."""
    return nnx.State({"policy": policy_params, "reference": jax.tree_util.tree_map(jnp.copy, reference_params)})


def split_reference(params):
    """``(policy, reference or None)`` of params built by ``with_reference`` or plain params."""
    if isinstance(params, (dict, nnx.State)) and "reference" in params and "policy" in params:
        return params["policy"], params["reference"]
    return params, None


def sequence_log_prob_sums(graphdef, params, tokens, prompt_len, response_len, horizon: int | None = None) -> jax.Array:
    """``log pi(y|x) = sum_t log pi(y_t | x, y_<t)`` of each buffer's response, ``[B]``.

    ``horizon`` (static): the response steps scored per buffer, at least the longest response.
    The default, the buffer width - 1, fits any prompt length but runs the LM head at about
    every slot; a known bound (``preference_loss(response_horizon=...)``) runs it at the
    responses only.
    """
    horizon = tokens.shape[1] - 1 if horizon is None else min(horizon, tokens.shape[1] - 1)  # steps past a response are masked out
    log_probs = response_log_probs(graphdef, params, tokens, prompt_len, horizon)
    return jnp.sum(jnp.where(response_mask(response_len, horizon), log_probs, 0.0), axis=1)


def pair_log_prob_sums(graphdef, params, batch, horizon: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Chosen and rejected sums, scored in one forward pass over the stacked buffers."""
    tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
    prompt_len = jnp.concatenate([batch["prompt_len"], batch["prompt_len"]])
    lengths = jnp.concatenate([batch["chosen_len"], batch["rejected_len"]])
    sums = sequence_log_prob_sums(graphdef, params, tokens, prompt_len, lengths, horizon)
    return jnp.split(sums, 2)


def check_pairs(batch: dict) -> None:
    """Eager checks of a (host) pair batch: the keys are there, and each pair's chosen and
    rejected buffers start with the same prompt. Raises ``DataError`` naming the rows."""
    missing = [k for k in PAIR_KEYS if k not in batch]
    if missing:
        raise DataError(f"preference batch is missing {missing}; a pair batch needs {list(PAIR_KEYS)}")
    chosen, rejected, prompt_len = (np.asarray(batch[k]) for k in ("chosen", "rejected", "prompt_len"))
    in_prompt = np.arange(chosen.shape[1])[None, :] < prompt_len[:, None]
    differ = np.flatnonzero(np.any(in_prompt & (chosen != rejected), axis=1))
    if differ.size:
        raise DataError(
            f"pairs {differ[:10].tolist()}{' ...' if differ.size > 10 else ''} have chosen and rejected responses "
            "to different prompts (their first prompt_len tokens differ); a preference pair must answer one prompt. "
            "Check how the pairs were assembled (pairing within prompt, shared prompt_len)."
        )


def add_reference_log_probs(graphdef, reference_params, batch: dict, batch_size: int = 256) -> dict:
    """The batch (host arrays) plus ``ref_chosen``/``ref_rejected``: the reference's sums,
    computed once in chunks of ``batch_size`` pairs (the offline DPO set-up)."""
    check_pairs(batch)
    score = jax.jit(lambda p, b: pair_log_prob_sums(graphdef, p, b))
    rows = len(batch["chosen"])
    chosen, rejected = [], []
    for start in range(0, rows, batch_size):
        chunk = {k: jnp.asarray(batch[k][start : start + batch_size]) for k in PAIR_KEYS}
        c, r = score(reference_params, chunk)
        chosen.append(np.asarray(c))
        rejected.append(np.asarray(r))
    return {**batch, "ref_chosen": np.concatenate(chosen), "ref_rejected": np.concatenate(rejected)}


def _reference_sums(graphdef, reference, batch, loss: str, needed: bool, horizon: int | None = None):
    """The reference's chosen and rejected sums: from the batch, from frozen parameters, or
    zeros (for the metrics only) when a reference-free loss has neither."""
    if "ref_chosen" in batch and "ref_rejected" in batch:
        return batch["ref_chosen"], batch["ref_rejected"]
    if reference is not None:
        chosen, rejected = pair_log_prob_sums(graphdef, reference, batch, horizon)
        return jax.lax.stop_gradient(chosen), jax.lax.stop_gradient(rejected)
    if not needed:
        zeros = jnp.zeros(batch["chosen"].shape[0])
        return zeros, zeros
    raise MissingReferenceError(
        f"preference loss {loss!r} needs a reference model, but the batch has no ref_chosen/ref_rejected and the "
        "params hold no 'reference'. Either precompute them with add_reference_log_probs(graphdef, ref_params, "
        "batch) or train params=with_reference(policy, reference) with trainable=POLICY_ONLY."
    )


def _weighted_mean(per_pair, batch) -> LossOutput:
    weight = batch.get("weight", jnp.ones_like(per_pair)).astype(per_pair.dtype)
    return LossOutput(total=jnp.sum(weight * per_pair), count=jnp.sum(weight))


def preference_loss(
    graphdef, loss: str = "dpo", beta: float = 0.1, sft_weight: float = 0.0, response_horizon: int | None = None, **options
):
    """``loss_fn(params, batch, key)`` of a paired loss from ``PREFERENCE_LOSSES`` with its
    ``options`` (a misspelt one is a ``ConfigError`` naming the valid ones):

        L = sum_b w_b [l(pi_theta; y+_b, y-_b) + sft_weight * NLL(y+_b) / |y+_b|] / sum_b w_b.

    ``sft_weight`` adds the per-token NLL of the chosen response (SLiC's regulariser; RPO).
    A loss that takes ``chosen_nll_per_token`` (ORPO) gets it. Metrics: implicit
    reward accuracy and margin, ``beta (log pi/pi_ref)`` of chosen and rejected.

    ``response_horizon``: the longest response any batch holds, if known (e.g. the data's
    maximum response length). The LM head then runs at that many steps per buffer instead of
    at every slot: half the head's work for a buffer half prompt, half response. A batch with
    a longer response gets a NaN loss (training stops with ``NonFiniteLossError``) and the
    metric ``responses_past_horizon`` counts them: nothing is truncated silently.
    """
    if response_horizon is not None and response_horizon < 1:
        raise ConfigError(f"response_horizon must be >= 1 (or None for the buffer width), got {response_horizon}")
    pair_loss = preference_loss_fn(loss, options)
    reference_needed = needs_reference(loss)

    def loss_fn(params, batch, key):
        del key
        policy, reference = split_reference(params)
        policy_chosen, policy_rejected = pair_log_prob_sums(graphdef, policy, batch, response_horizon)
        ref_chosen, ref_rejected = _reference_sums(graphdef, reference, batch, loss, reference_needed, response_horizon)
        chosen_len = batch["chosen_len"].astype(policy_chosen.dtype)
        chosen_nll = -policy_chosen / jnp.maximum(chosen_len, 1.0)
        per_pair = pair_loss(
            policy_chosen, policy_rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected, beta=beta,
            chosen_len=batch["chosen_len"], rejected_len=batch["rejected_len"], chosen_nll_per_token=chosen_nll,
        )
        if sft_weight:
            per_pair = per_pair + sft_weight * chosen_nll
        reward_chosen = implicit_reward(policy_chosen, ref_chosen, beta)
        reward_rejected = implicit_reward(policy_rejected, ref_rejected, beta)
        metrics = {
            "reward_accuracy": jnp.mean((reward_chosen > reward_rejected).astype(jnp.float32)),
            "reward_margin": jnp.mean(reward_chosen - reward_rejected),
            "reward_chosen": jnp.mean(reward_chosen),
            "reward_rejected": jnp.mean(reward_rejected),
        }
        if response_horizon is not None:
            past = jnp.maximum(batch["chosen_len"], batch["rejected_len"]) > response_horizon
            metrics["responses_past_horizon"] = jnp.sum(past)
            per_pair = jnp.where(jnp.any(past), jnp.nan, per_pair)
        return _weighted_mean(per_pair, batch), metrics

    return loss_fn


def mismatched_buffers(tokens, prompt_len, response_len):
    """Each row's prompt followed by the NEXT row's response (row b takes row b+1's, cyclically):
    the unrelated (x, y') pairs KTO uses to estimate KL(pi || pi_ref). Returns
    ``(tokens, prompt_len, response_len)`` of the same width (it must hold every prompt
    plus every response)."""
    width = tokens.shape[1]
    next_tokens, next_prompt, next_len = (jnp.roll(x, -1, axis=0) for x in (tokens, prompt_len, response_len))
    slots = jnp.arange(width)[None, :]
    source = jnp.clip(slots - prompt_len[:, None] + next_prompt[:, None], 0, width - 1)
    response = jnp.take_along_axis(next_tokens, source, axis=1)
    in_prompt = slots < prompt_len[:, None]
    return jnp.where(in_prompt, tokens, response), prompt_len, next_len


def kto_objective(graphdef, beta: float = 0.1, **options):
    """``loss_fn`` of KTO (Ethayarajh et al. 2024) on a pair batch, each pair read as one
    desirable (chosen) and one undesirable (rejected) example. ``z_ref`` is estimated from
    mismatched (prompt, other response) examples of the batch, without gradient. Needs the
    reference as ``params = with_reference(policy, reference)``. ``options``: ``kto_loss``'s
    (``desirable_weight``, ``undesirable_weight``); a misspelt one is a ``ConfigError``."""
    kto = PREFERENCE_LOSSES.bind("kto", options)

    def loss_fn(params, batch, key):
        del key
        policy, reference = split_reference(params)
        if reference is None:
            raise MissingReferenceError(
                "kto needs a reference model: train params=with_reference(policy, reference) with trainable=POLICY_ONLY"
            )
        tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
        prompt_len = jnp.concatenate([batch["prompt_len"], batch["prompt_len"]])
        lengths = jnp.concatenate([batch["chosen_len"], batch["rejected_len"]])
        desirable = jnp.arange(tokens.shape[0]) < batch["chosen"].shape[0]
        policy_logp = sequence_log_prob_sums(graphdef, policy, tokens, prompt_len, lengths)
        ref_logp = jax.lax.stop_gradient(sequence_log_prob_sums(graphdef, reference, tokens, prompt_len, lengths))
        mismatched = mismatched_buffers(tokens, prompt_len, lengths)
        kl_reference = kto_kl_reference(
            sequence_log_prob_sums(graphdef, policy, *mismatched), sequence_log_prob_sums(graphdef, reference, *mismatched)
        )
        per_example = kto(policy_logp, ref_logp, desirable, beta=beta, kl_reference=kl_reference)
        weight = jnp.concatenate([batch.get("weight", jnp.ones_like(batch["prompt_len"], per_example.dtype))] * 2)
        out = LossOutput(total=jnp.sum(weight * per_example), count=jnp.sum(weight))
        return out, {"kl_reference": kl_reference}

    return loss_fn


def _register_objective(name: str, loss) -> None:
    """Make a paired preference loss an objective of the same name, now and for every loss
    registered later (a plugin registers its loss once)."""
    if is_paired(loss):
        OBJECTIVES.register(name, functools.partial(preference_loss, loss=name))


PREFERENCE_LOSSES.on_register(_register_objective)
OBJECTIVES.register("kto", kto_objective)
