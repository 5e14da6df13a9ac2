"""``jirl run rl``: RL of a pretrained policy on prompts from a file, against a verifier, a trained
reward model or a DPO policy's implicit reward.

    jirl run rl                                   # GSM8K train prompts, exact-match verifier (2-core CPU default)
    jirl run rl --set iterations=2 eval_prompts=4 # smoke run
    jirl run rl --set reward=runs/rm data=prompts.jsonl columns=   # a `jirl run rm` reward model, a {prompt} file
    jirl run rl --set reward=dpo_implicit:runs/dpo_policy rl.advantage=grpo rl.policy_loss=ppo
    jirl run rl --set preset=gpu                  # a GPU-sized run (GPU_PRESET)

The pieces, each from elsewhere in jirl:

- **policy**: ``model=`` (``load_pretrained``: a preset, a ``.gguf`` file or a Hugging Face folder)
  with rank-``lora.rank`` LoRA adapters; only the adapters train. The reference is the model
  itself (the adapters start at zero), so the KL to it is the drift the adapters cause.
- **prompts**: the prompt rows of ``data=`` (JSONL/JSON/Parquet, any layout ``read_rows`` reads;
  ``columns`` renames fields, GSM8K's ``question`` -> ``prompt`` by default), in the model's chat
  template (``prepare_text_dataset``); prompts longer than ``max_prompt_tokens`` are left out.
  Held-out prompts: ``eval_data=``, else the ``eval_fraction`` of ``data`` split off by prompt.
- **reward** (``reward=``, sequence-level, paid at a response's last token, DESIGN.md contract 4):
  ``verifier:gsm8k`` (exact match of the final answer with the row's ``answer_field``,
  ``jirl.rewards.verifiable``), the folder of a ``jirl run rm`` run (``experiments.rm.
  load_reward_model``), or ``dpo_implicit:MODEL_OR_RUN`` (``beta log pi(y|x)/pi_ref(y|x)`` of a
  DPO-trained policy against ``model=``, ``jirl.preference.implicit``).
- **RL**: any ``ADVANTAGES`` x ``POLICY_LOSSES`` recipe (``rl.*``, an ``RLConfig``) through
  ``jirl.rl.loop.make_rl_iteration`` with a host-side reward.

Every iteration logs (``metrics.jsonl``) the reward, ``kl_to_reference`` (the ``k1`` sum over the
sampled tokens), ``exact_kl_to_reference`` (``exact_sequence_kl``), the response length and the
truncated fraction. Before and after training, and every ``eval_every`` iterations, it evaluates
the held-out prompts (``evaluate``). ``results.json``: ``data``, ``before``/``after``/
``evaluations``, ``curves``, ``samples``, ``seconds``; the adapters are saved under ``adapters/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from experiments.text_common import compute_dtype_graphdef, model_reference
from jirl.config import Check, ConfigError, config_to_dict, at_least, finite, non_negative, positive, registered
from jirl.data.chat_tokenize import ChatTokenization
from jirl.data.errors import DataError
from jirl.data.formats import read_rows
from jirl.experiment import RunDir, register_experiment
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.models.lora import ADAPTERS, ATTENTION, add_lora
from jirl.models.pretrained import is_model_name, load_pretrained, pretrained_model
from jirl.models.scoring import gather_response, response_mask
from jirl.preference.implicit import implicit_sequence_rewards
from jirl.registry import Registry
from jirl.rewards.models import terminal_rewards
from jirl.rewards.verifiable import exact_match_rewards
from jirl.rl.kl import full_kl_terms
from jirl.rl.loop import RLConfig, RLState, init_rl_state, make_rl_iteration
from jirl.train.logging import LogConfig, make_writers
from jirl.train.step import init_train_state
from jirl.train.trained import is_trained_run, load_trained, save_trained

GSM8K_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "train.jsonl.gz"

# ``--set preset=gpu`` replaces these keys where they still hold their CPU defaults.
GPU_PRESET = {
    "iterations": 200, "rl.prompts_per_iteration": 32, "rl.group_size": 8, "max_new_tokens": 256,
    "max_prompt_tokens": 256, "eval_prompts": 256, "eval_every": 25, "learning_rate": 2e-4,
}

# --------------------------------------------------------------------------- rewards

# A reward kind builds ``score(tokens, prompt_lens, response_lens) -> [B]`` (host numpy) from
# its argument (the text after ``KIND:``) and the ``RewardInputs`` of the run.
REWARDS: Registry[Callable] = Registry("reward")
# A verifier scores decoded replies against the rows' references: ``(replies, references) -> [N]``.
VERIFIERS: Registry[Callable] = Registry("verifier")
VERIFIERS.register("gsm8k", exact_match_rewards)
RUN_FOLDER_KIND = "rm"  # a bare folder names a `jirl run rm` run


def reward_forms() -> str:
    """The forms ``reward=`` takes, for messages."""
    return (f"verifier:NAME (NAME one of {', '.join(VERIFIERS.names())}), the folder of a `jirl run rm` run, or "
            "dpo_implicit:MODEL_OR_RUN_FOLDER (a DPO-trained policy; its reference is model=)")


def parse_reward(spec: str) -> tuple[str, str]:
    """``(kind, argument)`` of a ``reward=`` value; ``ConfigError`` listing the forms when it is none."""
    kind, sep, argument = spec.partition(":")
    if sep and kind in REWARDS and kind != RUN_FOLDER_KIND:
        if kind == "verifier" and argument not in VERIFIERS:
            raise ConfigError(f"reward={spec!r}: unknown verifier {argument!r}; the forms are {reward_forms()}")
        if kind == "dpo_implicit" and not is_model_name(argument):
            raise ConfigError(f"reward={spec!r}: {argument!r} is no model or run folder; the forms are {reward_forms()}")
        return kind, argument
    if spec and Path(spec).expanduser().is_dir():
        return RUN_FOLDER_KIND, spec
    raise ConfigError(f"reward={spec!r} is not a reward jirl knows; the forms are {reward_forms()}")


def _is_reward_spec(spec: str) -> bool:
    try:
        parse_reward(spec)
    except ConfigError:
        return False
    return True


reward_spec = Check(_is_reward_spec, reward_forms, lambda spec: f" (got {spec!r})")


@dataclasses.dataclass
class RewardInputs:
    """What a reward kind may read: the policy's tokenizer and starting model (the reference, no
    adapters), the prompts' source rows keyed by their prompt tokens, the horizon and the config."""

    tokenizer: Any
    reference: Any  # (graphdef, params) of the policy's starting model
    rows_by_prompt: dict[tuple, dict]  # prompt token ids -> the row's extra fields
    horizon: int
    config: Any


