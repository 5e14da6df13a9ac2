"""``jirl run rm``: a sequence reward model on a pretrained decoder, trained on preference pairs.

    jirl run rm                                  # HH-RLHF harmless on SmolLM2-135M, 2-core CPU default
    jirl run rm --set loss=classification lora.rank=8 lora.layers=2
    jirl run rm --set data=prefs.jsonl model=path/to/hf_folder
    jirl run rm --set preset=gpu                 # LoRA on every layer, longer sequences (GPU_PRESET)

The model: a pretrained decoder backbone (``model=``: a preset such as ``smollm2-135m-instruct``,
a ``.gguf`` file or a Hugging Face folder; ``load_pretrained``) with a scalar head read at the
last token of the response (``SequenceRewardHead``, the Ouyang et al. 2022 recipe):

    r(x, y) = w . h_L(x y)[|x| + |y| - 1] + b

trained on pairs with a loss of ``PAIRWISE_LOSSES`` (``loss=``: ``bt`` = -log sigma(r+ - r-),
``classification`` = -log sigma(r+) - log(1 - sigma(r-)), ``hinge`` = max(0, m - (r+ - r-)), ...).

What trains (``lora``):

- ``lora.rank=0`` (the CPU default): the head only, on the frozen backbone;
- ``lora.rank>0``: rank-``r`` LoRA adapters on ``lora.targets`` of the top ``lora.layers`` layers
  (0: every layer) and the head. Full fine-tuning is not offered: on a 2-core CPU one SmolLM2
  forward+backward runs at ~50 tokens/s.

The frozen part is computed once: the layers below the first adapted one (``split``) run once
over every sequence and their output is cached (under ``feature_cache``, keyed by a digest of the
parameters and tokens); training then runs only the layers from ``split`` up. With no adapted
layer only the last token's state is needed (``[d_model]`` per sequence), so ``lora.rank=0``
is a linear probe on cached features, trained through ``fit`` like any other objective.

Data (``data=``): by default the 1,843 HH-RLHF harmless pairs (``../shared/data/hh-rlhf-harmless``),
read with ``read_hh_pairs`` (TRL's implicit-prompt *string* form, which ``read_rows`` refuses:
it cannot tell where the prompt ends) and split by ``assign_split(prompt, 0.2, 0)``, the split of
``HHPreferences``, ``rm_noise`` and ``hh_rlhf`` -- so the held-out pairs are the 370 that the
MiniLM linear head of ``hh_rlhf`` scores 0.559 on. ``hh_context=last_turn`` keeps the last human
turn as the prompt (as ``hh_rlhf.rm_text`` does), ``dialogue`` every turn. Any other file is read
by ``read_rows`` (TRL standard / conversational / ShareGPT layouts) and split the same way by
prompt text, unless ``eval_data`` names a held-out file. Rows are rendered with the model's chat
template (``chat_template``) by ``tokenize_preference_row``.

Evaluation (held-out, before training, every ``train.eval_every`` steps and after): mean loss,
pairwise accuracy with its standard error sqrt(p(1-p)/n) (a tie counts one half), mean chosen and
rejected reward and their mean margin.

Output: ``results.json`` (``before``/``after`` held-out metrics, ``curves``, the data report,
timings); ``reward_model/`` -- ``reward_model.json`` (backbone, head, LoRA settings, tokenization,
the score normalisation: mean and std of the raw reward over the training responses) and
``weights/`` (an Orbax checkpoint of the trained parameters only: head and adapters). A later run
loads it with ``load_reward_model(run_folder)``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jirl.config import ConfigError, config_to_dict, JirlError, preset_over_defaults, at_least, finite, in_range, non_negative, positive, registered
from jirl.data.chat_tokenize import ChatTokenization, tokenize_preference_row
from jirl.data.conversations import PreferenceRow
from jirl.data.formats import read_rows
from jirl.data.jsonl import read_jsonl
from jirl.data.loader import batch_iterator
from jirl.data.preferences import HH_ASSISTANT_MARKER, HH_HUMAN_MARKER, assign_split, hh_last_human_turn, read_hh_pairs
from jirl.data.text_datasets import prompt_key
from jirl.experiment import RunDir, register_experiment
from jirl.models.heads import SequenceRewardHead
from jirl.models.lora import ADAPTERS, ATTENTION, add_lora
from jirl.models.pretrained import load_pretrained, pretrained_model
from jirl.models.transformer import Transformer
from jirl.rewards.embeddings import cached_array, fingerprint
from jirl.rewards.losses import PAIRWISE_LOSSES, centering_penalty
from jirl.train.checkpoint import CheckpointManager
from jirl.train.loop import TrainConfig, fit, make_optimizer
from jirl.train.losses import LossOutput
from jirl.train.step import init_train_state, make_update_step
from jirl.train.trained import shapes_of

SHARED_HH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf-harmless"
REWARD_MODEL_DIR = "reward_model"  # inside a run folder: reward_model.json + weights/
REWARD_MODEL_FILE = "reward_model.json"
WEIGHTS_DIR = "weights"
HH_SPLIT = {"test_fraction": 0.2, "seed": 0}  # HHPreferences' split: rm_noise and hh_rlhf use it too

# ``--set preset=gpu`` replaces these fields where they still hold their CPU defaults.
GPU_PRESET = {
    "max_len": 512, "hh_context": "dialogue", "lora.rank": 16, "lora.layers": 0,
    "train.steps": 600, "train.batch_size": 32, "train.learning_rate": 1e-4, "train.eval_every": 100,
}


def default_train() -> TrainConfig:
    """The CPU default: a linear probe on cached features trains in seconds, so many cheap steps."""
    return TrainConfig(steps=1000, batch_size=64, learning_rate=1e-3, warmup_steps=20, weight_decay=0.0,
                       checkpoint_every=1000, eval_every=100, log_every=50)


@dataclasses.dataclass
class LoRASettings:
    rank: Annotated[int, non_negative] = 0  # 0: train the head only (frozen backbone, cached features)
    alpha: Annotated[float, finite, positive] = 16.0
    targets: tuple[str, ...] = ATTENTION
    layers: Annotated[int, non_negative] = 2  # adapt the top N layers only (0: every layer); the rest is cached


@dataclasses.dataclass
class RMConfig:
    seed: int = 0
    preset: Annotated[str, registered(("cpu", "gpu"))] = "cpu"  # "cpu" or "gpu" (GPU_PRESET)
    model: Annotated[str, pretrained_model] = "smollm2-135m-instruct"  # a preset name, a .gguf file or a Hugging Face folder
    data: str = ""  # preference file (JSONL/JSON/Parquet) or HH folder (default: ../shared/data/hh-rlhf-harmless)
    eval_data: str = ""  # held-out file; empty: split data by a hash of each prompt (HH-RLHF: HHPreferences' split)
    eval_fraction: Annotated[float, in_range(0, 1)] = 0.2  # share of prompts held out when eval_data is empty
    hh_context: Literal["last_turn", "dialogue"] = "last_turn"  # HH-RLHF prompts: the last human turn or every turn
    max_len: Annotated[int, at_least(2)] = 192  # prompt + response tokens (prompts lose their start first)
    max_prompt_len: Annotated[int, non_negative] = 0  # 0: only max_len limits the prompt
    chat_template: str = "auto"  # "auto" (the model's), "none" (plain text) or a jinja template
    loss: Annotated[str, registered(PAIRWISE_LOSSES)] = "bt"  # a PAIRWISE_LOSSES name
    centering: Annotated[float, finite, non_negative] = 0.0  # c (r+ + r-)^2 (Eisenstein et al. 2023)
    lora: LoRASettings = dataclasses.field(default_factory=LoRASettings)
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype (parameters stay float32)
    feature_batch_size: Annotated[int, at_least(1)] = 16  # sequences per forward pass of the frozen part
    feature_cache: str = ""  # folder for the frozen part's outputs (default: <run>/features); reused when it matches
    eval_batch_size: Annotated[int, at_least(1)] = 64
    max_pairs: Annotated[int, non_negative] = 0  # use only the first N pairs of data (0: all); smoke runs
    train: TrainConfig = dataclasses.field(default_factory=default_train)


def apply_preset(config: RMConfig) -> RMConfig:
    """``preset=gpu`` sets ``GPU_PRESET``'s (dotted) fields that still hold their CPU defaults."""
    return config if config.preset == "cpu" else preset_over_defaults(config, GPU_PRESET)


