"""``jirl run hh_rlhf``: RLHF of a real pretrained model against a reward model of HH-RLHF harmlessness.

    jirl run hh_rlhf                         # 2-core CPU default, under an hour
    jirl run hh_rlhf --set steps=2 rm_pairs=150   # smoke run (the reward model from 150 pairs)
    jirl run hh_rlhf --set preset=gpu        # a GPU-sized run (see GPU_PRESET)

The pieces, each from elsewhere in jirl:

- **policy**: SmolLM2-135M-Instruct (``load_pretrained``, the offline GGUF), with rank-``lora.rank``
  LoRA adapters on the attention projections; only the adapters train (``trainable=ADAPTERS``).
  The reference is the model itself (the adapters start at zero), so KL(pi || pi_ref) is the
  drift the adapters cause.
- **reward model**: a Bradley-Terry head on all-MiniLM-L6-v2 sentence embeddings of
  ``"Human: <turn>\\n\\nAssistant: <response>"``, fitted on the training split of the 1,843
  HH-RLHF harmless pairs (``../shared/data/hh-rlhf-harmless``) and scored on the held-out
  split; its scores are standardised over the training responses (mean 0, std 1).
- **prompts**: the last human turn of each held-out dialogue (never seen by the reward model),
  in the policy's own chat template; those longer than ``max_prompt_tokens`` are left out.
- **RL**: RLOO (``advantage=rloo``, REINFORCE with a leave-one-out baseline, Ahmadian et al.
  2024) with the per-token KL to the reference in the reward, ``r_t - beta log(pi/pi_ref)``
  (InstructGPT, Ouyang et al. 2022), through ``jirl.rl.loop.make_rl_iteration``.

It logs the reward-model score, the KL to the reference and the response length every step
(``metrics.jsonl``), prints greedy replies to a few held-out prompts before and after training,
evaluates the reward-model score of sampled replies to ``eval_prompts`` held-out prompts before
and after, and saves the trained adapters alone (an Orbax checkpoint under ``adapters/``).
``results.json``: ``reward_model`` (held-out accuracy), ``before``/``after`` (``score``,
``length``, ``kl``), ``curves`` (per-step ``score``, ``kl``, ``length``), ``samples``.
"""

from __future__ import annotations

from typing import Annotated

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from jirl.models.pretrained import pretrained_model
from jirl.config import ConfigError, at_least, finite, non_negative, positive, preset_over_defaults, registered
from jirl.data.preferences import HHPreferences, assign_split, hh_last_human_turn, read_hh_pairs
from jirl.experiment import RunDir, register_experiment
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.models.bert import load_minilm
from jirl.models.lora import ADAPTERS, ATTENTION, adapter_params, add_lora
from jirl.models.pretrained import load_pretrained
from jirl.rewards.embedding_heads import head_reward, standardize, train_heads
from jirl.rewards.embeddings import embed_texts
from jirl.rewards.models import terminal_rewards
from jirl.rl.kl import response_kl
from jirl.rl.loop import RLConfig, make_rl_iteration
from jirl.train.checkpoint import CheckpointManager
from jirl.train.step import init_train_state

SHARED_HH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf-harmless"

# ``--set preset=gpu`` replaces these fields where they still hold their CPU defaults.
GPU_PRESET = {
    "steps": 500, "prompts_per_iteration": 32, "group_size": 8, "max_new_tokens": 128, "max_prompt_tokens": 128,
    "eval_prompts": 128, "learning_rate": 2e-4,
}


@dataclasses.dataclass
class LoRASettings:
    rank: Annotated[int, at_least(1)] = 8
    alpha: Annotated[float, finite, positive] = 16.0
    targets: tuple[str, ...] = ATTENTION


