"""``jirl run irl``: inverse RL on real text -- a reward learned from your demonstrations, then RL
of the policy against it.

    jirl run irl                                     # GSM8K answers as demonstrations, SmolLM2-135M (2-core CPU default)
    jirl run irl --set init=runs/sft                 # start from a `jirl run sft` policy (AfD's sft_demo variant)
    jirl run irl --set data=demos.jsonl columns=     # your {prompt, completion} / {messages} / ShareGPT rows
    jirl run rl --set reward=runs/irl/reward         # the learned reward, reused by a later RL run

The method (``method=``, a name in ``TEXT_IRL_METHODS``; today ``afd``) is AfD, alignment from
demonstrations (Sun & van der Schaar 2024, "Inverse-RLignment"; ``jirl.irl.afd`` is its exact
version on enumerable tasks):

1. **Demonstrations** P: single-reply rows of ``data=`` (any SFT layout ``read_rows`` reads), in
   the model's chat template, replies cut at ``max_new_tokens``; ``eval_fraction`` of the prompts
   held out (``prepare_text_dataset``).
2. **Negatives** Q: one reply per demonstration prompt sampled (temperature 1, at most
   ``max_new_tokens``) from the starting policy -- ``model=``, or the weights of ``init=`` (a
   ``jirl run sft`` run). AfD calls the two ``init_demo`` and ``sft_demo``.
3. **Reward**: a sequence reward model -- the base model's frozen decoder and a linear head read
   at the reply's last token, ``jirl run rm``'s model with ``lora.rank=0`` -- trained as a
   discriminator on the pairs (demonstration, Q reply) of each prompt with ``reward.loss``
   (``bt``: -log sigma(r(x, y_demo) - r(x, y_Q))). The population optimum of BT on such pairs is

       r(x, y) = log P(y|x) / Q(y|x) + c(x),

   so the KL-regularised RL objective E[r] - beta KL(pi || Q) at beta = 1 has the optimum
   pi ∝ Q exp(r) = P: the demonstrator. Saved under ``<run>/reward`` in ``jirl run rm``'s layout.
4. **RL** of LoRA adapters from Q against r with the KL to Q in the reward (any ``ADVANTAGES`` x
   ``POLICY_LOSSES`` recipe, ``rl.*``; RLOO by default), through ``experiments.rl.train``. The
   reward model's score is normalised, (r - mean) / std over its training replies, so the RL
   loop's KL coefficient is ``beta / std``: the same optimum as ``beta`` on the raw r.

Held-out metrics: the discriminator's pairwise accuracy (± its standard error) on held-out
(demonstration, Q reply) pairs before and after training; per RL iteration the learned reward,
the ``k1`` and exact KL to Q; on held-out prompts before and after RL the learned reward of a
sampled reply, its exact KL, greedy replies decoded; and the check that does not go through the
learned reward at all: the held-out demonstrations' negative log-likelihood per reply token
under the policy before and after RL (``demo_nll``: pooled over tokens, and the paired per-reply
difference with its standard error), which AfD's optimum lowers (pi -> P).

``results.json``: ``method``, ``variant``, ``data``, ``reward_model`` (``jirl run rm``'s
results), ``kl_coef``, ``rl`` (``experiments.rl.train``'s results), ``demo_nll``, ``seconds``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import jax
import numpy as np
from flax import nnx
from rich.progress import Progress

from experiments import rl as rl_experiment
from experiments import rm as rm_experiment
from experiments.sft import GSM8K_COLUMNS, nll_metrics
from experiments.text_common import compute_dtype_graphdef, map_in_chunks, stacked
from jirl.config import Check, ConfigError, at_least, finite, in_range, non_negative, positive, registered
from jirl.data.chat_tokenize import ChatTokenization, left_aligned
from jirl.data.errors import DataError
from jirl.experiment import RunDir, register_experiment
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.models.lora import add_lora
from jirl.models.pretrained import load_pretrained, pretrained_model
from jirl.registry import Registry
from jirl.rewards.losses import PAIRWISE_LOSSES
from jirl.rl.loop import RLConfig
from jirl.train.logging import LogConfig
from jirl.train.loop import TrainConfig
from jirl.train.sft import SFT_KEYS, sft_token_log_probs
from jirl.train.trained import load_trained

# A text IRL method learns a reward from demonstrations: ``method(demos, config, run) -> TextReward``.
TEXT_IRL_METHODS: Registry[Callable] = Registry("text IRL method")


def text_method_names() -> str:
    return ", ".join(TEXT_IRL_METHODS.names())


def _known_text_method(name: str) -> bool:
    return name in TEXT_IRL_METHODS


def _method_hint(name: str) -> str:
    from jirl.irl.methods import IRL_METHODS

    if name in IRL_METHODS:
        return (f" ({name!r} is an IRL_METHODS entry for enumerable token tasks -- jirl run irl_recovery, "
                "jirl run quickstart --set irl=NAME -- with no text implementation yet)")
    return f" (got {name!r})"


text_method = Check(_known_text_method, lambda: "a text IRL method: one of " + text_method_names(), _method_hint)


# --------------------------------------------------------------------------- config


@dataclasses.dataclass
class RewardSettings:
    """The discriminator: a linear head on the base model's frozen last-token features."""

    loss: Annotated[str, registered(PAIRWISE_LOSSES)] = "bt"  # a PAIRWISE_LOSSES name (AfD: bt)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        steps=300, batch_size=32, learning_rate=1e-3, warmup_steps=10, eval_every=100, checkpoint_every=100_000,
        keep_checkpoints=1, log_every=50,
    ))
    feature_batch_size: Annotated[int, at_least(1)] = 16  # sequences per forward pass of the frozen decoder