def check_config(config: RMConfig) -> None:
    """Errors a dataclass annotation cannot express, each listing what is allowed."""
    if config.loss not in PAIRWISE_LOSSES:
        raise ConfigError(f"loss={config.loss!r} is not a pairwise reward loss; choose one of {', '.join(PAIRWISE_LOSSES.names())}")
    config.train.validate()


# --------------------------------------------------------------------------- data


def hh_messages(prompt: str) -> list[dict[str, str]]:
    """The turns of an HH-RLHF prompt ``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"``
    as messages (user a, assistant b, user c); text before the first marker joins the first turn."""
    body = prompt.removesuffix(HH_ASSISTANT_MARKER)
    messages, rest = [], body
    while rest:
        human, assistant = rest.find(HH_HUMAN_MARKER), rest.find(HH_ASSISTANT_MARKER)
        starts = [(i, role, marker) for i, role, marker in ((human, "user", HH_HUMAN_MARKER), (assistant, "assistant", HH_ASSISTANT_MARKER)) if i >= 0]
        if not starts:
            messages.append({"role": "user", "content": rest.strip()})
            break
        index, role, marker = min(starts)
        if index > 0 and rest[:index].strip():
            messages.append({"role": "user", "content": rest[:index].strip()})
        rest = rest[index + len(marker):]
        following = [i for i in (rest.find(HH_HUMAN_MARKER), rest.find(HH_ASSISTANT_MARKER)) if i >= 0]
        end = min(following) if following else len(rest)
        messages.append({"role": role, "content": rest[:end].strip()})
        rest = rest[end:]
    return messages if messages and messages[-1]["role"] == "user" else messages + [{"role": "user", "content": ""}]


