"""``jirl run dpo``: direct preference optimisation of a pretrained model on your preference pairs.

    jirl run dpo --set model=smollm2-135m-instruct data=../shared/data/llamafactory-demo/dpo_en_demo.json.gz
    jirl run dpo --set loss=ipo beta=0.5 lora.rank=0 train.steps=200
    jirl run dpo --set loss=cdpo options.label_smoothing=0.2

Any paired loss of ``jirl.preference.losses.PREFERENCE_LOSSES`` (``loss=``: dpo, cdpo, robust_dpo,
ipo, hinge, slic, simpo, orpo, spin, or a plugin's) with its ``options``, trained through the
objective ``OBJECTIVES.get(loss)`` (``jirl.preference.objective.preference_loss``). The data is
any preference layout ``read_rows`` reads (TRL standard or conversational, ShareGPT), rendered
with the model's chat template; ``eval_fraction`` of the prompts are held out.

The reference pi_ref is the initial model (with LoRA: the pretrained model, its adapters
starting at zero). Its sums log pi_ref(y|x) are computed once over the data
(``add_reference_log_probs``) and stored with the examples.

Held-out metrics (``eval/...`` in metrics.jsonl, step 0 = before training), from each pair's
sequence log-prob sums with r(x, y) = beta (log pi(y|x) - log pi_ref(y|x)) (DPO's implicit
reward, ``implicit_reward``):

    loss           mean over pairs of the training loss l(pi; y+, y-) (+ sft_weight * NLL(y+)/|y+|)
    accuracy       share of pairs with r(x, y+) > r(x, y-) (strict: 0 at step 0, where every r = 0)
    reward_chosen  mean r(x, y+);  reward_rejected  mean r(x, y-);  margin  mean r(x, y+) - r(x, y-)
    accuracy_se, margin_se   their standard errors (binomial; per-pair margins), pairs  n

``results.json``: ``before``/``after`` held-out metrics, ``curves`` (``eval`` per evaluation,
``train`` per step), ``samples`` (greedy replies to held-out prompts before and after), the data
report, ``seconds`` per stage and ``weights`` (the saved adapters; see ``experiments.text_common``).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.text_common import (
    ArraySource,
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
from jirl.config import ConfigError, Check, finite, in_range, non_negative, positive
from jirl.experiment import RunDir, register_experiment
from jirl.preference.losses import PREFERENCE_LOSSES, implicit_reward, is_paired, needs_reference, preference_loss_fn
from jirl.preference.objective import PAIR_KEYS, add_reference_log_probs, pair_log_prob_sums
from jirl.train.loop import TrainConfig
from jirl.train.losses import OBJECTIVES


def paired_losses() -> list[str]:
    """The names of the paired preference losses (read when asked, so plugins' count)."""
    return [name for name in PREFERENCE_LOSSES.names() if is_paired(PREFERENCE_LOSSES.get(name))]


paired_loss = Check(
    lambda name: name in paired_losses(),
    lambda: "a paired preference loss: one of " + ", ".join(paired_losses()) + " (kto is unpaired: jirl run kto)",
)


@dataclasses.dataclass
class DPOConfig(TextConfig):
    data: str = "../shared/data/llamafactory-demo/dpo_en_demo.json.gz"  # preference rows: TRL standard/conversational or ShareGPT (relative paths: from the working directory)
    eval_fraction: Annotated[float, in_range(0.0, 1.0, open_low=True)] = 0.25  # share of prompts held out when eval_data is empty (0.25 of the demo's 300: ~75 pairs)
    eval_limit: Annotated[int, non_negative] = 0  # held-out pairs scored at each evaluation (the first N; 0: all)
    loss: Annotated[str, paired_loss] = "dpo"  # any paired loss of PREFERENCE_LOSSES
    beta: Annotated[float, finite, positive] = 0.1  # the KL leash; implicit reward r = beta log pi/pi_ref
    options: dict[str, float] = dataclasses.field(default_factory=dict)  # the loss's own options, e.g. label_smoothing=0.2 (cdpo), gamma=0.5 (simpo)
    sft_weight: Annotated[float, finite, non_negative] = 0.0  # + sft_weight * per-token NLL of the chosen reply (RPO)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        steps=60, batch_size=4, learning_rate=5e-4, warmup_steps=5, eval_every=20, checkpoint_every=1000, keep_checkpoints=1,
        log_every=5,
    ))

    def validate(self) -> None:
        super().validate()
        try:
            preference_loss_fn(self.loss, self.options)  # an unknown option is a ConfigError naming the valid ones
        except ConfigError as error:
            raise ConfigError(f"options: {error}") from None