def decode_replies(tokenizer, tokens, prompt_lens, response_lens) -> list[str]:
    """The text of each response (special tokens, EOS among them, left out)."""
    return [tokenizer.decode(row[p : p + n].tolist(), skip_special_tokens=True)
            for row, p, n in zip(np.asarray(tokens), np.asarray(prompt_lens), np.asarray(response_lens))]


@REWARDS.register("verifier")
def verifier_reward(name: str, inputs: RewardInputs):
    """Verifier ``name``'s score of each decoded reply against its prompt row's ``answer_field``."""
    verify, field = VERIFIERS.get(name), inputs.config.answer_field
    missing = [row for row in inputs.rows_by_prompt.values() if row.get(field) is None]
    if missing:
        fields = sorted({key for row in inputs.rows_by_prompt.values() for key in row})
        raise DataError(
            f"reward=verifier:{name} reads each prompt row's reference answer from the field {field!r} "
            f"(answer_field), but {len(missing)} prompt rows lack it (the rows' other fields: {fields}); "
            "set answer_field or map the field with columns"
        )

    def score(tokens, prompt_lens, response_lens):
        references = [inputs.rows_by_prompt[tuple(row[:p].tolist())][field] for row, p in zip(np.asarray(tokens), np.asarray(prompt_lens))]
        return verify(decode_replies(inputs.tokenizer, tokens, prompt_lens, response_lens), references)

    return score