@dataclasses.dataclass
class HHRLHFConfig:
    seed: int = 0
    preset: Annotated[str, registered(('cpu', 'gpu'))] = "cpu"  # "cpu" or "gpu" (GPU_PRESET)
    model: Annotated[str, pretrained_model] = "smollm2-135m-instruct"  # a preset name, a .gguf file or a Hugging Face folder
    manual_dir: str = ""  # folder with pairs.jsonl.gz (default: ../shared/data/hh-rlhf-harmless)
    lora: LoRASettings = dataclasses.field(default_factory=LoRASettings)
    steps: Annotated[int, at_least(1)] = 100
    prompts_per_iteration: Annotated[int, at_least(1)] = 4
    group_size: Annotated[int, at_least(2)] = 4  # RLOO needs >= 2 replies per prompt
    max_new_tokens: Annotated[int, at_least(1)] = 48
    max_prompt_tokens: Annotated[int, at_least(1)] = 64  # chat-formatted prompt tokens (SmolLM2's system line included)
    temperature: Annotated[float, finite, positive] = 1.0
    kl_coef: Annotated[float, finite, non_negative] = 0.05  # beta: the KL leash
    learning_rate: Annotated[float, finite, positive] = 3e-4  # Adam on the adapters only
    rm_pairs: Annotated[int, non_negative] = 0  # use only the first N HH pairs for the reward model (0: all 1,843); smoke runs
    rm_steps: Annotated[int, at_least(1)] = 400
    rm_learning_rate: Annotated[float, finite, positive] = 3e-3
    eval_prompts: Annotated[int, at_least(1)] = 16  # held-out prompts scored before and after (sampled replies)
    show_samples: Annotated[int, non_negative] = 3  # greedy replies printed before and after


def apply_preset(config: HHRLHFConfig) -> HHRLHFConfig:
    """``preset=gpu`` sets ``GPU_PRESET``'s fields that still hold their CPU defaults."""
    if config.preset == "cpu":
        return config
    if config.preset != "gpu":
        raise ConfigError(f"preset={config.preset!r} is not one of ('cpu', 'gpu')")
    return preset_over_defaults(config, GPU_PRESET)


def rm_text(human_turn: str, response: str) -> str:
    """What the reward model reads: one exchange, in HH-RLHF's own speaker labels."""
    return f"Human: {human_turn}\n\nAssistant: {response}"


# --------------------------------------------------------------------------- reward model


@dataclasses.dataclass
class TextRewardModel:
    """``score(texts)``: a linear head on standardised MiniLM embeddings, itself standardised."""

    encoder: tuple  # (graphdef, params, tokenizer) of the MiniLM encoder
    feature_mean: np.ndarray
    feature_std: np.ndarray
    head: dict
    score_mean: float = 0.0
    score_std: float = 1.0

    def raw_scores_of_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        features = (embeddings - self.feature_mean) / self.feature_std
        return np.asarray(head_reward(self.head, jnp.asarray(features)))

    def score(self, texts: list[str]) -> np.ndarray:
        raw = self.raw_scores_of_embeddings(embed_texts(texts, self.encoder, batch_size=16))
        return (raw - self.score_mean) / self.score_std


def fit_reward_model(config: HHRLHFConfig, pairs, split: list[str], run: RunDir) -> tuple[TextRewardModel, dict]:
    """BT head on MiniLM embeddings of the training pairs; held-out pairwise accuracy."""
    graphdef, params, tokenizer, _ = load_minilm()
    encoder = (graphdef, params, tokenizer)
    texts = {side: [rm_text(hh_last_human_turn(p.prompt), getattr(p, side)) for p in pairs] for side in ("chosen", "rejected")}
    run.console.print(f"embedding {2 * len(pairs)} HH responses with all-MiniLM-L6-v2 ...")
    embedded = {side: embed_texts(texts[side], encoder) for side in texts}
    train = np.array([s == "train" for s in split])
    mean = embedded["chosen"][train].mean(0)
    std = embedded["chosen"][train].std(0) + 1e-6
    train_c, train_r, test_c, test_r = standardize(
        embedded["chosen"][train], embedded["rejected"][train], embedded["chosen"][~train], embedded["rejected"][~train]
    )
    heads, _ = train_heads(
        jax.random.key(config.seed), train_c, train_r, loss="bt", steps=config.rm_steps, learning_rate=config.rm_learning_rate
    )
    head = jax.tree_util.tree_map(lambda x: x[0], heads)
    model = TextRewardModel(encoder, mean, std, head)
    train_scores = np.concatenate([model.raw_scores_of_embeddings(embedded[s][train]) for s in ("chosen", "rejected")])
    model.score_mean, model.score_std = float(train_scores.mean()), float(train_scores.std() + 1e-6)

    def accuracy(rows):
        return float(np.mean(model.raw_scores_of_embeddings(embedded["chosen"][rows]) > model.raw_scores_of_embeddings(embedded["rejected"][rows])))

    report = {"train_pairs": int(train.sum()), "test_pairs": int((~train).sum()), "train_accuracy": accuracy(train), "test_accuracy": accuracy(~train)}
    return model, report