def pair_metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, *, loss: str, beta: float,
                 options: dict | None = None, sft_weight: float = 0.0) -> dict[str, float]:
    """Held-out metrics of pairs from their sequence log-prob sums (arrays ``[N]``): the loss as the
    objective computes it, and the implicit rewards r = beta (log pi - log pi_ref) of each reply:
    ``accuracy`` = mean [r+ > r-] with its binomial standard error ``accuracy_se`` =
    sqrt(p (1 - p) / n), ``reward_chosen``, ``reward_rejected``, ``margin`` = mean r+ - r- with
    ``margin_se`` = the per-pair margins' standard deviation / sqrt(n), and ``pairs`` = n."""
    pc, pr, rc, rr = (jnp.asarray(x, jnp.float32) for x in (policy_chosen, policy_rejected, ref_chosen, ref_rejected))
    chosen_nll = -pc / jnp.maximum(jnp.asarray(chosen_len, jnp.float32), 1.0)
    per_pair = preference_loss_fn(loss, options)(
        pc, pr, ref_chosen=rc, ref_rejected=rr, beta=beta, chosen_len=jnp.asarray(chosen_len),
        rejected_len=jnp.asarray(rejected_len), chosen_nll_per_token=chosen_nll,
    ) + sft_weight * chosen_nll
    reward_chosen, reward_rejected = implicit_reward(pc, rc, beta), implicit_reward(pr, rr, beta)
    right = np.asarray(reward_chosen > reward_rejected, np.float64)
    margins = np.asarray(reward_chosen - reward_rejected, np.float64)
    n = len(margins)
    return {
        "loss": float(jnp.mean(per_pair)),
        "accuracy": float(right.mean()),
        "accuracy_se": float(np.sqrt(right.mean() * (1 - right.mean()) / n)),
        "reward_chosen": float(jnp.mean(reward_chosen)),
        "reward_rejected": float(jnp.mean(reward_rejected)),
        "margin": float(margins.mean()),
        "margin_se": float(margins.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "pairs": n,
    }


def pair_evaluator(graphdef, pairs: dict[str, np.ndarray], config: DPOConfig):
    """``evaluate(params) -> metrics`` on the held-out ``pairs`` (with ``ref_chosen``/``ref_rejected``)."""
    score = jax.jit(lambda params, batch: dict(zip(("chosen", "rejected"), pair_log_prob_sums(graphdef, params, batch))))
    chunk = config.train.batch_size

    def evaluate(params) -> dict[str, float]:
        sums = map_in_chunks(lambda batch: score(params, batch), {k: pairs[k] for k in PAIR_KEYS}, chunk)
        return pair_metrics(sums["chosen"], sums["rejected"], pairs["ref_chosen"], pairs["ref_rejected"], pairs["chosen_len"],
                            pairs["rejected_len"], loss=config.loss, beta=config.beta, options=config.options,
                            sft_weight=config.sft_weight)

    return evaluate


def with_reference_sums(graphdef, params, pairs: dict[str, np.ndarray], chunk: int) -> dict[str, np.ndarray]:
    """``pairs`` plus the reference's ``ref_chosen``/``ref_rejected``, dropping fields no step reads."""
    keep = {k: pairs[k] for k in (*PAIR_KEYS, "weight") if k in pairs}
    return add_reference_log_probs(graphdef, params, keep, batch_size=chunk)


@register_experiment("dpo", config=DPOConfig, resumable=True,
                     description="DPO (or any paired preference loss) of a pretrained model on preference pairs, LoRA or full")
def run(config: DPOConfig, run: RunDir) -> dict[str, Any]:
    timer = Timer()
    policy = load_policy(config)
    data = prepare_data("preference", config, policy, run)
    timer.lap("load_model_and_data")
    chunk = config.train.batch_size
    eval_pairs = with_reference_sums(policy.graphdef, policy.params, stacked(data.eval, config.eval_limit), chunk)
    train_pairs = stacked(data.train)
    if needs_reference(config.loss):
        run.console.print(f"scoring {len(data.train)} training pairs under the reference model ...")
        train_pairs = with_reference_sums(policy.graphdef, policy.params, train_pairs, chunk)
    else:
        train_pairs = {k: train_pairs[k] for k in (*PAIR_KEYS, "weight") if k in train_pairs}
    timer.lap("reference_log_probs")

    longest = int(max(np.max(train_pairs[k]) for k in ("chosen_len", "rejected_len")))
    loss_fn = OBJECTIVES.get(config.loss)(policy.graphdef, beta=config.beta, sft_weight=config.sft_weight,
                                          response_horizon=max(longest, 1), **config.options)
    evaluate = pair_evaluator(policy.graphdef, eval_pairs, config)
    prompts = prompts_of(data.eval, config.samples, "chosen")
    samples = {"before": greedy_samples(policy, policy.params, prompts, config.sample_tokens)}
    before = evaluate(policy.params)
    log_before(run, before)
    timer.lap("evaluate_before")

    state = train(run, config, policy.graphdef, policy.params, policy.trainable, loss_fn, ArraySource(train_pairs),
                  lambda state: evaluate(state.full_params))
    timer.lap("train")
    params = state.full_params
    after = evaluate(params)
    samples["after"] = greedy_samples(policy, params, prompts, config.sample_tokens)
    weights = save_weights(run, config, policy, params)
    timer.lap("evaluate_after_and_save")

    history = curves(run)
    plot_curves(run.path_for("dpo.png"), history["eval"], ("accuracy", "margin", "reward_chosen", "reward_rejected", "loss"),
                f"{config.loss}, beta={config.beta}")
    for name, values in (("before", before), ("after", after)):
        run.console.print(f"{name:6s}: " + ", ".join(f"{k} {v:+.4f}" for k, v in values.items()))
    show_samples(run, samples)
    return {
        "model": config.model, "loss": config.loss, "beta": config.beta, "data": data.report,
        "train_pairs": len(data.train), "eval_pairs": len(eval_pairs["chosen"]),
        "before": before, "after": after, "curves": history, "samples": samples,
        "weights": weights, "seconds": timer.report(),
    }