@REWARDS.register(RUN_FOLDER_KIND)
def reward_model_reward(folder: str, inputs: RewardInputs):
    """The normalised score of a ``jirl run rm`` run's reward model (``experiments.rm.
    load_reward_model(folder).score_fn(tokens, prompt_lens, response_lens) -> [B]``), which reads
    the policy's token ids: it must have been trained with the policy's tokenizer."""
    from experiments.rm import load_reward_model
    from jirl.data.text_datasets import tokenizer_digest

    loaded = load_reward_model(folder)
    if tokenizer_digest(loaded.tokenizer) != tokenizer_digest(inputs.tokenizer):
        raise ConfigError(
            f"reward={folder}: the reward model reads tokens of {loaded.tokenizer!r}, the policy writes tokens of "
            f"{inputs.tokenizer!r}; train the reward model on the policy's model (or its tokenizer)"
        )
    return loaded.score_fn


@REWARDS.register("dpo_implicit")
def dpo_implicit_reward(source: str, inputs: RewardInputs):
    """``beta log pi(y|x) / pi_ref(y|x)`` of a DPO-trained policy: the folder of a ``jirl run dpo``
    run (pi = its trained weights, pi_ref = its base model, beta = its beta) or a model (pi = the
    model, pi_ref = the policy's starting model, beta = ``dpo_beta``). Both must share the
    policy's vocabulary."""
    if is_run_folder(source):
        dpo, params, run_config = load_run_weights(source)
        if "beta" not in run_config:
            raise ConfigError(
                f"reward=dpo_implicit:{source}: that run has no beta in its config (an sft run?); give the folder of a "
                "`jirl run dpo` (or kto) run, or a model with dpo_beta="
            )
        reference = (dpo.graphdef, dpo.params)
        beta = run_config["beta"]
    else:
        dpo = load_pretrained(source)
        params, reference, beta = dpo.params, inputs.reference, inputs.config.dpo_beta
    vocab = nnx.merge(*inputs.reference).config.vocab_size
    if dpo.config.vocab_size != vocab:
        raise ConfigError(
            f"reward=dpo_implicit:{source} has a vocabulary of {dpo.config.vocab_size} tokens, the policy one of "
            f"{vocab}; the DPO policy must share the policy's tokenizer"
        )
    scores = jax.jit(functools.partial(implicit_sequence_rewards, dpo.graphdef, horizon=inputs.horizon, beta=beta,
                                       reference_graphdef=reference[0]))
    return lambda tokens, prompt_lens, response_lens: np.asarray(
        scores(params, reference[1], jnp.asarray(tokens), jnp.asarray(prompt_lens), jnp.asarray(response_lens)))


# --------------------------------------------------------------------------- weights of earlier runs


is_run_folder = is_trained_run  # a `jirl run sft|dpo|kto` folder with saved weights
load_run_weights = load_trained  # (base, params with adapters merged, run config) of such a folder


class RecordingReward:
    """``reward_fn(tokens, prompt_lens, response_lens) -> [B, horizon]`` for ``collect``: the
    host-side ``score`` paid at each response's last token, keeping the batches it scored
    (``calls``) so that the iteration's samples can be read again (``exact_sequence_kl``)."""

    def __init__(self, score, horizon: int):
        self.score, self.horizon, self.calls = score, horizon, []

    def __call__(self, tokens, prompt_lens, response_lens):
        self.calls.append((tokens, prompt_lens, response_lens))
        scores = jnp.asarray(np.asarray(self.score(tokens, prompt_lens, response_lens), np.float32))
        return terminal_rewards(scores, jnp.asarray(response_lens), self.horizon)


# --------------------------------------------------------------------------- config