def is_hh_file(path: Path) -> bool:
    """Whether ``path`` holds HH-RLHF rows: ``chosen``/``rejected`` dialogue strings, no ``prompt``."""
    if not path.name.endswith((".jsonl", ".jsonl.gz")):
        return False
    rows, _ = read_jsonl(path, fields=())
    first = rows[0].values if rows else {}
    return "prompt" not in first and isinstance(first.get("chosen"), str) and HH_HUMAN_MARKER in first["chosen"]


def data_file(config: RMConfig) -> Path:
    """The preference file ``data`` names (a folder means its ``pairs.jsonl[.gz]``)."""
    path = Path(config.data).expanduser() if config.data else SHARED_HH
    if path.is_dir():
        found = [path / name for name in ("pairs.jsonl.gz", "pairs.jsonl") if (path / name).exists()]
        if not found:
            raise ConfigError(f"data={str(path)!r} is a folder without pairs.jsonl[.gz]; name the preference file")
        path = found[0]
    if not path.exists():
        raise ConfigError(f"data={str(path)!r} does not exist; give a preference file (JSONL, JSON, Parquet) or an HH-RLHF folder")
    return path


def hh_rows(path: Path, context: str) -> tuple[list[PreferenceRow], list[str], dict]:
    """HH-RLHF pairs as canonical rows, with each pair's full prompt text (the split key)."""
    pairs, report = read_hh_pairs(path)
    rows = []
    for pair in pairs:
        prompt = [{"role": "user", "content": hh_last_human_turn(pair.prompt)}] if context == "last_turn" else hh_messages(pair.prompt)
        rows.append(PreferenceRow(
            prompt, [{"role": "assistant", "content": pair.chosen}], [{"role": "assistant", "content": pair.rejected}],
            f"{path}:{pair.line}", conversational=context == "dialogue",
        ))
    return rows, [pair.prompt for pair in pairs], {"format": "hh-rlhf", "kept": report["kept"], "dropped": report["dropped"]}


def generic_rows(path: Path) -> tuple[list[PreferenceRow], list[str], dict]:
    rows, report = read_rows(path, "preference")
    keys = [prompt_key(row) for row in rows]  # prepare_text_dataset's split key: one file, one split
    return rows, keys, {"format": "rows", "kept": report.kept, "dropped": report.dropped}


def prepare_pairs(config: RMConfig, tokenizer) -> tuple[list[dict], list[dict], dict]:
    """Data preparation as one call: ``(train examples, held-out examples, report)``.

    Each example is a preference record of ``tokenize_preference_row`` (``chosen``/``rejected``
    ``[max_len]``, ``prompt_len``, ``chosen_len``, ``rejected_len``, ``margin``)."""
    path = data_file(config)
    rows, keys, report = hh_rows(path, config.hh_context) if is_hh_file(path) else generic_rows(path)
    if config.max_pairs:
        rows, keys = rows[: config.max_pairs], keys[: config.max_pairs]
    if config.eval_data:
        eval_path = Path(config.eval_data).expanduser()
        eval_rows, _, _ = hh_rows(eval_path, config.hh_context) if is_hh_file(eval_path) else generic_rows(eval_path)
        train_rows, split = rows, {"eval_data": str(eval_path)}
    else:
        fraction = HH_SPLIT["test_fraction"] if report["format"] == "hh-rlhf" else config.eval_fraction
        sides = [assign_split(key, fraction, HH_SPLIT["seed"]) for key in keys]
        train_rows = [row for row, side in zip(rows, sides) if side == "train"]
        eval_rows = [row for row, side in zip(rows, sides) if side == "test"]
        split = {"by": "assign_split(prompt)", "test_fraction": fraction, "seed": HH_SPLIT["seed"]}
    if not train_rows or not eval_rows:
        raise ConfigError(f"{path}: {len(train_rows)} training and {len(eval_rows)} held-out pairs; need both (raise eval_fraction or give eval_data)")
    settings = tokenization(config)
    train, held_out = ([tokenize_preference_row(row, tokenizer, settings) for row in part] for part in (train_rows, eval_rows))
    report = {
        **report, "file": str(path), "split": split, "train_pairs": len(train), "eval_pairs": len(held_out),
        "prompt_truncated": sum(t.prompt_truncated for t in train + held_out),
        "response_truncated": sum(t.response_truncated for t in train + held_out),
    }
    return [t.example for t in train], [t.example for t in held_out], report


