"""``jirl run sft``: supervised fine-tuning of a pretrained model on demonstrations.

    jirl run sft                                       # GSM8K train, question -> answer
    jirl run sft --set data=chats.jsonl columns=       # {messages: [...]} conversations (columns= : no renames)
    jirl run sft --set lora.rank=0 train.steps=200 dtype=bfloat16

The objective is ``jirl.train.sft.sft_loss``, the token-mean negative log-likelihood of the
replies,

    L(theta) = - sum_{b,t} m_bt log pi_theta(y_bt | x_b, y_b<t) / sum_{b,t} m_bt,

where the mask m is the data's assistant-only ``loss_mask`` (``tokenize_sft_row``): in a
multi-turn conversation only the assistant replies (their content and end-of-turn token) are
trained, never the user turns between them. Rows: TRL's ``{prompt, completion}``, ``{messages}``
or ShareGPT ``{conversations}``; ``columns`` renames fields (GSM8K: prompt=question,
completion=answer).

Held-out metrics (``eval/...`` in metrics.jsonl, step 0 = before training) on the first
``eval_limit`` held-out examples: ``nll`` = the same masked token mean of -log pi (nats per
token), ``perplexity`` = exp(nll), ``tokens`` = the masked tokens counted. ``results.json``:
``before``/``after``, ``curves``, greedy ``samples`` before and after, the data report,
``seconds`` and ``weights`` (see ``experiments.text_common``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any

import jax
import numpy as np

from experiments.text_common import (
    TextConfig,
    Timer,
    curves,
    greedy_samples,
    load_policy,
    log_before,
    map_in_chunks,
    plot_curves,
    prepare_data,
    prompts_of,
    save_weights,
    show_samples,
    stacked,
    train,
)
from jirl.config import at_least, non_negative
from jirl.experiment import RunDir, register_experiment
from jirl.train.loop import TrainConfig
from jirl.train.sft import SFT_KEYS, sft_loss, sft_token_log_probs

GSM8K_COLUMNS = {"prompt": "question", "completion": "answer"}


@dataclasses.dataclass
class SFTConfig(TextConfig):
    data: str = "../shared/data/gsm8k/train.jsonl.gz"  # demonstrations: {prompt, completion}, {messages} or ShareGPT (relative paths: from the working directory)
    columns: dict[str, str] = dataclasses.field(default_factory=lambda: dict(GSM8K_COLUMNS))  # layout field = source field; columns= for none
    max_len: Annotated[int, at_least(2)] = 256  # tokens per buffer: prompt + reply (longer replies are cut)
    max_prompt_len: Annotated[int, non_negative] = 128  # longer prompts keep their last tokens; 0: only max_len limits
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        steps=30, batch_size=4, learning_rate=3e-4, warmup_steps=3, eval_every=15, checkpoint_every=1000, keep_checkpoints=1,
        log_every=5,
    ))
    eval_limit: Annotated[int, non_negative] = 32  # held-out examples scored at each evaluation (the first N; 0: all)


def nll_metrics(token_log_probs, mask) -> dict[str, float]:
    """``nll`` (mean of -log pi over the masked tokens), ``perplexity`` = exp(nll), ``tokens``."""
    mask = np.asarray(mask, bool)
    count = int(mask.sum())
    nll = float(-np.sum(np.where(mask, np.asarray(token_log_probs, np.float64), 0.0)) / max(count, 1))
    return {"nll": nll, "perplexity": math.exp(min(nll, 700.0)), "tokens": count}


def token_evaluator(graphdef, examples: dict[str, np.ndarray], chunk: int):
    """``evaluate(params) -> metrics`` on the held-out ``examples`` (``nll_metrics``)."""
    keys = (*SFT_KEYS, "loss_mask") if "loss_mask" in examples else SFT_KEYS
    arrays = {k: examples[k] for k in keys}

    @jax.jit
    def score(params, batch):
        log_probs, mask = sft_token_log_probs(graphdef, params, batch)
        return {"log_probs": log_probs, "mask": mask}

    def evaluate(params) -> dict[str, float]:
        out = map_in_chunks(lambda batch: score(params, batch), arrays, chunk)
        return nll_metrics(out["log_probs"], out["mask"])

    return evaluate


@register_experiment("sft", config=SFTConfig, resumable=True,
                     description="supervised fine-tuning of a pretrained model on demonstrations (assistant tokens only), LoRA or full")
def run(config: SFTConfig, run: RunDir) -> dict[str, Any]:
    timer = Timer()
    policy = load_policy(config)
    data = prepare_data("sft", config, policy, run)
    timer.lap("load_model_and_data")
    eval_examples = stacked(data.eval, config.eval_limit)
    evaluate = token_evaluator(policy.graphdef, eval_examples, config.train.batch_size)
    prompts = prompts_of(data.eval, config.samples, "tokens")
    samples = {"before": greedy_samples(policy, policy.params, prompts, config.sample_tokens)}
    before = evaluate(policy.params)
    log_before(run, before)
    timer.lap("evaluate_before")

    state = train(run, config, policy.graphdef, policy.params, policy.trainable, sft_loss(policy.graphdef), data.train,
                  lambda state: evaluate(state.full_params))
    timer.lap("train")
    params = state.full_params
    after = evaluate(params)
    samples["after"] = greedy_samples(policy, params, prompts, config.sample_tokens)
    weights = save_weights(run, config, policy, params)
    timer.lap("evaluate_after_and_save")

    history = curves(run)
    plot_curves(run.path_for("sft.png"), history["eval"], ("nll", "perplexity"), "SFT")
    for name, values in (("before", before), ("after", after)):
        run.console.print(f"{name:6s}: held-out NLL {values['nll']:.4f} nats/token, perplexity {values['perplexity']:.3f}")
    show_samples(run, samples)
    return {
        "model": config.model, "data": data.report, "train_examples": len(data.train), "eval_examples": len(eval_examples["tokens"]),
        "before": before, "after": after, "curves": history, "samples": samples,
        "weights": weights, "seconds": timer.report(),
    }
