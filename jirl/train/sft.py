"""Supervised fine-tuning / behaviour cloning on demonstrations."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jirl.models.scoring import gather_response, response_log_probs, response_mask
from jirl.train.losses import AGGREGATIONS, OBJECTIVES, LossFn, LossOutput

SFT_KEYS = ("tokens", "prompt_len", "response_len")


def check_batch_keys(batch: dict, needed: tuple[str, ...], objective: str) -> None:
    """Raise KeyError naming ``objective``, the keys it needs and the ones missing from
    ``batch``."""
    missing = [k for k in needed if k not in batch]
    if missing:
        raise KeyError(f"{objective} needs batch keys {list(needed)}; missing {missing} (batch has {sorted(batch)})")


def sft_token_mask(batch: dict, horizon: int) -> jax.Array:
    """``[B, horizon]`` bool: the response steps the SFT loss trains on.

    Step ``t`` is buffer slot ``prompt_len + t``. Without ``loss_mask`` every step of the
    response counts (``t < response_len``); with it (``[B, L]`` in buffer slots, 1 on the
    assistant replies' tokens, as ``jirl.data.chat_tokenize.tokenize_sft_row`` writes it) only
    the response steps whose slot the mask marks:

        m_bt = [t < response_len_b] * loss_mask_b[prompt_len_b + t].
    """
    mask = response_mask(batch["response_len"], horizon)
    if "loss_mask" in batch:  # a Python-level choice: the batch's keys are static under jit
        marked = gather_response(jnp.asarray(batch["loss_mask"]), batch["prompt_len"], horizon) > 0
        mask = mask & marked
    return mask


def sft_token_log_probs(graphdef, params, batch: dict) -> tuple[jax.Array, jax.Array]:
    """``(log_probs, mask)``, both ``[B, L - 1]``: ``log pi_theta(y_bt | x_b, y_b<t)`` of every
    response step and the steps the loss counts (``sft_token_mask``)."""
    check_batch_keys(batch, SFT_KEYS, "sft")
    horizon = batch["tokens"].shape[1] - 1
    log_probs = response_log_probs(graphdef, params, batch["tokens"], batch["prompt_len"], horizon)
    return log_probs, sft_token_mask(batch, horizon)


@OBJECTIVES.register("sft")
def sft_loss(graphdef, aggregation: str = "token_mean") -> LossFn:
    """Masked negative log-likelihood of the response tokens (prompt tokens are not trained):

        L(theta) = - sum_{b,t} m_bt log pi_theta(y_bt | x_b, y_b<t) / sum_{b,t} m_bt

    with ``aggregation="token_mean"`` (above), ``"sequence_mean"`` (mean over sequences of each
    sequence's token mean) or ``"sequence_sum"``. Minimising it minimises
    KL(pi_data || pi_theta) up to the data's entropy, i.e. behaviour cloning.

    Batch: ``tokens [B, L]`` left-aligned prompt+response buffers, ``prompt_len [B]``,
    ``response_len [B]`` (a response of length 0 contributes nothing), and optionally
    ``loss_mask [B, L]`` (buffer slots; 1 on the tokens to train, e.g. only the assistant turns
    of a multi-turn conversation): then ``m_bt = [t < response_len_b] loss_mask_b[p_b + t]``
    (``sft_token_mask``); without it ``m_bt = [t < response_len_b]``.
    """
    aggregate = AGGREGATIONS[aggregation]

    def loss_fn(params, batch, key):
        del key  # deterministic
        log_probs, mask = sft_token_log_probs(graphdef, params, batch)
        out: LossOutput = aggregate(-log_probs, mask)
        return out, {}

    return loss_fn
