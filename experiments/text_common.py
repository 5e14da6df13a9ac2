"""What the generic text trainers (``jirl run sft``, ``dpo``, ``kto``) share: the config pieces
(model, data, tokenization, LoRA, compute dtype, training, samples), loading the policy with
its adapters, preparing the data in one call, held-out evaluation in chunks, greedy samples
before and after training, the saved weights and the curves read back from ``metrics.jsonl``.

A run is

    policy = load_policy(config)                       # pretrained model (+ LoRA), tokenizer
    data = prepare_data(kind, config, policy, run)     # TextDataset: train / eval examples
    ... the experiment's objective and its held-out metrics ...
    state = train(run, config, policy, loss_fn, data.train, evaluate)   # jirl.train.loop.fit
    save_weights(run, config, policy, state)           # adapters/ (LoRA) or params/ (full)

Saved weights: the run-folder layout of ``jirl.train.trained`` (``save_trained``): with LoRA,
``<run>/adapters`` holds the adapters alone, with ``lora.rank=0`` ``<run>/params`` every
parameter; ``load_trained(run)`` rebuilds the trained policy (adapters merged), which
``jirl run rl --set init=RUN`` starts from and ``jirl export RUN OUT`` writes for transformers.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jirl.config import ConfigError, at_least, config_to_dict, finite, in_range, non_negative, positive
from jirl.data.chat_tokenize import ChatTokenization
from jirl.data.examples import stack_examples
from jirl.data.loader import batch_iterator
from jirl.experiment import RunDir
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.models.lora import ADAPTERS, ATTENTION, add_lora
from jirl.models.pretrained import load_pretrained, pretrained_model
from jirl.models.transformer import Transformer
from jirl.train.logging import LogConfig, make_writers, replay_evaluation
from jirl.train.loop import TrainConfig, fit, make_optimizer
from jirl.train.step import TrainState, everything, init_train_state, make_update_step
from jirl.train.trained import save_trained



# --------------------------------------------------------------------------- config pieces


@dataclasses.dataclass
class LoRASettings:
    rank: Annotated[int, non_negative] = 8  # 0: full fine-tuning (every weight trains)
    alpha: Annotated[float, finite, positive] = 16.0  # the adapters' scale is alpha / rank
    targets: tuple[str, ...] = ATTENTION  # projections given adapters (MLP: gate_proj,up_proj,down_proj)


@dataclasses.dataclass
class TextConfig:
    """The settings every text trainer takes; each experiment adds its own."""

    seed: int = 0
    model: Annotated[str, pretrained_model] = "smollm2-135m-instruct"  # a preset name, a .gguf file, a Hugging Face folder or hub id
    data: str = ""  # a .jsonl[.gz] / .json[.gz] / .parquet file or a save_to_disk folder (relative paths: from the working directory)
    eval_data: str = ""  # held-out rows; empty: eval_fraction of data's prompts
    eval_fraction: Annotated[float, in_range(0.0, 1.0, open_low=True)] = 0.1  # share of prompts held out when eval_data is empty
    split_seed: int = 0  # which prompts are held out (apart from seed, so runs on one file share a split)
    eval_limit: Annotated[int, non_negative] = 64  # held-out examples scored at each evaluation (the first N; 0: all)
    columns: dict[str, str] = dataclasses.field(default_factory=dict)  # layout field = source field, e.g. prompt=question
    max_len: Annotated[int, at_least(2)] = 128  # tokens per buffer: prompt + response (longer responses are cut)
    max_prompt_len: Annotated[int, non_negative] = 64  # longer prompts keep their last tokens; 0: only max_len limits
    chat_template: str = "auto"  # auto: the model's own; none: plain text; or a jinja template
    lora: LoRASettings = dataclasses.field(default_factory=LoRASettings)
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype of the matmuls; weights, gradients and Adam stay float32
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)  # TensorBoard by default; log.wandb=true adds Weights & Biases
    samples: Annotated[int, non_negative] = 2  # held-out prompts decoded greedily before and after training
    sample_tokens: Annotated[int, at_least(1)] = 48  # new tokens per decoded sample

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("data: give the training rows, data=PATH (a .jsonl[.gz], .json[.gz] or .parquet file)")
        if self.max_prompt_len >= self.max_len:
            raise ConfigError(
                f"max_prompt_len={self.max_prompt_len} leaves no room for a response in max_len={self.max_len}; "
                "set max_prompt_len < max_len (0: no separate prompt limit)"
            )
        self.train.validate()
        self.log.validate()

    def tokenization(self) -> ChatTokenization:
        return ChatTokenization(self.max_len, self.max_prompt_len or None, self.chat_template)


# --------------------------------------------------------------------------- the policy


@dataclasses.dataclass
class Policy:
    """The model being trained: ``(graphdef, params)`` at the start of training (with LoRA, the
    pretrained weights plus adapters whose product is zero, so it computes the pretrained
    model's function exactly), its tokenizer, and the filter of the parameters that train."""

    graphdef: Any
    params: Any
    tokenizer: Any
    context: int  # the model's context length
    vocab_size: int
    trainable: Any  # nnx filter: ADAPTERS with LoRA, everything without
    lora: bool


def compute_dtype_graphdef(graphdef, model_config, dtype: str):
    """The graph of the same model computing in ``dtype`` (the parameters are unchanged: float32
    master weights; ``TransformerConfig.dtype`` sets each layer's compute dtype)."""
    if dtype == model_config.dtype:
        return graphdef
    abstract = nnx.eval_shape(lambda: Transformer(dataclasses.replace(model_config, dtype=dtype), rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def load_policy(config: TextConfig) -> Policy:
    """``config.model`` in ``config.dtype``, with rank-``lora.rank`` adapters unless the rank is 0;
    ``ConfigError`` when it has no tokenizer or no EOS token (responses end with it)."""
    base = load_pretrained(config.model)
    tokenizer = base.tokenizer
    if tokenizer is None:
        raise ConfigError(f"model {config.model!r} has no tokenizer (tokenizer.json); text training needs one")
    if tokenizer.eos_id is None:
        raise ConfigError(f"model {config.model!r} has no EOS token; responses end with it and buffers are padded with it")
    graphdef = compute_dtype_graphdef(base.graphdef, base.config, config.dtype)
    if config.lora.rank == 0:
        return Policy(graphdef, base.params, tokenizer, base.config.max_len, base.config.vocab_size, everything, False)
    model = add_lora(nnx.merge(graphdef, base.params), config.lora.rank, config.lora.alpha, config.lora.targets, seed=config.seed)
    graphdef, params = nnx.split(model)
    return Policy(graphdef, params, tokenizer, base.config.max_len, base.config.vocab_size, ADAPTERS, True)


def without_adapters(params):
    """LoRA parameters with every adapter set to zero: the pretrained model's function (the
    reference of a LoRA run, at no extra memory)."""
    adapters, rest = nnx.split_state(params, ADAPTERS, ...)
    return nnx.merge_state(rest, jax.tree_util.tree_map(jnp.zeros_like, adapters))


# --------------------------------------------------------------------------- data


def prepare_text_dataset(kind: str, data, **settings):
    """``jirl.data.text_datasets.prepare_text_dataset`` (imported when first needed: it brings
    tensorflow-datasets in, which listing or showing experiments does not need)."""
    from jirl.data.text_datasets import prepare_text_dataset as prepare

    return prepare(kind, data, **settings)


def prepare_data(kind: str, config: TextConfig, policy: Policy, run: RunDir):
    """The run's ``TextDataset`` of ``kind`` ("sft", "preference", "unpaired"), in one call:
    read, split, tokenized with the model's tokenizer and chat template, written under
    ``<run>/data``."""
    return prepare_text_dataset(
        kind, config.data, tokenizer=policy.tokenizer, tokenization=config.tokenization(), data_dir=run.path / "data",
        eval_data=config.eval_data or None, eval_fraction=config.eval_fraction, seed=config.split_seed,
        columns=dict(config.columns) or None, console=run.console, context=policy.context, vocab_size=policy.vocab_size,
    )


class ArraySource(Sequence):
    """Examples held as a dict of equal-length arrays, for the loader (``batch_iterator``)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.size = len(next(iter(self.arrays.values())))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):
        if not 0 <= i < self.size:
            raise IndexError(i)
        return {k: v[i] for k, v in self.arrays.items()}


def stacked(examples: Sequence[Mapping[str, np.ndarray]], limit: int = 0) -> dict[str, np.ndarray]:
    """The first ``limit`` examples (0: all) stacked into arrays."""
    count = len(examples) if limit == 0 else min(limit, len(examples))
    return stack_examples([examples[i] for i in range(count)])


def map_in_chunks(fn: Callable[[dict], dict], arrays: Mapping[str, np.ndarray], chunk: int) -> dict[str, np.ndarray]:
    """``fn`` (jitted, per-row outputs) over ``arrays`` in chunks of ``chunk`` rows, the last one
    padded with copies of row 0 (one compiled shape) and cut back; outputs concatenated."""
    rows = len(next(iter(arrays.values())))
    outputs = []
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        index = np.concatenate([np.arange(start, stop), np.zeros(chunk - (stop - start), np.int64)])
        out = jax.device_get(fn({k: jnp.asarray(v[index]) for k, v in arrays.items()}))
        outputs.append({k: np.asarray(v)[: stop - start] for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


# --------------------------------------------------------------------------- training


def train(run: RunDir, config: TextConfig, graphdef, params, trainable, loss_fn, source: Sequence,
          evaluate: Callable[[TrainState], dict]) -> TrainState:
    """``config.train.steps`` updates of ``loss_fn`` (``make_update_step``, AdamW with warm-up and
    cosine decay) on batches of ``source`` through ``fit``: metrics.jsonl, ``evaluate`` every
    ``train.eval_every`` steps (logged as ``eval/...``), checkpoints, ``--resume``; the writers
    ``config.log`` asks for (TensorBoard, Weights & Biases), which also get the step-0
    evaluation ``log_before`` wrote before they existed (once: not again on resume)."""
    optimizer = make_optimizer(config.train)
    state = init_train_state(params, optimizer, jax.random.key(config.seed), trainable=trainable)
    step = make_update_step(loss_fn, optimizer, config.train.accumulation_steps)
    writers = make_writers(config.log, run, config_to_dict(config))
    try:
        if not run.resume:  # a resumed run's writers got it when the run began
            replay_evaluation(run, writers, step=0)
        with batch_iterator(source, config.train.batch_size, seed=config.seed) as batches:
            return fit(run, step, state, batches, config=config_to_dict(config), train=config.train, resume=run.resume,
                       evaluate=evaluate, logger=writers)
    finally:
        for writer in writers:
            writer.close()


def log_before(run: RunDir, metrics: Mapping[str, float]) -> None:
    """The held-out metrics of the initial model, as step 0 of metrics.jsonl (not again on resume:
    the line is already there); ``train`` sends them on to the log writers it makes."""
    if not run.resume:
        run.log(0, **{f"eval/{k}": float(v) for k, v in metrics.items()})


def save_weights(run: RunDir, config: TextConfig, policy: Policy, params) -> str:
    """The trained weights, in the run-folder layout of ``jirl.train.trained`` (adapters alone for
    LoRA, else every parameter), which ``load_trained``, ``jirl run rl --set init=RUN`` and
    ``jirl export RUN OUT`` read; returns the folder."""
    lora = dataclasses.asdict(config.lora) if policy.lora else None
    return str(save_trained(run.path, config.train.steps, params, model=model_reference(config.model), lora=lora, dtype=config.dtype))


def model_reference(model: str) -> str:
    """``model`` as a later run reads it from any folder: an existing path made absolute, else
    the name as given (a preset or a hub id)."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def curves(run: RunDir) -> dict[str, list[dict]]:
    """``eval``: the ``eval/`` metrics of each evaluation (step 0 = before training); ``train``:
    each step's training metrics, both read back from metrics.jsonl."""
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [{"step": r["step"], **{k[5:]: v for k, v in r.items() if k.startswith("eval/")}} for r in rows
             if any(k.startswith("eval/") for k in r)]
    keep = ("loss", "grad_norm", "reward_accuracy", "reward_margin", "kl_reference")
    steps = [{"step": r["step"], **{k: r[k] for k in keep if k in r}} for r in rows if "loss" in r]
    return {"eval": evals, "train": steps}


def plot_curves(path, evals: list[dict], keys: Sequence[str], title: str) -> None:
    """One panel per held-out metric against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if evals and k in evals[0]]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot([e["step"] for e in evals], [e[key] for e in evals], marker="o")
        ax.set(xlabel="step", title=f"held-out {key}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- samples


def prompts_of(examples: Sequence[Mapping[str, np.ndarray]], count: int, token_key: str) -> tuple[np.ndarray, np.ndarray]:
    """The prompts (``token_key[:prompt_len]``) of the first ``count`` examples, left-aligned in a
    ``[count, longest]`` buffer."""
    rows = [examples[i] for i in range(min(count, len(examples)))]
    lens = np.array([int(r["prompt_len"]) for r in rows], np.int32)
    tokens = np.zeros((len(rows), int(lens.max())), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : lens[i]] = np.asarray(r[token_key])[: lens[i]]
    return tokens, lens


def greedy_samples(policy: Policy, params, prompts: tuple[np.ndarray, np.ndarray], max_new_tokens: int) -> list[dict]:
    """Greedy replies (``jirl.mdp.sampler.generate``) to ``prompts``, decoded: ``{"prompt", "reply"}``."""
    tokens, lens = prompts
    if len(lens) == 0:
        return []
    max_new_tokens = min(max_new_tokens, policy.context - tokens.shape[1])
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, eos_id=policy.tokenizer.eos_id, greedy=True)
    out = generate(policy.graphdef, params, jnp.asarray(tokens), jnp.asarray(lens), jax.random.key(0), sampling)
    decode = policy.tokenizer.decode
    return [
        {"prompt": decode(tokens[i, : lens[i]].tolist(), skip_special_tokens=True),
         "reply": decode(np.asarray(out.response_tokens[i, : int(out.response_lens[i])]).tolist(), skip_special_tokens=True)}
        for i in range(len(lens))
    ]


def show_samples(run: RunDir, samples: Mapping[str, list[dict]]) -> None:
    """Each held-out prompt with its greedy reply before and after training (as text, not markup)."""
    from rich.text import Text

    for before, after in zip(samples.get("before", []), samples.get("after", [])):
        run.console.print(Text.assemble(("prompt: ", "bold"), before["prompt"][-300:]), soft_wrap=True)
        run.console.print(Text.assemble(("before: ", "bold"), before["reply"]), soft_wrap=True)
        run.console.print(Text.assemble(("after:  ", "bold"), after["reply"]), soft_wrap=True)


class Timer:
    """Seconds per named stage: ``timer.lap("load")`` records the time since the last lap."""

    def __init__(self):
        self.started = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self.last
        self.last = now

    def report(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self.started}