@dataclasses.dataclass
class IRLTextConfig:
    seed: int = 0
    model: Annotated[str, pretrained_model] = "smollm2-135m-instruct"  # a preset name, a .gguf file or a Hugging Face folder
    init: Annotated[str, rl_experiment.sft_run] = ""  # a `jirl run sft` run: Q and the RL start are its weights (model= is then its model)
    data: str = "../shared/data/gsm8k/train.jsonl.gz"  # demonstrations: {prompt, completion}, {messages} or ShareGPT, one reply each
    columns: dict[str, str] = dataclasses.field(default_factory=lambda: dict(GSM8K_COLUMNS))  # layout field = source field; columns= for none
    eval_data: str = ""  # held-out demonstrations; empty: eval_fraction of data's prompts
    eval_fraction: Annotated[float, in_range(0.0, 1.0, open_low=True)] = 0.1
    split_seed: int = 0  # which prompts are held out
    chat_template: str = "auto"  # auto: the model's own; none: plain text; or a jinja template
    max_prompt_tokens: Annotated[int, at_least(1)] = 128  # longer prompts keep their last tokens
    max_new_tokens: Annotated[int, at_least(1)] = 96  # demonstrations are cut here; Q and the policy reply up to here
    demonstrations: Annotated[int, non_negative] = 128  # training demonstrations used (the first N; 0: all)
    eval_demonstrations: Annotated[int, at_least(1)] = 32  # held-out demonstrations (discriminator pairs, demo NLL)
    method: Annotated[str, text_method] = "afd"  # a TEXT_IRL_METHODS name
    reward: RewardSettings = dataclasses.field(default_factory=RewardSettings)
    beta: Annotated[float, finite, positive] = 1.0  # KL coefficient on the raw learned reward (AfD: 1, the optimum is then P); rl.kl_coef is replaced by beta / std
    lora: rl_experiment.LoRASettings = dataclasses.field(default_factory=rl_experiment.LoRASettings)
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype of the policy's and the discriminator's matmuls
    rl: RLConfig = dataclasses.field(default_factory=rl_experiment.default_rl)
    iterations: Annotated[int, at_least(1)] = 8  # RL iterations
    learning_rate: Annotated[float, finite, positive] = 3e-4  # Adam on the adapters only
    accumulation_steps: Annotated[int, at_least(1)] = 4
    exact_kl: bool = True  # log the full-vocabulary KL of each iteration's samples
    eval_prompts: Annotated[int, at_least(1)] = 16  # held-out prompts of the RL evaluation (one sampled and one greedy reply each)
    eval_every: Annotated[int, non_negative] = 0  # also evaluate every N RL iterations (0: before and after only)
    show_samples: Annotated[int, non_negative] = 2  # greedy replies kept per evaluation
    sample_batch_size: Annotated[int, at_least(1)] = 16  # prompts per generate call when sampling Q's replies
    log: LogConfig = dataclasses.field(default_factory=LogConfig)  # the RL stage's writers: TensorBoard by default, log.wandb=true

    def validate(self) -> None:
        self.reward.train.validate()
        self.rl_config().validate()

    def tokenization(self) -> ChatTokenization:
        return ChatTokenization(self.max_prompt_tokens + self.max_new_tokens, self.max_prompt_tokens, self.chat_template)

    def rl_config(self, kl_coef: float | None = None) -> rl_experiment.RLExperimentConfig:
        """The RL stage's settings as ``jirl run rl`` takes them."""
        rl = self.rl if kl_coef is None else dataclasses.replace(self.rl, kl_coef=kl_coef)
        return rl_experiment.RLExperimentConfig(
            seed=self.seed, model=self.model, init=self.init, max_prompt_tokens=self.max_prompt_tokens, max_new_tokens=self.max_new_tokens,
            lora=self.lora, rl=rl, iterations=self.iterations, learning_rate=self.learning_rate,
            accumulation_steps=self.accumulation_steps, exact_kl=self.exact_kl, eval_prompts=self.eval_prompts,
            eval_every=self.eval_every, show_samples=self.show_samples, dtype=self.dtype, log=self.log,
        )