# --------------------------------------------------------------------------- prompts as a task


@dataclasses.dataclass(eq=False)
class PromptSet:
    """What an RL iteration needs of a task: prompts to sample, a horizon and an EOS id.
    ``tokens [N, width]`` are left-aligned chat-formatted prompts, padded with EOS."""

    tokens: np.ndarray
    lens: np.ndarray
    texts: list[str]  # the human turn of each prompt
    horizon: int
    eos_id: int

    def sample_prompts(self, key, batch_size: int):
        index = jax.random.choice(key, len(self.lens), (batch_size,))
        return jnp.asarray(self.tokens)[index], jnp.asarray(self.lens)[index]


def held_out_prompts(config: HHRLHFConfig, pairs, split, tokenizer) -> PromptSet:
    """The last human turn of every held-out dialogue (once each) that fits ``max_prompt_tokens``."""
    turns = sorted({hh_last_human_turn(p.prompt) for p, s in zip(pairs, split) if s == "test"})
    encoded = [(turn, tokenizer.encode_chat([{"role": "user", "content": turn}])) for turn in turns if turn]
    kept = [(turn, ids) for turn, ids in encoded if len(ids) <= config.max_prompt_tokens]
    if len(kept) < config.prompts_per_iteration:
        raise ConfigError(
            f"only {len(kept)} held-out prompts fit max_prompt_tokens={config.max_prompt_tokens}; raise it"
        )
    width = max(len(ids) for _, ids in kept)
    tokens = np.full((len(kept), width), tokenizer.eos_id, np.int32)
    for row, (_, ids) in enumerate(kept):
        tokens[row, : len(ids)] = ids
    lens = np.array([len(ids) for _, ids in kept], np.int32)
    return PromptSet(tokens, lens, [turn for turn, _ in kept], config.max_new_tokens, tokenizer.eos_id)


def reward_fn_for(prompts: PromptSet, reward_model: TextRewardModel, tokenizer):
    """``reward_fn(tokens, prompt_lens, response_lens) -> [B, horizon]`` for ``collect``: the
    reward model's score of each decoded reply, paid at its last token (a host-side function:
    the reply is detokenized and re-tokenized for MiniLM)."""
    turn_of = {tuple(row[:n].tolist()): text for row, n, text in zip(prompts.tokens, prompts.lens, prompts.texts)}

    def reward_fn(tokens, prompt_lens, response_lens):
        tokens, prompt_lens, response_lens = (np.asarray(x) for x in (tokens, prompt_lens, response_lens))
        texts = []
        for row, p, n in zip(tokens, prompt_lens, response_lens):
            reply = tokenizer.decode(row[p : p + n].tolist(), skip_special_tokens=True)
            texts.append(rm_text(turn_of[tuple(row[:p].tolist())], reply))
        scores = jnp.asarray(reward_model.score(texts), jnp.float32)
        return terminal_rewards(scores, jnp.asarray(response_lens), prompts.horizon)

    return reward_fn


# --------------------------------------------------------------------------- evaluation