sft_run = Check(lambda folder: not folder or is_run_folder(folder), "empty or the folder of a `jirl run sft|dpo|kto` run (config.json and adapters/ or params/)")


@dataclasses.dataclass
class LoRASettings:
    rank: Annotated[int, at_least(1)] = 8
    alpha: Annotated[float, finite, positive] = 16.0
    targets: tuple[str, ...] = ATTENTION


def default_rl() -> RLConfig:
    """RLOO (REINFORCE with a leave-one-out baseline) with the KL to the reference in the reward."""
    return RLConfig(advantage="rloo", policy_loss="pg", group_size=4, prompts_per_iteration=8, kl_coef=0.05)


@dataclasses.dataclass
class RLExperimentConfig:
    seed: int = 0
    preset: Annotated[str, registered(("cpu", "gpu"))] = "cpu"  # "cpu" or "gpu" (GPU_PRESET)
    model: Annotated[str, pretrained_model] = "smollm2-135m-instruct"  # a preset name, a .gguf file or a Hugging Face folder
    init: Annotated[str, sft_run] = ""  # the folder of a `jirl run sft` (or dpo, kto) run: the policy and reference start from its weights (model= is then its model)
    data: str = str(GSM8K_TRAIN)  # prompt rows: .jsonl[.gz], .json[.gz], .parquet or a save_to_disk folder
    columns: dict[str, str] = dataclasses.field(default_factory=lambda: {"prompt": "question"})  # layout field -> source field (columns= for none)
    eval_data: str = ""  # held-out prompt rows (default: eval_fraction of data, split by prompt)
    eval_fraction: Annotated[float, finite, positive] = 0.1
    data_dir: str = ""  # where the tokenized prompts are written (default: <run>/data)
    chat_template: str = "auto"  # "auto" (the model's), "none" (plain text) or a jinja template
    max_prompt_tokens: Annotated[int, at_least(1)] = 128  # longer prompts (chat template included) are left out
    max_new_tokens: Annotated[int, at_least(1)] = 48
    reward: Annotated[str, reward_spec] = "verifier:gsm8k"  # verifier:NAME, a `jirl run rm` folder, dpo_implicit:MODEL
    answer_field: str = "answer"  # the prompt rows' reference answer (verifier rewards)
    dpo_beta: Annotated[float, finite, positive] = 0.1  # beta of the dpo_implicit reward (the DPO run's beta)
    lora: LoRASettings = dataclasses.field(default_factory=LoRASettings)
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype of the policy's matmuls (parameters and Adam stay float32)
    rl: RLConfig = dataclasses.field(default_factory=default_rl)
    iterations: Annotated[int, at_least(1)] = 20
    learning_rate: Annotated[float, finite, positive] = 3e-4  # Adam on the adapters only
    accumulation_steps: Annotated[int, at_least(1)] = 4  # micro-batches per minibatch update (the same update, 1/N the memory)
    exact_kl: bool = True  # log the full-vocabulary KL of each iteration's samples (two more forward passes)
    eval_prompts: Annotated[int, at_least(1)] = 16  # held-out prompts evaluated (one sampled and one greedy reply each)
    eval_every: Annotated[int, non_negative] = 0  # also evaluate every N iterations (0: before and after only)
    show_samples: Annotated[int, non_negative] = 3  # greedy replies kept in results.json per evaluation
    log: LogConfig = dataclasses.field(default_factory=LogConfig)  # TensorBoard by default; log.wandb=true adds Weights & Biases

    def validate(self) -> None:
        """Micro-batches must split each minibatch evenly."""
        self.log.validate()
        rows = self.rl.prompts_per_iteration * self.rl.group_size // self.rl.minibatches
        if rows % self.accumulation_steps:
            raise ConfigError(f"accumulation_steps={self.accumulation_steps} does not divide the {rows} samples of a minibatch")