# --------------------------------------------------------------------------- the pieces


@dataclasses.dataclass
class Demonstrations:
    """What a text IRL method reads: the starting policy Q (``graphdef``, ``params``), its tokenizer
    and base model name, and the train / held-out demonstrations as rows of ``tokens [W]``,
    ``prompt_len``, ``response_len``."""

    graphdef: Any
    params: Any
    tokenizer: Any
    backbone: str  # the base model the reward model's decoder is loaded from
    train: list[dict]
    eval: list[dict]


@dataclasses.dataclass
class TextReward:
    """A learned reward: ``score(tokens, prompt_lens, response_lens) -> [B]`` (normalised), the
    ``scale`` that turns it back into the raw reward (raw = scale * score + offset), the folder
    it is saved in and the method's results."""

    score: Callable
    scale: float
    folder: str
    results: dict


def single_reply(examples: Sequence[dict], where: str) -> list[dict]:
    """The demonstrations as ``{tokens, prompt_len, response_len}``; ``DataError`` for a row whose
    response holds more than one assistant turn (IRL pairs one reply with one sampled reply)."""
    rows = []
    for i, e in enumerate(examples):
        p, n = int(e["prompt_len"]), int(e["response_len"])
        if "loss_mask" in e and not np.all(np.asarray(e["loss_mask"])[p : p + n]):
            raise DataError(
                f"{where} demonstration {i} continues the conversation after the first assistant reply; jirl run irl "
                "learns from single-reply demonstrations (prompt + one reply): give rows with one assistant turn"
            )
        rows.append({"tokens": np.asarray(e["tokens"], np.int32), "prompt_len": np.int32(p), "response_len": np.int32(n)})
    return rows


def prompts_only(rows: Sequence[dict], eos_id: int) -> list[dict]:
    """The rows with every token after the prompt replaced by ``eos_id`` (``response_len`` 0): what
    a sampler or an RL ``PromptSet`` is given, so no demonstration token is in its buffers."""
    out = []
    for r in rows:
        tokens = np.full_like(r["tokens"], eos_id)
        tokens[: r["prompt_len"]] = r["tokens"][: r["prompt_len"]]
        out.append({"tokens": tokens, "prompt_len": r["prompt_len"], "response_len": np.int32(0)})
    return out


