"""Supervised fine-tuning / behaviour cloning on demonstrations."""

from __future__ import annotations

from jirl.models.scoring import response_log_probs, response_mask
from jirl.train.losses import AGGREGATIONS, OBJECTIVES, LossFn, LossOutput


def check_batch_keys(batch: dict, needed: tuple[str, ...], objective: str) -> None:
    """Raise KeyError naming ``objective``, the keys it needs and the ones missing from
    ``batch``."""
    missing = [k for k in needed if k not in batch]
    if missing:
        raise KeyError(f"{objective} needs batch keys {list(needed)}; missing {missing} (batch has {sorted(batch)})")


@OBJECTIVES.register("sft")
def sft_loss(graphdef, aggregation: str = "token_mean") -> LossFn:
    """Masked negative log-likelihood of the response tokens (prompt tokens are not trained):

        L(theta) = - sum_{b,t} m_bt log pi_theta(y_bt | x_b, y_b<t) / sum_{b,t} m_bt

    with ``aggregation="token_mean"`` (above), ``"sequence_mean"`` (mean over sequences of each
    sequence's token mean) or ``"sequence_sum"``. Minimising it minimises
    KL(pi_data || pi_theta) up to the data's entropy, i.e. behaviour cloning.

    Batch: ``tokens [B, L]`` left-aligned prompt+response buffers, ``prompt_len [B]``,
    ``response_len [B]`` (a response of length 0 contributes nothing).
    """
    aggregate = AGGREGATIONS[aggregation]

    def loss_fn(params, batch, key):
        del key  # deterministic
        check_batch_keys(batch, ("tokens", "prompt_len", "response_len"), "sft")
        horizon = batch["tokens"].shape[1] - 1
        log_probs = response_log_probs(graphdef, params, batch["tokens"], batch["prompt_len"], horizon)
        mask = response_mask(batch["response_len"], horizon)
        out: LossOutput = aggregate(-log_probs, mask)
        return out, {}

    return loss_fn