def apply_preset(config: RLExperimentConfig) -> RLExperimentConfig:
    """``preset=gpu`` sets ``GPU_PRESET``'s keys that still hold their CPU defaults."""
    from jirl.config import preset_over_defaults

    return config if config.preset == "cpu" else preset_over_defaults(config, GPU_PRESET)


# --------------------------------------------------------------------------- prompts as a task


@dataclasses.dataclass(eq=False)
class PromptSet:
    """What an RL iteration needs of a task: prompts to sample, a horizon and an EOS id.
    ``tokens [N, width]`` are left-aligned chat-formatted prompts padded with EOS; ``rows`` the
    source rows' extra fields (reference answers), one per prompt."""

    tokens: np.ndarray
    lens: np.ndarray
    rows: list[dict]
    horizon: int
    eos_id: int

    def sample_prompts(self, key, batch_size: int):
        index = jax.random.choice(key, len(self.lens), (batch_size,))
        return jnp.asarray(self.tokens)[index], jnp.asarray(self.lens)[index]


def prompt_set(examples, rows: list[dict], max_prompt_tokens: int, horizon: int, eos_id: int) -> PromptSet:
    """The examples whose prompt fits ``max_prompt_tokens`` (their buffers cut to the longest)."""
    kept = [(e, r) for e, r in zip(examples, rows) if int(e["prompt_len"]) <= max_prompt_tokens]
    if not kept:
        raise ConfigError(f"no prompt fits max_prompt_tokens={max_prompt_tokens}; raise it")
    lens = np.array([int(e["prompt_len"]) for e, _ in kept], np.int32)
    tokens = np.stack([np.asarray(e["tokens"])[: lens.max()] for e, _ in kept]).astype(np.int32)
    return PromptSet(tokens, lens, [r for _, r in kept], horizon, eos_id)


def prompt_tokenization(config: RLExperimentConfig) -> ChatTokenization:
    """Prompt records two tokens wider than ``max_prompt_tokens``: a prompt that had to be cut
    keeps the width less one, ``max_prompt_tokens + 1`` tokens, so ``prompt_set`` sees it is too
    long (a cut to exactly the limit would look like a prompt that fits)."""
    return ChatTokenization(max_len=config.max_prompt_tokens + 2, chat_template=config.chat_template)


def load_prompts(config: RLExperimentConfig, tokenizer, context: int, run: RunDir) -> tuple[PromptSet, PromptSet, dict]:
    """Train and held-out ``PromptSet``s of ``data``/``eval_data`` and a report. Records are
    ``max_prompt_tokens + 2`` wide: a prompt that had to be cut keeps ``max_prompt_tokens + 1``
    tokens (the width less one), so it is seen by its length (and left out); each
    keeps its source row's extra fields (``read_rows`` split as ``prepare_text_dataset`` splits)."""
    from jirl.data.text_datasets import prepare_text_dataset, split_by_prompt  # brings tensorflow-datasets in: only when run

    columns = config.columns or None
    if config.max_prompt_tokens + config.max_new_tokens > context:
        raise ConfigError(
            f"max_prompt_tokens={config.max_prompt_tokens} + max_new_tokens={config.max_new_tokens} exceed the model's "
            f"context of {context} tokens; lower one of them"
        )
    tokenization = prompt_tokenization(config)
    dataset = prepare_text_dataset(
        "prompt", config.data, tokenizer=tokenizer, tokenization=tokenization, data_dir=config.data_dir or run.path / "data",
        eval_data=config.eval_data or None, eval_fraction=config.eval_fraction, columns=columns, console=run.console,
        context=context,
    )
    rows, _ = read_rows(config.data, "prompt", columns=columns)
    splits = {"eval": read_rows(config.eval_data, "prompt", columns=columns)[0]} if config.eval_data else split_by_prompt(rows, config.eval_fraction, 0)
    splits.setdefault("train", rows)
    sets = {}
    for name, examples in (("train", dataset.train), ("eval", dataset.eval)):
        if len(examples) != len(splits[name]):
            raise DataError(f"the {name} split holds {len(examples)} examples but {len(splits[name])} rows; rebuild {dataset.report['path']}")
        sets[name] = prompt_set(examples, [row.extra for row in splits[name]], config.max_prompt_tokens, config.max_new_tokens, tokenizer.eos_id)
    report = {"train_prompts": len(sets["train"].lens), "eval_prompts": len(sets["eval"].lens),
              "too_long": {k: len(splits[k]) - len(sets[k].lens) for k in sets}, "dataset": dataset.report}
    return sets["train"], sets["eval"], report