def tokenization(config: RMConfig) -> ChatTokenization:
    return ChatTokenization(config.max_len, config.max_prompt_len or None, config.chat_template)


# --------------------------------------------------------------------------- the model


class RewardModel(nnx.Module):
    """A pretrained decoder with a ``SequenceRewardHead``: ``r(tokens, lengths) [B]``, read at the
    last real token of each left-aligned sequence."""

    def __init__(self, backbone: Transformer, *, rngs: nnx.Rngs):
        self.backbone = backbone
        self.head = SequenceRewardHead(backbone.config.d_model, rngs=rngs)

    def __call__(self, tokens, lengths):
        return self.head(self.backbone(tokens).hidden, lengths)


class UpperPart(nnx.Module):
    """Layers ``split..`` of a ``RewardModel``, its final norm and head (the same modules, shared):
    ``r = head(norm(layers[split:](x)), lengths)`` from the states ``x`` entering layer ``split``."""

    def __init__(self, model: RewardModel, split: int):
        self.layers = nnx.List(list(model.backbone.layers)[split:])
        self.final_norm = model.backbone.final_norm
        self.head = model.head

    def __call__(self, x, lengths):
        positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
        for layer in self.layers:
            x, _, _ = layer(x, positions)
        return self.head(self.final_norm(x), lengths)