def sample_replies(graphdef, params, rows: Sequence[dict], max_prompt_tokens: int, sampling: SamplingConfig, key,
                   batch_size: int, progress: Progress | None = None) -> list[dict]:
    """One reply of ``(graphdef, params)`` to each row's prompt, as ``{tokens [W], prompt_len,
    response_len}`` with the prompt unchanged (``W = max_prompt_tokens + max_new_tokens``);
    ``batch_size`` prompts per ``generate`` call (one compiled shape)."""
    arrays = {"tokens": np.stack([r["tokens"][:max_prompt_tokens] for r in prompts_only(rows, sampling.eos_id)]),
              "prompt_len": np.array([r["prompt_len"] for r in rows], np.int32),
              "index": np.arange(len(rows), dtype=np.int32)}
    task = progress.add_task("sampling Q's replies", total=len(rows)) if progress else None

    def replies(batch):
        out = generate(graphdef, params, batch["tokens"], batch["prompt_len"], jax.random.fold_in(key, batch["index"][0]), sampling)
        if progress:
            progress.update(task, advance=len(batch["index"]))
        return {"tokens": out.tokens, "response_len": out.response_lens}

    out = map_in_chunks(replies, arrays, batch_size)
    return [{"tokens": out["tokens"][i].astype(np.int32), "prompt_len": arrays["prompt_len"][i],
             "response_len": np.int32(out["response_len"][i])} for i in range(len(rows))]


def pair_records(positives: Sequence[dict], negatives: Sequence[dict], width: int, eos_id: int) -> list[dict]:
    """Preference records (``tokenize_preference_row``'s layout) preferring each positive to the
    negative that answers the same prompt."""
    return [{"chosen": left_aligned(p["tokens"][: p["prompt_len"] + p["response_len"]], width, eos_id),
             "rejected": left_aligned(n["tokens"][: n["prompt_len"] + n["response_len"]], width, eos_id),
             "prompt_len": np.int32(p["prompt_len"]), "chosen_len": np.int32(p["response_len"]),
             "rejected_len": np.int32(n["response_len"]), "margin": np.float32(0.0)}
            for p, n in zip(positives, negatives)]


@TEXT_IRL_METHODS.register("afd")
def afd_text(demos: Demonstrations, config: IRLTextConfig, run: RunDir) -> TextReward:
    """AfD: a BT discriminator of demonstrations (preferred) vs Q's replies to the same prompts,
    on the base model's frozen features; its normalised score is the reward."""
    width = config.max_prompt_tokens + config.max_new_tokens
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, eos_id=demos.tokenizer.eos_id, temperature=1.0)
    key = jax.random.key(config.seed)
    with Progress(console=run.console) as progress:
        negatives = {name: sample_replies(demos.graphdef, demos.params, rows, config.max_prompt_tokens, sampling,
                                          jax.random.fold_in(key, i), config.sample_batch_size, progress)
                     for i, (name, rows) in enumerate((("train", demos.train), ("eval", demos.eval)))}
    pairs = {name: pair_records(getattr(demos, name), negatives[name], width, demos.tokenizer.eos_id) for name in negatives}
    rm_config = rm_experiment.RMConfig(
        seed=config.seed, model=demos.backbone, max_len=width, max_prompt_len=config.max_prompt_tokens,
        chat_template=config.chat_template, loss=config.reward.loss, lora=rm_experiment.LoRASettings(rank=0), dtype=config.dtype,
        feature_batch_size=config.reward.feature_batch_size, train=config.reward.train,
    )
    model, _, split = rm_experiment.build_model(demos.backbone, rm_config.lora, rm_config.dtype, config.seed)
    reward_run = RunDir(run.path / "reward", console=run.console)
    reward_run.path.mkdir(parents=True, exist_ok=True)
    results = rm_experiment.fit_on_pairs(rm_config, reward_run, model, split, pairs["train"], pairs["eval"])
    reward_run.write_json("results.json", results)
    normalization = results["normalization"]
    score = rm_experiment.normalized_score_fn(model, normalization["mean"], normalization["std"])
    return TextReward(lambda *batch: np.asarray(score(*batch)), normalization["std"], str(reward_run.path), results)