def rows_by_prompt(*sets: PromptSet) -> dict[tuple, dict]:
    """Each prompt's token ids -> its row's extra fields (what a host reward looks answers up by)."""
    return {tuple(tokens[:n].tolist()): row for s in sets for tokens, n, row in zip(s.tokens, s.lens, s.rows)}


# --------------------------------------------------------------------------- KL and evaluation


@functools.partial(jax.jit, static_argnums=(0, 6, 7, 8))
def exact_sequence_kl(graphdef, params, ref_params, tokens, prompt_lens, response_lens, horizon: int, temperature: float = 1.0,
                      rows_per_pass: int = 8):
    """Per-response KL ``[B]``: the exact next-token KL over the whole vocabulary at each visited
    state, ``sum_v pi(v|s_t) (log pi(v|s_t) - log pi_ref(v|s_t))`` (``full_kl_terms``, at the
    sampling temperature), summed over the response's steps.

    "Exact per step": the sum over the vocabulary replaces the one sampled token of ``k1``; which
    states are visited is still a sample, so the batch mean is an unbiased estimate of the
    sequence KL(pi || pi_ref) (chain rule) that is never negative. Both models run once on the
    buffers, the LM head only at response steps, ``rows_per_pass`` rows at a time (the
    ``[rows, horizon, vocab]`` logits bound the memory)."""

    def row_kl(row):
        tokens, prompt_lens, response_lens = (x[None] for x in row)

        def step_logits(params):
            model = nnx.merge(graphdef, params)
            return model.head(gather_response(model(tokens).hidden, prompt_lens, horizon, shift=-1))

        terms = full_kl_terms(step_logits(params), step_logits(ref_params), temperature)
        return jnp.sum(jnp.where(response_mask(response_lens, horizon), terms, 0.0), axis=1)[0]

    return jax.lax.map(row_kl, (tokens, prompt_lens, response_lens), batch_size=rows_per_pass)


def evaluate(key, graphdef, params, ref_params, prompts: PromptSet, score, tokenizer, count: int, temperature: float,
             show: int) -> dict:
    """On the first ``count`` held-out prompts: one sampled reply each (mean ``reward``, exact
    ``kl``, ``length``, ``truncated``) and one greedy reply each (mean ``greedy_reward``, e.g.
    GSM8K accuracy; the first ``show`` kept as ``samples``)."""
    rows = slice(0, min(count, len(prompts.lens)))
    result = {"prompts": rows.stop}
    for name, greedy in (("sampled", False), ("greedy", True)):
        sampling = SamplingConfig(max_new_tokens=prompts.horizon, eos_id=prompts.eos_id, temperature=temperature, greedy=greedy)
        out = generate(graphdef, params, prompts.tokens[rows], prompts.lens[rows], key, sampling)
        rewards = np.asarray(score(out.tokens, out.prompt_lens, out.response_lens), np.float32)
        if greedy:
            replies = decode_replies(tokenizer, out.tokens, out.prompt_lens, out.response_lens)
            prompt_texts = [tokenizer.decode(t[:n].tolist(), skip_special_tokens=True) for t, n in zip(prompts.tokens[rows], prompts.lens[rows])]
            result["greedy_reward"] = float(rewards.mean())
            result["samples"] = [{"prompt": p, "reply": r, "reward": float(s)} for p, r, s in zip(prompt_texts, replies, rewards)][:show]
            continue
        kl = exact_sequence_kl(graphdef, params, ref_params, out.tokens, out.prompt_lens, out.response_lens, prompts.horizon, temperature)
        result.update(reward=float(rewards.mean()), kl=float(jnp.mean(kl)), length=float(jnp.mean(out.response_lens)),
                      truncated=float(jnp.mean(out.truncated)))
    return result