def lower_states(backbone: Transformer, tokens, split: int):
    """The states entering layer ``split``: the embeddings through layers ``0..split-1``."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    x = backbone.embed(tokens)
    if backbone.config.family == "gpt2":
        x = x + backbone.position_embed(positions)
    for layer in list(backbone.layers)[:split]:
        x, _, _ = layer(x, positions)
    return x


def split_layer(num_layers: int, lora: LoRASettings) -> int:
    """The first layer that trains (adapters); ``num_layers`` when only the head trains."""
    if lora.rank == 0:
        return num_layers
    if lora.layers > num_layers:
        raise ConfigError(f"lora.layers={lora.layers} but the model has {num_layers} layers (0: every layer)")
    return num_layers - (lora.layers or num_layers)


def build_model(backbone_name: str, lora: LoRASettings, dtype: str, seed: int):
    """``(model, tokenizer, split)``: the pretrained backbone in compute ``dtype``, a fresh head,
    LoRA adapters on the layers from ``split`` up."""
    base = load_pretrained(backbone_name)
    if base.tokenizer is None:
        raise ConfigError(f"model {backbone_name!r} has no tokenizer (tokenizer.json); rm needs one")
    config = dataclasses.replace(base.config, dtype=dtype)
    graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))[0]
    model = RewardModel(nnx.merge(graphdef, base.params), rngs=nnx.Rngs(seed))
    split = split_layer(config.num_layers, lora)
    if lora.rank:
        add_lora(types.SimpleNamespace(layers=list(model.backbone.layers)[split:]), lora.rank, lora.alpha, lora.targets, seed=seed)
    return model, base.tokenizer, split


def trained_filter(lora: LoRASettings):
    """The parameters that train and are saved: the head, and the adapters when ``lora.rank > 0``."""
    head = nnx.All(nnx.Param, nnx.PathContains("head"))
    return nnx.Any(ADAPTERS, head) if lora.rank else head


# --------------------------------------------------------------------------- cached frozen part


def cache_features(model: RewardModel, split: int, examples: Sequence[dict], batch_size: int) -> dict[str, np.ndarray]:
    """The frozen part's output for each pair, as arrays stacked over ``examples``:

    - ``split < num_layers``: ``chosen``/``rejected`` ``[N, width, d]``, the states entering layer
      ``split`` (width: the longest sequence), with ``chosen_len``/``rejected_len`` = prompt +
      response lengths;
    - ``split == num_layers``: ``[N, 1, d]``, the last real token's state before the final norm,
      with lengths 1 (the head reads position 0).

    Sequences run sorted by length, padded to multiples of 32 (few compiled shapes, little padding).
    """
    graphdef, params = nnx.split(model.backbone)
    top = split == len(model.backbone.layers)

    @jax.jit
    def run(params, tokens, lengths):
        x = lower_states(nnx.merge(graphdef, params), tokens, split)
        if top:
            return jnp.take_along_axis(x, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)
        return x

    tokens = np.stack([e[side] for e in examples for side in ("chosen", "rejected")])
    lengths = np.array([int(e["prompt_len"]) + int(e[f"{side}_len"]) for e in examples for side in ("chosen", "rejected")], np.int32)
    width = 1 if top else int(lengths.max())
    out = np.zeros((len(tokens), width, model.backbone.config.d_model), np.float32)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        padded = min(tokens.shape[1], -(-int(lengths[rows].max()) // 32) * 32)
        batch_tokens = np.zeros((batch_size, padded), np.int32)  # a fixed batch size: one compile per width
        batch_lengths = np.ones(batch_size, np.int32)
        batch_tokens[: len(rows)] = tokens[rows, :padded]
        batch_lengths[: len(rows)] = lengths[rows]
        states = np.asarray(run(params, batch_tokens, batch_lengths), np.float32)[: len(rows)]
        out[rows, : min(width, padded)] = states[:, :width]
    sizes = np.ones_like(lengths) if top else lengths
    return {"chosen": out[0::2], "rejected": out[1::2], "chosen_len": sizes[0::2], "rejected_len": sizes[1::2]}


def cached_features(model: RewardModel, split: int, examples: Sequence[dict], batch_size: int, folder: Path, name: str) -> dict:
    """``cache_features``, stored as ``.npy`` under ``folder`` and keyed by a digest of the frozen
    parameters, the tokens and ``split``, so a rerun with the same backbone and data reuses it."""
    frozen = nnx.filter_state(nnx.split(model.backbone)[1], nnx.Not(ADAPTERS))
    tag = fingerprint(frozen, np.stack([e["chosen"] for e in examples]), np.stack([e["rejected"] for e in examples]),
                      np.array([split, batch_size]))
    computed = {}

    def compute(key):
        if not computed:
            computed.update(cache_features(model, split, examples, batch_size))
        return computed[key]

    return {key: cached_array(folder / f"{name}-{key}-{tag}.npy", lambda key=key: compute(key))
            for key in ("chosen", "rejected", "chosen_len", "rejected_len")}


# --------------------------------------------------------------------------- objective and metrics


def pair_loss(loss: str, r_chosen, r_rejected, margin, centering: float = 0.0):
    """Per-pair loss ``[B]``: ``l = PAIRWISE_LOSSES[loss](r+, r-, m0 + m)`` (+ ``c (r+ + r-)^2``),
    ``m`` the pair's margin from the data (0 unless the source gives one) added to the loss's own
    default margin ``m0`` (0 for BT: -log sigma(r+ - r- - m); 1 for hinge: max(0, 1 + m - (r+ - r-)))."""
    pairwise = PAIRWISE_LOSSES.get(loss)
    default = inspect.signature(pairwise).parameters.get("margin")
    base = default.default if default is not None and isinstance(default.default, (int, float)) else 0.0
    per_pair = pairwise(r_chosen, r_rejected, base + margin)
    return per_pair + centering_penalty(r_chosen, r_rejected, centering) if centering else per_pair


def feature_objective(graphdef, loss: str, centering: float = 0.0) -> Callable:
    """``loss_fn(params, batch, key)`` of the upper part on cached states (``chosen``/``rejected``
    states, the head read at ``chosen_read``/``rejected_read``): the sum of ``pair_loss`` over
    the batch's pairs, counted per pair (contract 2)."""

    def loss_fn(params, batch, key):
        del key
        upper = nnx.merge(graphdef, params)
        r_chosen = upper(batch["chosen"], batch["chosen_read"])
        r_rejected = upper(batch["rejected"], batch["rejected_read"])
        per_pair = pair_loss(loss, r_chosen, r_rejected, batch["margin"], centering)
        accuracy = jnp.mean((r_chosen > r_rejected) + 0.5 * (r_chosen == r_rejected))
        return LossOutput(total=jnp.sum(per_pair), count=jnp.asarray(per_pair.shape[0], per_pair.dtype)), {
            "accuracy": accuracy, "reward_gap": jnp.mean(r_chosen - r_rejected),
        }

    return loss_fn