def evaluate(key, graphdef, params, ref_params, prompts: PromptSet, reward_fn, count: int, temperature: float) -> dict:
    """One sampled reply to each of the first ``count`` prompts: mean reward-model score, length,
    and KL(pi || pi_ref) as the sum over each reply's steps of the exact per-step KL over the
    vocabulary (``response_kl``: unbiased, never negative, far less noisy than ``k1``)."""
    rows = slice(0, min(count, len(prompts.lens)))
    sampling = SamplingConfig(max_new_tokens=prompts.horizon, eos_id=prompts.eos_id, temperature=temperature)
    out = generate(graphdef, params, prompts.tokens[rows], prompts.lens[rows], key, sampling)
    rewards = reward_fn(out.tokens, out.prompt_lens, out.response_lens)
    kl = response_kl(graphdef, params, ref_params, out.tokens, out.prompt_lens, out.response_mask, temperature)
    return {
        "score": float(jnp.mean(jnp.sum(rewards, axis=1))),
        "length": float(jnp.mean(out.response_lens)),
        "kl": float(jnp.mean(kl)),
    }


def greedy_replies(graphdef, params, prompts: PromptSet, tokenizer, reward_model, count: int) -> list[dict]:
    rows = slice(0, min(count, len(prompts.lens)))
    sampling = SamplingConfig(max_new_tokens=prompts.horizon, eos_id=prompts.eos_id, greedy=True)
    out = generate(graphdef, params, prompts.tokens[rows], prompts.lens[rows], jax.random.key(0), sampling)
    replies = [
        tokenizer.decode(np.asarray(out.response_tokens[i, : int(out.response_lens[i])]).tolist(), skip_special_tokens=True)
        for i in range(out.tokens.shape[0])
    ]
    scores = reward_model.score([rm_text(t, r) for t, r in zip(prompts.texts[rows], replies)])
    return [{"prompt": t, "reply": r, "score": float(s)} for t, r, s in zip(prompts.texts[rows], replies, scores)]


# --------------------------------------------------------------------------- the experiment