# --------------------------------------------------------------------------- the RL run


def train_state_of(state):
    """The policy's ``TrainState`` of an iteration's state (bare, or inside an ``RLState``)."""
    return state.train if isinstance(state, RLState) else state


def train(config: RLExperimentConfig, run: RunDir, graphdef, ref_params, tokenizer, prompts: PromptSet, held_out: PromptSet,
          score) -> tuple[dict, Any]:
    """RL of the LoRA policy ``(graphdef, ref_params)`` (adapters at zero: the reference) on
    ``prompts`` against the host-side ``score(tokens, prompt_lens, response_lens) -> [B]``:
    ``iterations`` of ``make_rl_iteration``, evaluations on ``held_out``, the adapters saved;
    returns the results and the trained parameters.

    Logged per iteration: ``collect``'s metrics (``reward``; ``kl_to_reference``, the batch mean of
    the ``k1`` sum ``sum_t log pi(a_t|s_t) - log pi_ref(a_t|s_t)`` over each response's sampled
    tokens; ``response_length``; ``truncated_fraction``), ``update/*``, and with ``exact_kl``
    ``exact_kl_to_reference``: ``exact_sequence_kl`` of the same samples under the policy that
    sampled them (the adapters before the update)."""
    rl, temperature = config.rl, config.rl.temperature
    optimizer = optax.adam(config.learning_rate)
    state = init_train_state(ref_params, optimizer, jax.random.key(config.seed), trainable=ADAPTERS)
    state = init_rl_state(state, rl) if rl.kl_controller != "fixed" else state
    reward_fn = RecordingReward(score, prompts.horizon)
    iteration = make_rl_iteration(prompts, graphdef, optimizer, rl, reward_fn=reward_fn, host_reward=True,
                                  accumulation_steps=config.accumulation_steps)
    eval_key = jax.random.key(config.seed + 1)
    writers = make_writers(config.log, run, config_to_dict(config))

    def evaluation(params, step):
        """Evaluate, logged as ``eval/*`` at metrics.jsonl step ``step`` (0: before training)."""
        result = {"iteration": step, **evaluate(eval_key, graphdef, params, ref_params, held_out, score, tokenizer,
                                                 config.eval_prompts, temperature, config.show_samples)}
        scalars = {k: v for k, v in result.items() if isinstance(v, float)}
        run.log(step, **{f"eval/{k}": v for k, v in scalars.items()})
        for writer in writers:
            writer.scalars(step, scalars, "eval")
        return result

    with contextlib.ExitStack() as closing:  # the writers are closed however the loop ends
        for writer in writers:
            closing.enter_context(writer)
        evaluations = [evaluation(ref_params, 0)]
        names = ("reward", "kl_to_reference", "exact_kl_to_reference", "response_length", "truncated_fraction", "seconds")
        curves = {name: [] for name in names if config.exact_kl or name != "exact_kl_to_reference"}
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=run.console) as progress:
            bar = progress.add_task(f"{rl.advantage}/{rl.policy_loss}", total=config.iterations)
            for step in range(config.iterations):
                started = time.perf_counter()
                before = jax.tree_util.tree_map(jnp.copy, train_state_of(state).params)  # the sampling policy's adapters
                reward_fn.calls.clear()
                state, metrics = iteration(state, ref_params, jax.random.fold_in(jax.random.key(config.seed), step))
                if config.exact_kl:
                    sampled = nnx.merge_state(before, train_state_of(state).frozen)
                    kl = exact_sequence_kl(graphdef, sampled, ref_params, *reward_fn.calls[0], prompts.horizon, temperature)
                    metrics["exact_kl_to_reference"] = float(jnp.mean(kl))
                metrics["seconds"] = time.perf_counter() - started
                for name in curves:
                    curves[name].append(metrics[name])
                run.log(step + 1, **metrics)  # step n: the n-th iteration
                for writer in writers:
                    writer.scalars(step + 1, metrics, "train")
                if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.iterations:
                    evaluations.append(evaluation(train_state_of(state).full_params, step + 1))
                progress.update(bar, advance=1, description=f"reward {metrics['reward']:.3f} KL {metrics['kl_to_reference']:.3f}")

        params = train_state_of(state).full_params
        evaluations.append(evaluation(params, config.iterations))
    save_trained(run.path, config.iterations, params, model=model_reference(config.model), lora=dataclasses.asdict(config.lora),
                 dtype=config.dtype, init=config.init or None)
    return {"before": evaluations[0], "after": evaluations[-1], "evaluations": evaluations, "curves": curves,
            "seconds_per_iteration": float(np.mean(curves["seconds"]))}, params