def pair_metrics(loss: str, r_chosen: np.ndarray, r_rejected: np.ndarray, margin: np.ndarray, centering: float = 0.0) -> dict:
    """Held-out metrics of per-pair rewards: mean ``loss``, pairwise ``accuracy`` (ties 1/2) and
    its standard error ``accuracy_se`` = sqrt(p (1 - p) / n), mean ``chosen``/``rejected`` reward
    and mean ``margin`` = r+ - r-."""
    r_chosen, r_rejected = np.asarray(r_chosen, np.float64), np.asarray(r_rejected, np.float64)
    wins = (r_chosen > r_rejected) + 0.5 * (r_chosen == r_rejected)
    p, n = float(np.mean(wins)), len(wins)
    losses = pair_loss(loss, jnp.asarray(r_chosen, jnp.float32), jnp.asarray(r_rejected, jnp.float32), jnp.asarray(margin, jnp.float32), centering)
    return {
        "loss": float(jnp.mean(losses)), "accuracy": p, "accuracy_se": float(np.sqrt(p * (1 - p) / n)), "pairs": n,
        "chosen": float(np.mean(r_chosen)), "rejected": float(np.mean(r_rejected)), "margin": float(np.mean(r_chosen - r_rejected)),
    }


def feature_scorer(graphdef, batch_size: int) -> Callable:
    """``score(params, states, lengths) -> [N]`` rewards of the upper part, in batches."""

    @jax.jit
    def run(params, x, lengths):
        return nnx.merge(graphdef, params)(x, lengths)

    def score(params, states, lengths):
        out = []
        for start in range(0, len(states), batch_size):
            x, n = states[start : start + batch_size], lengths[start : start + batch_size]
            pad = batch_size - len(x)  # one compiled shape
            if pad:
                x, n = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]), np.concatenate([n, np.ones(pad, n.dtype)])
            out.append(np.asarray(run(params, x, n))[: batch_size - pad])
        return np.concatenate(out)

    return score


# --------------------------------------------------------------------------- saving and loading


