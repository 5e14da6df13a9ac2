"""``jirl run kto``: KTO of a pretrained model on replies judged one at a time (desirable or not).

    jirl run kto --set model=smollm2-135m-instruct data=../shared/data/llamafactory-demo/kto_en_demo.json.gz
    jirl run kto --set beta=0.2 undesirable_weight=1.5 lora.rank=0

KTO (Ethayarajh et al. 2024, ``jirl.preference.losses.kto_loss``) on unpaired examples (TRL's
``{prompt, completion, label}``, LLaMA-Factory's ``{messages, label}``, ShareGPT with
``kto_tag``). With r = log pi(y|x) - log pi_ref(y|x) and the reference point
z0 = max(0, KL estimate) held constant,

    v = sigma(beta (r - z0))  if desirable,    v = sigma(beta (z0 - r))  otherwise,
    l = lambda_y (1 - v),     lambda_y = desirable_weight or undesirable_weight,

and the loss is the mean of l over the batch. z0 is KTO's batch estimate of KL(pi || pi_ref),
mean over the batch of log pi(y'|x) - log pi_ref(y'|x) on mismatched pairs (each prompt with the
next example's reply, ``mismatched_buffers``), without gradient (``kto_kl_reference``).

The reference is the initial model: with LoRA, the same parameters with the adapters set to
zero (the pretrained model, no second copy in memory); with ``lora.rank=0``, a frozen copy
(``with_reference``). ``jirl.preference.objective.kto_objective`` reads pair batches (chosen as
desirable, rejected as undesirable); ``unpaired_kto_objective`` here reads the unpaired layout
of ``tokenize_unpaired_row``: ``tokens``, ``prompt_len``, ``response_len``, ``label``.

Held-out metrics (``eval/...``; step 0 = before training), with the implicit reward
beta r = beta (log pi - log pi_ref) (``implicit_reward``) and z0 estimated over the whole held-out
set (each prompt with the next held-out example's reply):

    loss                 mean KTO loss
    reward_desirable     mean beta r over desirable replies;  reward_undesirable: over undesirable ones
    margin               reward_desirable - reward_undesirable
    accuracy             share of replies whose reward has the label's sign (r > 0 desirable, r < 0 not;
                         0 at step 0, where every r = 0)
    kl                   the held-out z0 (before the max with 0)
    accuracy_se, margin_se   standard errors (binomial; two-sample), examples, desirable: the counts
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import jax
import jax.numpy as jnp
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
    without_adapters,
)
from jirl.config import ConfigError, finite, in_range, non_negative, positive
from jirl.experiment import RunDir, register_experiment
from jirl.models.lora import adapter_params
from jirl.preference.losses import PREFERENCE_LOSSES, implicit_reward, kto_kl_reference
from jirl.preference.objective import (
    POLICY_ONLY,
    MissingReferenceError,
    mismatched_buffers,
    sequence_log_prob_sums,
    split_reference,
    with_reference,
)
from jirl.train.losses import LossOutput
from jirl.train.loop import TrainConfig
from jirl.train.sft import check_batch_keys

UNPAIRED_KEYS = ("tokens", "prompt_len", "response_len", "label")


@dataclasses.dataclass
class KTOConfig(TextConfig):
    data: str = "../shared/data/llamafactory-demo/kto_en_demo.json.gz"  # judged replies: {prompt, completion, label}, {messages, label} or ShareGPT + kto_tag
    eval_fraction: Annotated[float, in_range(0.0, 1.0, open_low=True)] = 0.2  # share of prompts held out when eval_data is empty (0.2 of the demo's 300: ~60 replies)
    eval_limit: Annotated[int, non_negative] = 0  # held-out replies scored at each evaluation (the first N; 0: all)
    beta: Annotated[float, finite, positive] = 0.1  # KTO's beta (the value function's slope; the KL leash)
    desirable_weight: Annotated[float, finite, positive] = 1.0  # lambda_D
    undesirable_weight: Annotated[float, finite, positive] = 1.0  # lambda_U (the paper: lambda_D n_D / (lambda_U n_U) in [1, 4/3])
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        steps=50, batch_size=8, learning_rate=5e-4, warmup_steps=5, eval_every=25, checkpoint_every=1000, keep_checkpoints=1,
        log_every=5,
    ))

    def validate(self) -> None:
        super().validate()
        if self.train.batch_size // self.train.accumulation_steps < 2:
            raise ConfigError(
                "train.batch_size / train.accumulation_steps must be >= 2: KTO's KL estimate pairs each prompt with "
                "another example's reply in its micro-batch"
            )


def mismatched_examples(tokens, prompt_len, response_len):
    """``mismatched_buffers`` (each prompt with the next row's reply), with each borrowed reply cut to
    the room left after its prompt in the buffer."""
    tokens, prompt_len, response_len = mismatched_buffers(tokens, prompt_len, response_len)
    return tokens, prompt_len, jnp.minimum(response_len, tokens.shape[1] - prompt_len)


def reference_params(params):
    """``(policy, reference)``: the frozen copy of ``with_reference`` params, or else the LoRA
    policy with its adapters at zero (the pretrained model)."""
    policy, reference = split_reference(params)
    if reference is None:
        if not jax.tree_util.tree_leaves(adapter_params(policy)):
            raise MissingReferenceError("kto needs a reference: LoRA adapters (set to zero) or params=with_reference(policy, reference)")
        reference = without_adapters(policy)
    return policy, jax.lax.stop_gradient(reference)


def unpaired_kto_objective(graphdef, beta: float = 0.1, **options):
    """``loss_fn(params, batch, key)`` of KTO on an unpaired batch (``tokens``, ``prompt_len``,
    ``response_len``, ``label``; optional ``weight``): the weighted mean over examples of
    ``kto_loss`` (equation in the module docstring); ``options`` are ``kto_loss``'s
    (``desirable_weight``, ``undesirable_weight``; a misspelt one is a ``ConfigError``).
    Metrics: the batch's ``kl_reference`` (z0), mean implicit rewards of desirable and undesirable
    replies and the share whose sign matches the label."""
    kto = PREFERENCE_LOSSES.bind("kto", options)

    def loss_fn(params, batch, key):
        del key
        check_batch_keys(batch, UNPAIRED_KEYS, "kto")
        policy, reference = reference_params(params)
        tokens, prompt_len, response_len = batch["tokens"], batch["prompt_len"], batch["response_len"]
        policy_logp = sequence_log_prob_sums(graphdef, policy, tokens, prompt_len, response_len)
        ref_logp = sequence_log_prob_sums(graphdef, reference, tokens, prompt_len, response_len)
        mismatched = mismatched_examples(tokens, prompt_len, response_len)
        kl_reference = kto_kl_reference(
            sequence_log_prob_sums(graphdef, jax.lax.stop_gradient(policy), *mismatched),
            sequence_log_prob_sums(graphdef, reference, *mismatched),
        )
        desirable = batch["label"] > 0
        per_example = kto(policy_logp, ref_logp, desirable, beta=beta, kl_reference=kl_reference)
        weight = batch.get("weight", jnp.ones_like(per_example)).astype(per_example.dtype)
        reward = implicit_reward(policy_logp, ref_logp, beta)
        metrics = {"kl_reference": kl_reference, **reward_metrics(reward, desirable)}
        return LossOutput(total=jnp.sum(weight * per_example), count=jnp.sum(weight)), metrics

    return loss_fn


def reward_metrics(reward, desirable) -> dict:
    """Mean implicit reward of desirable and of undesirable replies, their difference, and the share
    of replies whose reward has the label's sign."""
    d = desirable.astype(reward.dtype)
    reward_desirable = jnp.sum(reward * d) / jnp.maximum(jnp.sum(d), 1.0)
    reward_undesirable = jnp.sum(reward * (1 - d)) / jnp.maximum(jnp.sum(1 - d), 1.0)
    right_sign = jnp.where(desirable, reward > 0, reward < 0)
    return {"reward_desirable": reward_desirable, "reward_undesirable": reward_undesirable,
            "margin": reward_desirable - reward_undesirable, "accuracy": jnp.mean(right_sign.astype(reward.dtype))}


def kto_metrics(policy_logp, ref_logp, policy_mismatched, ref_mismatched, label, *, beta: float,
                desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> dict[str, float]:
    """Held-out metrics (module docstring) from per-example sums ``[N]``: matched log pi and log
    pi_ref, and the same on the mismatched examples."""
    kl = jnp.mean(jnp.asarray(policy_mismatched) - jnp.asarray(ref_mismatched))
    desirable = jnp.asarray(label) > 0
    per_example = PREFERENCE_LOSSES.get("kto")(
        jnp.asarray(policy_logp), jnp.asarray(ref_logp), desirable, beta=beta, kl_reference=kl,
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
    )
    reward = implicit_reward(jnp.asarray(policy_logp), jnp.asarray(ref_logp), beta)
    metrics = {k: float(v) for k, v in {"loss": jnp.mean(per_example), **reward_metrics(reward, desirable), "kl": kl}.items()}
    return {**metrics, **standard_errors(np.asarray(reward, np.float64), np.asarray(desirable), metrics["accuracy"])}


def standard_errors(reward: np.ndarray, desirable: np.ndarray, accuracy: float) -> dict[str, float]:
    """``accuracy_se`` = sqrt(p (1 - p) / n) (binomial), ``margin_se`` = sqrt(s_D^2 / n_D + s_U^2 /
    n_U) (the difference of two independent means), and the counts ``examples``, ``desirable``."""
    n = len(reward)
    good, bad = reward[desirable], reward[~desirable]
    spread = [part.var(ddof=1) / len(part) if len(part) > 1 else float("nan") for part in (good, bad)]
    return {"accuracy_se": float(np.sqrt(accuracy * (1 - accuracy) / n)), "margin_se": float(np.sqrt(sum(spread))),
            "examples": n, "desirable": int(desirable.sum())}


def held_out_mismatched(examples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The held-out set's mismatched examples: each prompt with the next example's reply (over the
    whole set, cyclically), as arrays."""
    tokens, prompt_len, response_len = (np.asarray(x) for x in mismatched_examples(
        jnp.asarray(examples["tokens"]), jnp.asarray(examples["prompt_len"]), jnp.asarray(examples["response_len"])))
    return {"tokens": tokens, "prompt_len": prompt_len, "response_len": response_len}


def unpaired_evaluator(graphdef, reference, examples: dict[str, np.ndarray], config: KTOConfig):
    """``evaluate(params) -> metrics`` on the held-out ``examples``; the reference's sums are
    computed once, here."""
    keys = ("tokens", "prompt_len", "response_len")
    score = jax.jit(lambda params, b: {"logp": sequence_log_prob_sums(graphdef, params, *(b[k] for k in keys))})
    matched = {k: examples[k] for k in keys}
    mismatched = held_out_mismatched(examples)
    chunk = config.train.batch_size

    def sums(params):
        return (map_in_chunks(lambda b: score(params, b), matched, chunk)["logp"],
                map_in_chunks(lambda b: score(params, b), mismatched, chunk)["logp"])

    ref_matched, ref_mismatched = sums(reference)

    def evaluate(params) -> dict[str, float]:
        policy_matched, policy_mismatched = sums(params)
        return kto_metrics(policy_matched, ref_matched, policy_mismatched, ref_mismatched, examples["label"],
                           beta=config.beta, desirable_weight=config.desirable_weight,
                           undesirable_weight=config.undesirable_weight)

    return evaluate


@register_experiment("kto", config=KTOConfig, resumable=True,
                     description="KTO of a pretrained model on desirable/undesirable replies, LoRA or full")
def run(config: KTOConfig, run: RunDir) -> dict[str, Any]:
    timer = Timer()
    policy = load_policy(config)
    data = prepare_data("unpaired", config, policy, run)
    timer.lap("load_model_and_data")
    eval_examples = stacked(data.eval, config.eval_limit)
    reference = without_adapters(policy.params) if policy.lora else policy.params
    evaluate = unpaired_evaluator(policy.graphdef, reference, eval_examples, config)
    loss_fn = unpaired_kto_objective(policy.graphdef, beta=config.beta, desirable_weight=config.desirable_weight,
                                     undesirable_weight=config.undesirable_weight)
    # With LoRA the reference is the policy with its adapters at zero; without, a frozen copy.
    params, trainable = (policy.params, policy.trainable) if policy.lora else (with_reference(policy.params, policy.params), POLICY_ONLY)
    prompts = prompts_of(data.eval, config.samples, "tokens")
    samples = {"before": greedy_samples(policy, policy.params, prompts, config.sample_tokens)}
    before = evaluate(policy.params)
    log_before(run, before)
    timer.lap("evaluate_before")

    state = train(run, config, policy.graphdef, params, trainable, loss_fn, data.train,
                  lambda state: evaluate(split_reference(state.full_params)[0]))
    timer.lap("train")
    trained = split_reference(state.full_params)[0]
    after = evaluate(trained)
    samples["after"] = greedy_samples(policy, trained, prompts, config.sample_tokens)
    weights = save_weights(run, config, policy, trained)
    timer.lap("evaluate_after_and_save")

    history = curves(run)
    plot_curves(run.path_for("kto.png"), history["eval"], ("accuracy", "margin", "reward_desirable", "reward_undesirable", "loss"),
                f"KTO, beta={config.beta}")
    for name, values in (("before", before), ("after", after)):
        run.console.print(f"{name:6s}: " + ", ".join(f"{k} {v:+.4f}" for k, v in values.items()))
    show_samples(run, samples)
    labels = np.array([int(data.train[i]["label"]) for i in range(len(data.train))])
    return {
        "model": config.model, "beta": config.beta, "data": data.report,
        "train_examples": len(labels), "train_desirable": int(np.sum(labels > 0)), "eval_examples": len(eval_examples["label"]),
        "before": before, "after": after, "curves": history, "samples": samples,
        "weights": weights, "seconds": timer.report(),
    }