@register_experiment("rl", config=RLExperimentConfig, description="RL of a pretrained policy (LoRA) on prompts from a file: verifier, reward-model or DPO-implicit reward, any advantage x policy loss")
def run(config: RLExperimentConfig, run: RunDir) -> dict:
    config = apply_preset(config)
    kind, argument = parse_reward(config.reward)
    started = time.perf_counter()
    if config.init:  # the policy starts from that run's trained weights, on its base model
        base, start, init_config = load_run_weights(config.init)
        config = dataclasses.replace(config, model=init_config.get("model", config.model))
    else:
        base, start = load_pretrained(config.model), None
    if base.tokenizer is None:
        raise ConfigError(f"model {config.model!r} has no tokenizer; rl decodes prompts and replies with it")
    start = base.params if start is None else start  # the policy's starting weights, before adapters: the reference
    prompts, held_out, data_report = load_prompts(config, base.tokenizer, base.config.max_len, run)
    inputs = RewardInputs(base.tokenizer, (base.graphdef, start), rows_by_prompt(prompts, held_out), config.max_new_tokens, config)
    score = REWARDS.get(kind)(argument, inputs)
    compute = compute_dtype_graphdef(base.graphdef, base.config, config.dtype)
    policy = add_lora(nnx.merge(compute, start), config.lora.rank, config.lora.alpha, config.lora.targets, seed=config.seed)
    graphdef, ref_params = nnx.split(policy)
    loaded = time.perf_counter()
    results, _ = train(config, run, graphdef, ref_params, base.tokenizer, prompts, held_out, score)
    seconds = {"load": loaded - started, "train_and_evaluate": time.perf_counter() - loaded, "total": time.perf_counter() - started}
    print_report(run, results)
    plot(run.path_for("rl.png"), results["curves"])
    return {"model": config.model, "init": config.init, "reward": config.reward, "data": data_report, **results, "seconds": seconds}


def print_report(run: RunDir, results: dict) -> None:
    for name in ("before", "after"):
        e = results[name]
        run.console.print(f"{name:6s}: reward {e['reward']:.3f} (greedy {e['greedy_reward']:.3f}), KL {e['kl']:.3f}, "
                          f"length {e['length']:.1f}, truncated {e['truncated']:.2f} on {e['prompts']} held-out prompts")
    for old, new in zip(results["before"]["samples"], results["after"]["samples"]):
        run.console.print(f"\n[bold]prompt:[/bold] {old['prompt'][-300:]}")
        run.console.print(f"[bold]before[/bold] ({old['reward']:.2f}): {old['reply']}")
        run.console.print(f"[bold]after[/bold]  ({new['reward']:.2f}): {new['reply']}")


def plot(path, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in curves if n != "seconds"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.2))
    for ax, name in zip(axes, names):
        ax.plot(np.arange(1, len(curves[name]) + 1), curves[name])
        ax.set(xlabel="iteration", title=name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