def save_reward_model(folder: Path, model: RewardModel, config: RMConfig, split: int, mean: float, std: float) -> Path:
    """``folder/reward_model.json`` and the trained parameters (head, adapters) as an Orbax
    checkpoint in ``folder/weights``."""
    trained = nnx.filter_state(nnx.split(model)[1], trained_filter(config.lora))
    info = {
        "format": "jirl.rm/1",
        "backbone": str(Path(config.model).expanduser().resolve()) if Path(config.model).expanduser().exists() else config.model,
        "dtype": config.dtype,
        "head": {"kind": "SequenceRewardHead", "read_at": "last response token", "d_model": model.backbone.config.d_model},
        "lora": {**dataclasses.asdict(config.lora), "targets": list(config.lora.targets), "first_adapted_layer": split},
        "tokenization": {**dataclasses.asdict(tokenization(config)), "hh_context": config.hh_context},
        "normalization": {"mean": mean, "std": std, "over": "raw rewards of the training responses (chosen and rejected)"},
        "loss": config.loss, "seed": config.seed,
    }
    folder.mkdir(parents=True, exist_ok=True)
    with CheckpointManager(folder / WEIGHTS_DIR, keep_last=1) as manager:
        manager.save(int(config.train.steps), trained, {"reward_model": info})
    (folder / REWARD_MODEL_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return folder


def normalized_score_fn(model: RewardModel, mean: float, std: float) -> Callable:
    """``score_fn(tokens [B, L], prompt_len [B], response_len [B]) -> [B]``: ``(r - mean) / std``
    of the reward read at token ``prompt_len + response_len - 1`` (one jitted program, the
    parameters passed as arguments, not baked in as constants)."""
    graphdef, params = nnx.split(model)

    @jax.jit
    def normalized(params, tokens, lengths):
        return (nnx.merge(graphdef, params)(tokens, lengths) - mean) / std

    def score_fn(tokens, prompt_len, response_len):
        lengths = jnp.asarray(prompt_len, jnp.int32) + jnp.asarray(response_len, jnp.int32)
        return normalized(params, jnp.asarray(tokens, jnp.int32), lengths)

    return score_fn


class LoadedRewardModel(NamedTuple):
    """What ``load_reward_model`` returns."""

    score_fn: Callable  # score_fn(tokens [B, L], prompt_len [B], response_len [B]) -> [B] normalised rewards
    tokenizer: Any
    tokenization: ChatTokenization
    info: dict  # reward_model.json
    model: RewardModel  # the module (raw rewards: model(tokens, lengths))


def load_reward_model(run_folder: str | Path) -> LoadedRewardModel:
    """The reward model a ``jirl run rm`` saved (give the run folder or its ``reward_model/``).

    ``score_fn(tokens, prompt_len, response_len)`` reads each left-aligned sequence of
    ``prompt_len + response_len`` tokens and returns ``(r - mean) / std`` ``[B]``, ``mean`` and
    ``std`` of the raw reward over the training responses."""
    folder = Path(run_folder).expanduser()
    if (folder / REWARD_MODEL_DIR / REWARD_MODEL_FILE).exists():
        folder = folder / REWARD_MODEL_DIR
    if not (folder / REWARD_MODEL_FILE).exists():
        raise JirlError(f"{folder} holds no {REWARD_MODEL_FILE}; give the folder of a `jirl run rm` run")
    info = json.loads((folder / REWARD_MODEL_FILE).read_text())
    lora = LoRASettings(**{k: tuple(v) if k == "targets" else v for k, v in info["lora"].items() if k != "first_adapted_layer"})
    model, tokenizer, _ = build_model(info["backbone"], lora, info["dtype"], info["seed"])
    graphdef, params = nnx.split(model)
    trained = nnx.filter_state(params, trained_filter(lora))
    with CheckpointManager(folder / WEIGHTS_DIR) as manager:
        restored, _ = manager.restore(shapes_of(trained))
    nnx.update(model, restored)
    score_fn = normalized_score_fn(model, info["normalization"]["mean"], info["normalization"]["std"])
    settings = ChatTokenization(info["tokenization"]["max_len"], info["tokenization"]["max_prompt_len"], info["tokenization"]["chat_template"])
    return LoadedRewardModel(score_fn, tokenizer, settings, info, model)


# --------------------------------------------------------------------------- the experiment


def train_source(features: dict, examples: Sequence[dict]) -> list[dict]:
    """Per-pair records for the loader: cached states, their lengths and the pair's margin."""
    return [
        {"chosen": features["chosen"][i], "rejected": features["rejected"][i], "chosen_read": features["chosen_len"][i],
         "rejected_read": features["rejected_len"][i], "margin": np.float32(e["margin"]),
         **{key: np.int32(e[key]) for key in ("prompt_len", "chosen_len", "rejected_len")}}  # the pair's own lengths (throughput)
        for i, e in enumerate(examples)
    ]


@register_experiment("rm", config=RMConfig, description="A reward model on a pretrained decoder (head or LoRA) from preference pairs")
def run(config: RMConfig, run: RunDir) -> dict:
    return train_reward_model(config, run)[0]


def train_reward_model(config: RMConfig, run: RunDir) -> tuple[dict, RewardModel]:
    """The experiment: ``(results, the trained RewardModel)``; the model is also saved under
    ``run.path / "reward_model"``."""
    config = apply_preset(config)
    check_config(config)
    started = time.perf_counter()
    model, tokenizer, split = build_model(config.model, config.lora, config.dtype, config.seed)
    train_examples, eval_examples, data_report = prepare_pairs(config, tokenizer)
    loaded = time.perf_counter() - started
    results = fit_on_pairs(config, run, model, split, train_examples, eval_examples)
    results["seconds"] = {"load_and_tokenize": loaded, **results["seconds"], "total": time.perf_counter() - started}
    return {"model": config.model, "loss": config.loss, "data": data_report, **results}, model


def fit_on_pairs(config: RMConfig, run: RunDir, model: RewardModel, split: int, train_examples: Sequence[dict],
                 eval_examples: Sequence[dict]) -> dict:
    """Train ``model`` (``build_model``'s, frozen below layer ``split``) on preference records
    (``tokenize_preference_row``'s layout) through ``fit`` in ``run``, evaluate it on
    ``eval_examples`` before, during and after, and save it under ``run.path / "reward_model"``
    (``save_reward_model``, with the score normalisation of the training responses). Returns the
    results (``before``/``after``/``train_after`` metrics, ``curves``, ``normalization``, ...)."""
    seconds, tick = {}, time.perf_counter()
    num_layers = len(model.backbone.layers)
    run.console.print(
        f"{len(train_examples)} training and {len(eval_examples)} held-out pairs; frozen part: "
        f"{split} of {num_layers} layers{' (the head alone trains)' if split == num_layers else ''}"
    )
    folder = Path(config.feature_cache).expanduser() if config.feature_cache else run.path / "features"
    features = {name: cached_features(model, split, examples, config.feature_batch_size, folder, name)
                for name, examples in (("train", train_examples), ("eval", eval_examples))}
    seconds["features"], tick = time.perf_counter() - tick, time.perf_counter()
    tokens = sum(int(e["prompt_len"]) * 2 + int(e["chosen_len"]) + int(e["rejected_len"]) for e in [*train_examples, *eval_examples])
    run.console.print(f"frozen part over {tokens} tokens: {seconds['features']:.0f} s")

    upper = UpperPart(model, split)
    graphdef, params = nnx.split(upper)
    optimizer = make_optimizer(config.train)
    state = init_train_state(params, optimizer, jax.random.key(config.seed), trainable=trained_filter(config.lora))
    step = make_update_step(feature_objective(graphdef, config.loss, config.centering), optimizer, config.train.accumulation_steps)
    score = feature_scorer(graphdef, config.eval_batch_size)

    def evaluate_params(params, part="eval", examples=eval_examples):
        f = features[part]
        margin = np.array([e["margin"] for e in examples], np.float32)
        return pair_metrics(config.loss, score(params, f["chosen"], f["chosen_len"]), score(params, f["rejected"], f["rejected_len"]), margin, config.centering)

    before = evaluate_params(params)
    run.console.print(f"before: held-out accuracy {before['accuracy']:.3f} ± {before['accuracy_se']:.3f}, loss {before['loss']:.4f}")
    batches = batch_iterator(train_source(features["train"], train_examples), min(config.train.batch_size, len(train_examples)), seed=config.seed)
    state = fit(run, step, state, batches, config=config_to_dict(config), train=config.train, resume=run.resume,
                evaluate=lambda s: evaluate_params(s.full_params))
    seconds["train"], tick = time.perf_counter() - tick, time.perf_counter()
    params = state.full_params
    after = evaluate_params(params)
    train_metrics = evaluate_params(params, "train", train_examples)
    nnx.update(upper, params)  # the shared modules: model now holds the trained head and adapters

    f = features["train"]
    raw = np.concatenate([score(params, f["chosen"], f["chosen_len"]), score(params, f["rejected"], f["rejected_len"])])
    mean, std = float(raw.mean()), float(raw.std() + 1e-6)
    save_reward_model(run.path / REWARD_MODEL_DIR, model, config, split, mean, std)
    seconds["evaluate_and_save"] = time.perf_counter() - tick
    run.console.print(f"after:  held-out accuracy {after['accuracy']:.3f} ± {after['accuracy_se']:.3f}, loss {after['loss']:.4f} "
                      f"(train accuracy {train_metrics['accuracy']:.3f})")
    curves = read_curves(run.path / "metrics.jsonl")
    plot(run.path_for("rm.png"), curves)
    return {
        "first_adapted_layer": split, "num_layers": num_layers, "before": before, "after": after, "train_after": train_metrics,
        "curves": curves, "normalization": {"mean": mean, "std": std}, "reward_model": str(run.path / REWARD_MODEL_DIR),
        "tokens_through_frozen_part": tokens, "seconds": seconds,
    }


def read_curves(path: Path) -> dict:
    """Per-step training ``loss``/``accuracy`` and the held-out ``eval`` points from metrics.jsonl."""
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    return {
        "step": [r["step"] for r in train], "loss": [r["loss"] for r in train], "accuracy": [r.get("accuracy") for r in train],
        "eval": [{"step": r["step"], **{k[len("eval/"):]: v for k, v in r.items() if k.startswith("eval/")}} for r in evals],
    }


def plot(path, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(curves["step"], curves["loss"], alpha=0.4, lw=1, label="train")
    axes[0].plot([e["step"] for e in curves["eval"]], [e["loss"] for e in curves["eval"]], marker="o", label="held-out")
    axes[0].set(xlabel="step", title="pairwise loss")
    steps = [e["step"] for e in curves["eval"]]
    accuracy = np.array([e["accuracy"] for e in curves["eval"]])
    se = np.array([e["accuracy_se"] for e in curves["eval"]])
    axes[1].errorbar(steps, accuracy, yerr=se, marker="o", capsize=3, label="held-out ± SE")
    axes[1].axhline(0.5, color="gray", ls=":", lw=1)
    axes[1].set(xlabel="step", title="pairwise accuracy")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["RMConfig", "LoadedRewardModel", "load_reward_model", "pair_metrics", "prepare_pairs", "save_reward_model"]