# --------------------------------------------------------------------------- the experiment


def load_start(config: IRLTextConfig):
    """``(base, Q's parameters, the base model's name)``: ``model=``, or ``init=``'s trained weights."""
    if config.init:
        base, params, run_config = load_trained(config.init)
        return base, params, run_config.get("model", config.model)
    base = load_pretrained(config.model)
    return base, base.params, config.model


@register_experiment("irl", config=IRLTextConfig,
                     description="IRL on text: a reward learned from demonstrations (AfD), then RL of the policy (LoRA) against it")
def run(config: IRLTextConfig, run: RunDir) -> dict:
    started = time.perf_counter()
    seconds = {}
    base, start, backbone = load_start(config)
    if base.tokenizer is None:
        raise ConfigError(f"model {config.model!r} has no tokenizer; irl tokenises the demonstrations with it")
    if config.max_prompt_tokens + config.max_new_tokens > base.config.max_len:
        raise ConfigError(f"max_prompt_tokens + max_new_tokens = {config.max_prompt_tokens + config.max_new_tokens} exceed "
                          f"the model's context of {base.config.max_len} tokens; lower one of them")
    from jirl.data.text_datasets import prepare_text_dataset  # brings tensorflow-datasets in: only when run

    data = prepare_text_dataset(
        "sft", config.data, tokenizer=base.tokenizer, tokenization=config.tokenization(), data_dir=run.path / "data",
        eval_data=config.eval_data or None, eval_fraction=config.eval_fraction, seed=config.split_seed,
        columns=dict(config.columns) or None, console=run.console, context=base.config.max_len,
        vocab_size=base.config.vocab_size,
    )
    count = len(data.train) if config.demonstrations == 0 else min(config.demonstrations, len(data.train))
    compute = compute_dtype_graphdef(base.graphdef, base.config, config.dtype)  # Q computes in config.dtype
    demos = Demonstrations(compute, start, base.tokenizer, backbone,
                           single_reply([data.train[i] for i in range(count)], "training"),
                           single_reply([data.eval[i] for i in range(min(config.eval_demonstrations, len(data.eval)))], "held-out"))
    if not demos.eval:
        raise ConfigError("no held-out demonstrations: raise eval_fraction or give eval_data")
    seconds["load"], tick = time.perf_counter() - started, time.perf_counter()

    learned = TEXT_IRL_METHODS.get(config.method)(demos, config, run)
    seconds["reward"], tick = time.perf_counter() - tick, time.perf_counter()

    policy = add_lora(nnx.merge(compute, start), config.lora.rank, config.lora.alpha, config.lora.targets, seed=config.seed)
    graphdef, q_params = nnx.split(policy)
    eos = base.tokenizer.eos_id
    prompts, held_out = (rl_experiment.prompt_set(prompts_only(rows, eos), [{} for _ in rows], config.max_prompt_tokens,
                                                  config.max_new_tokens, eos) for rows in (demos.train, demos.eval))
    demo_nll = reply_nll_evaluator(graphdef, stacked(demos.eval), config.sample_batch_size)
    nll_before = demo_nll(q_params)
    kl_coef = config.beta / learned.scale
    run.console.print(f"RL from Q against the learned reward: KL coefficient beta / std = {config.beta} / {learned.scale:.4f} = {kl_coef:.4f}")
    rl_config = dataclasses.replace(config.rl_config(kl_coef), model=backbone)
    rl_results, params = rl_experiment.train(rl_config, run, graphdef, q_params, base.tokenizer, prompts, held_out,
                                             learned.score)
    nll_after = demo_nll(params)
    change = np.asarray(nll_after.pop("per_reply")) - np.asarray(nll_before.pop("per_reply"))
    seconds["rl"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started

    results = {
        "method": config.method, "variant": "sft_demo" if config.init else "init_demo", "model": backbone, "init": config.init,
        "data": data.report, "demonstrations": {"train": len(demos.train), "eval": len(demos.eval)},
        "reward_model": learned.results, "reward_folder": learned.folder, "kl_coef": kl_coef, "rl": rl_results,
        "demo_nll": {"before": nll_before, "after": nll_after, "change_per_reply": {
            "mean": float(change.mean()), "se": float(change.std(ddof=1) / np.sqrt(len(change))) if len(change) > 1 else float("nan"),
            "replies": len(change)}},
        "seconds": seconds,
    }
    print_report(run, results)
    plot(run.path_for("irl.png"), results)
    return results


def reply_nll_evaluator(graphdef, examples: dict[str, np.ndarray], chunk: int) -> Callable[[Any], dict]:
    """``evaluate(params)`` on the held-out demonstrations: ``nll`` (the mean of -log pi over all
    their reply tokens, as ``jirl run sft`` reports it), ``tokens``, and ``per_reply`` (each
    reply's own token mean, for a paired before/after difference)."""
    arrays = {k: examples[k] for k in SFT_KEYS}

    @jax.jit
    def score(params, batch):
        log_probs, mask = sft_token_log_probs(graphdef, params, batch)
        return {"log_probs": log_probs, "mask": mask}

    def evaluate(params) -> dict:
        out = map_in_chunks(lambda batch: score(params, batch), arrays, chunk)
        mask = np.asarray(out["mask"], bool)
        nll = -np.where(mask, np.asarray(out["log_probs"], np.float64), 0.0)
        per_reply = nll.sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
        return {**nll_metrics(out["log_probs"], mask), "per_reply": per_reply.tolist()}

    return evaluate


def print_report(run: RunDir, results: dict) -> None:
    rm, rl = results["reward_model"], results["rl"]
    run.console.print(f"discriminator: held-out accuracy {rm['before']['accuracy']:.3f} -> {rm['after']['accuracy']:.3f} "
                      f"± {rm['after']['accuracy_se']:.3f} on {rm['after']['pairs']} pairs")
    run.console.print(f"RL: held-out learned reward {rl['before']['reward']:.3f} -> {rl['after']['reward']:.3f} at exact KL "
                      f"{rl['after']['kl']:.3f}; demonstrations' NLL per token {results['demo_nll']['before']['nll']:.4f} -> "
                      f"{results['demo_nll']['after']['nll']:.4f} (per reply: {results['demo_nll']['change_per_reply']['mean']:+.4f} "
                      f"± {results['demo_nll']['change_per_reply']['se']:.4f})")
    rl_experiment.print_report(run, rl)


def plot(path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    evals = results["reward_model"]["curves"]["eval"]
    axes[0].errorbar([e["step"] for e in evals], [e["accuracy"] for e in evals], yerr=[e["accuracy_se"] for e in evals],
                     marker="o", capsize=3)
    axes[0].axhline(0.5, color="gray", ls=":", lw=1)
    axes[0].set(xlabel="step", title="discriminator held-out accuracy")
    curves = results["rl"]["curves"]
    steps = np.arange(1, len(curves["reward"]) + 1)
    axes[1].plot(steps, curves["reward"])
    axes[1].set(xlabel="RL iteration", title="learned reward (normalised)")
    for name in ("kl_to_reference", "exact_kl_to_reference"):
        if name in curves:
            axes[2].plot(steps, curves[name], label=name)
    axes[2].set(xlabel="RL iteration", title="KL to Q [nats]")
    axes[2].legend(fontsize=7)
    nll = results["demo_nll"]
    axes[3].bar(["before RL", "after RL"], [nll["before"]["nll"], nll["after"]["nll"]])
    axes[3].set(title="held-out demonstrations' NLL / token")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