@register_experiment("hh_rlhf", config=HHRLHFConfig, description="RLOO + LoRA on SmolLM2-135M against a MiniLM reward model of HH-RLHF harmlessness")
def run(config: HHRLHFConfig, run: RunDir) -> dict:
    config = apply_preset(config)
    if config.group_size < 2 or config.steps < 1:
        raise ConfigError(f"need group_size >= 2 (RLOO's baseline) and steps >= 1; got {config.group_size}, {config.steps}")
    seconds = {}
    started = tick = time.perf_counter()
    manual_dir = Path(config.manual_dir) if config.manual_dir else SHARED_HH
    pairs, _ = read_hh_pairs(HHPreferences.split_files(manual_dir)["all"])  # a DataError naming the file when it is missing
    split = [assign_split(p.prompt, 0.2, 0) for p in pairs]  # the HHPreferences split (test_fraction 0.2, seed 0)
    if config.rm_pairs < 0:
        raise ConfigError(f"rm_pairs must be >= 0 (0: all pairs), got {config.rm_pairs}")
    rm_rows = slice(0, config.rm_pairs or None)
    reward_model, rm_report = fit_reward_model(config, pairs[rm_rows], split[rm_rows], run)
    seconds["reward_model"], tick = time.perf_counter() - tick, time.perf_counter()
    run.console.print(f"reward model: held-out accuracy {rm_report['test_accuracy']:.3f} on {rm_report['test_pairs']} pairs")

    base = load_pretrained(config.model)
    tokenizer = base.tokenizer
    if tokenizer is None or tokenizer.chat_template is None:
        raise ConfigError(f"model {config.model!r} has no tokenizer with a chat template; hh_rlhf needs both")
    prompts = held_out_prompts(config, pairs, split, tokenizer)
    policy = add_lora(nnx.merge(base.graphdef, base.params), config.lora.rank, config.lora.alpha, config.lora.targets, seed=config.seed)
    graphdef, ref_params = nnx.split(policy)  # zero-initialised adapters: the reference is the base model
    reward_fn = reward_fn_for(prompts, reward_model, tokenizer)

    rl = RLConfig(
        advantage="rloo", policy_loss="pg", group_size=config.group_size, prompts_per_iteration=config.prompts_per_iteration,
        kl_coef=config.kl_coef, kl_in="reward", temperature=config.temperature,
    )
    optimizer = optax.adam(config.learning_rate)
    state = init_train_state(ref_params, optimizer, jax.random.key(config.seed), trainable=ADAPTERS)
    rl_iteration = make_rl_iteration(prompts, graphdef, optimizer, rl, reward_fn=reward_fn, host_reward=True)  # MiniLM reads text
    eval_key = jax.random.key(config.seed + 1)

    samples = {"before": greedy_replies(graphdef, ref_params, prompts, tokenizer, reward_model, config.show_samples)}
    before = evaluate(eval_key, graphdef, ref_params, ref_params, prompts, reward_fn, config.eval_prompts, config.temperature)
    seconds["load_and_evaluate_before"], tick = time.perf_counter() - tick, time.perf_counter()
    curves = {"score": [], "kl": [], "length": [], "seconds": []}
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=run.console) as progress:
        bar = progress.add_task("RLOO", total=config.steps)
        for step in range(config.steps):
            step_started = time.perf_counter()
            state, metrics = rl_iteration(state, ref_params, jax.random.fold_in(jax.random.key(config.seed), step))
            if metrics.get("update/nonfinite"):
                raise FloatingPointError(f"non-finite loss or gradient at step {step}; the adapters saved so far are kept")
            for name, key in (("score", "reward"), ("kl", "kl_to_reference"), ("length", "response_length")):
                curves[name].append(metrics[key])
            curves["seconds"].append(time.perf_counter() - step_started)
            run.log(step, **metrics)
            progress.update(bar, advance=1, description=f"RLOO score {metrics['reward']:+.2f} KL {metrics['kl_to_reference']:.2f}")

    seconds["rl"], tick = time.perf_counter() - tick, time.perf_counter()
    params = state.full_params
    after = evaluate(eval_key, graphdef, params, ref_params, prompts, reward_fn, config.eval_prompts, config.temperature)
    samples["after"] = greedy_replies(graphdef, params, prompts, tokenizer, reward_model, config.show_samples)
    with CheckpointManager(run.path / "adapters") as manager:
        manager.save(config.steps, adapter_params(params), {"lora": dataclasses.asdict(config.lora), "model": config.model})

    seconds["evaluate_after_and_save"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started
    print_report(run, before, after, samples)
    plot(run.path_for("hh_rlhf.png"), curves)
    return {
        "model": config.model, "reward_model": rm_report, "num_prompts": len(prompts.lens),
        "before": before, "after": after, "curves": curves, "samples": samples,
        "seconds": seconds, "seconds_per_step": float(np.mean(curves["seconds"])),
    }


def print_report(run: RunDir, before: dict, after: dict, samples: dict) -> None:
    for name, values in (("before", before), ("after", after)):
        run.console.print(f"{name:6s}: reward-model score {values['score']:+.3f}, length {values['length']:.1f}, KL {values['kl']:.3f}")
    for old, new in zip(samples["before"], samples["after"]):
        run.console.print(f"\n[bold]human:[/bold] {old['prompt']}")
        run.console.print(f"[bold]before[/bold] ({old['score']:+.2f}): {old['reply']}")
        run.console.print(f"[bold]after[/bold]  ({new['score']:+.2f}): {new['reply']}")


def plot(path, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = np.arange(1, len(curves["score"]) + 1)
    for ax, (name, label) in zip(axes, (("score", "reward-model score"), ("kl", "KL(π ‖ π_ref), nats"), ("length", "reply length, tokens"))):
        values = np.asarray(curves[name], float)
        ax.plot(steps, values, alpha=0.35, lw=1)
        window = max(1, len(values) // 10)
        if len(values) >= window > 1:
            ax.plot(steps[window - 1 :], np.convolve(values, np.ones(window) / window, mode="valid"), lw=2)
        ax.set(xlabel="RLOO step", title=label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
