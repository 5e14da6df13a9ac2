"""``jirl run rm_noise``: Bradley-Terry vs classification vs hinge reward models under label noise.

Sun et al. (ICLR 2025, "Rethinking Bradley-Terry models in preference-based reward modeling")
report that an order-consistent classification reward model is competitive with BT and more
robust when annotations are noisy. Following their "reusing embeddings" recipe, responses are
embedded once by a jirl transformer and many light heads are trained on the cached embeddings.

(a) synthetic: the ``gold_rm`` task's gold reward labels within-prompt pairs through a BT
    annotator (``beta_ann``) and then a fraction ``noise`` of labels is flipped. Held-out
    pairwise accuracy (against the gold order) and best-of-N gain in gold reward are reported.
(b) HH-RLHF harmless (the real 1,843 pairs): a fraction ``noise`` of the training labels is
    flipped; accuracy on the untouched held-out 20 % is reported. ``hh.backbone`` picks the
    embedder: the random jirl transformer (``transformer``, the default) or the pretrained
    all-MiniLM-L6-v2 sentence encoder (``minilm``) applied to the same dialogue text.

Each cell is the mean and std over ``num_seeds`` seeds (pair sampling, flips, initialisation), whose
reward heads train side by side in one vmapped program.
"""

from __future__ import annotations

from typing import Annotated

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from rich.table import Table

from jirl.data.builders import data_source, prepare
from jirl.data.preferences import HHPreferences, preference_report
from jirl.eval.metrics import best_of_n_exact
from jirl.experiment import RunDir, register_experiment
from jirl.mdp.demonstrations import from_optimum
from jirl.mdp.tasks import TaskConfig, build_task
from jirl.mdp.tokenizer import ByteTokenizer
from jirl.models.transformer import ModelSize, Transformer
from jirl.rewards.annotation import simulate_preferences
from jirl.rewards.embedding_heads import member_rewards, standardize, train_heads
from jirl.config import ConfigError, at_least, each, finite, in_range, non_empty, non_negative, positive, registered
from jirl.rewards.losses import PAIRWISE_LOSSES
from jirl.rewards.embeddings import Pooling, cached_array, embed_sequences, embed_texts, fingerprint

SHARED_HH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf-harmless"


@dataclasses.dataclass
class SyntheticStudy:
    enabled: bool = True
    task: TaskConfig = dataclasses.field(default_factory=lambda: TaskConfig("gold_rm"))
    pool_size: Annotated[int, at_least(2)] = 4096  # responses sampled (near-uniformly) before de-duplication
    num_pairs: Annotated[int, at_least(1)] = 2000
    beta_ann: Annotated[float, finite, non_negative] = 1.0  # BT annotator: P(a > b) = sigmoid(beta_ann (r_a - r_b))
    best_of_n: Annotated[int, at_least(1)] = 16
    pooling: Pooling = "last"


@dataclasses.dataclass
class HHStudy:
    enabled: bool = True
    manual_dir: str = ""  # folder with pairs.jsonl.gz (default: ../shared/data/hh-rlhf-harmless)
    max_len: Annotated[int, at_least(2)] = 256
    # Mean over the response's hidden states: chosen and rejected share the prompt, so only the
    # response differs (5-fold CV on the training split: 0.57 vs 0.55 for last-token pooling).
    pooling: Pooling = "response_mean"
    # "transformer": the random jirl transformer of ``embedder`` over the byte tokens;
    # "minilm": all-MiniLM-L6-v2 sentence embeddings of the same (decoded) prompt + response text.
    backbone: str = "transformer"


@dataclasses.dataclass
class RMNoiseConfig:
    seed: int = 0
    methods: Annotated[tuple[str, ...], non_empty, each(registered(PAIRWISE_LOSSES))] = ("bt", "classification", "hinge")
    noise_levels: Annotated[tuple[float, ...], non_empty, each(in_range(0, 0.5))] = (0.0, 0.1, 0.2, 0.3, 0.4)
    num_seeds: Annotated[int, at_least(1)] = 5
    # A randomly initialised jirl transformer: pretrained embedders come with the real-model issue.
    # d_model=128 was chosen by 5-fold cross-validation on the HH training split.
    embedder: ModelSize = dataclasses.field(default_factory=lambda: ModelSize(family="gpt2", d_model=128))
    head_hidden: Annotated[int, non_negative] = 0  # 0: linear head on the embeddings; > 0: one hidden ReLU layer
    head_steps: Annotated[int, at_least(1)] = 400
    head_learning_rate: Annotated[float, finite, positive] = 3e-3
    head_weight_decay: Annotated[float, finite, non_negative] = 1e-2
    synthetic: SyntheticStudy = dataclasses.field(default_factory=SyntheticStudy)
    hh: HHStudy = dataclasses.field(default_factory=HHStudy)


def embedder_params(config: RMNoiseConfig, vocab_size: int, max_len: int):
    model_config = config.embedder.build(vocab_size, max_len)
    return nnx.split(Transformer(model_config, rngs=nnx.Rngs(config.seed + 1000)))


def fit_head(config: RMNoiseConfig, key, loss: str, chosen, rejected):
    params, _ = train_heads(
        key, chosen, rejected, loss=loss, hidden=config.head_hidden, steps=config.head_steps,
        learning_rate=config.head_learning_rate, weight_decay=config.head_weight_decay,
    )
    return params


def seed_fitters(config: RMNoiseConfig) -> dict:
    """``{method: fit(keys, chosen, rejected)}``: one head per seed, the seeds side by side in one
    vmapped program (``keys [S]``, pairs ``chosen, rejected [S, P, d]`` -> the heads' parameters
    stacked ``[S, 1, ...]``), compiled once per method and reused by every noise level."""
    return {method: jax.jit(jax.vmap(lambda key, c, r, method=method: fit_head(config, key, method, c, r))) for method in config.methods}


def flip(key, chosen, rejected, rate):
    """Swap chosen and rejected of each pair with probability ``rate`` (label-flip noise)."""
    swap = jax.random.bernoulli(key, rate, (len(chosen),))
    swap = np.asarray(swap)[:, None]
    return np.where(swap, rejected, chosen), np.where(swap, chosen, rejected)


# --------------------------------------------------------------------------- (a) synthetic


def synthetic_study(config: RMNoiseConfig, run: RunDir):
    study = config.synthetic
    task = build_task(study.task)
    demos = from_optimum(task, jax.random.key(config.seed), study.pool_size, beta=1e3)  # ~uniform
    tokens, index = np.unique(np.asarray(demos.tokens), axis=0, return_index=True)
    lengths = np.asarray(demos.prompt_lens + demos.response_lens)[index]
    gold = np.asarray(demos.returns)[index]
    prompt_ids = tokens[:, 0]
    graphdef, params = embedder_params(config, task.vocab_size, tokens.shape[1])
    prompt_lens = np.asarray(demos.prompt_lens)[index]
    embeddings = embed_sequences(graphdef, params, tokens, lengths, study.pooling, batch_size=256, starts=prompt_lens)

    accuracy, bon_gain = {}, {}
    oracle_gain, seeds = [], []
    for seed in range(config.num_seeds):  # each seed's split, held-out pairs and labelled pairs (host, cheap)
        key = jax.random.key(config.seed * 1000 + seed)
        split_key, pair_key, test_key, *method_keys = jax.random.split(key, 3 + len(config.methods))
        order = np.asarray(jax.random.permutation(split_key, len(tokens)))
        train, test = order[: len(order) // 2], order[len(order) // 2 :]
        train_x, test_x = standardize(embeddings[train], embeddings[test])
        oracle = best_of_n_exact(jnp.asarray(gold[test]), jnp.asarray(gold[test]), study.best_of_n, jnp.asarray(prompt_ids[test]))
        oracle_gain.append(float(oracle[-1] - oracle[0]))
        pairs = {}
        for noise in config.noise_levels:
            chosen, rejected, _ = simulate_preferences(
                pair_key, jnp.asarray(gold[train]), jnp.asarray(prompt_ids[train]), study.num_pairs, study.beta_ann, noise
            )
            pairs[noise] = (train_x[np.asarray(chosen)], train_x[np.asarray(rejected)])
        seeds.append({"test": test, "test_x": test_x, "held_out": held_out_pairs(test_key, gold[test], prompt_ids[test]),
                      "method_keys": method_keys, "pairs": pairs})
    fit = seed_fitters(config)
    for noise in config.noise_levels:
        for m, method in enumerate(config.methods):
            heads = fit[method](
                jnp.stack([s["method_keys"][m] for s in seeds]),
                np.stack([s["pairs"][noise][0] for s in seeds]), np.stack([s["pairs"][noise][1] for s in seeds]),
            )
            for seed, s in enumerate(seeds):
                head = jax.tree_util.tree_map(lambda x: x[seed], heads)
                reward = np.asarray(member_rewards(head, s["test_x"])[0])
                test_a, test_b = s["held_out"]
                acc = float(np.mean(reward[test_a] > reward[test_b]))
                test = s["test"]
                curve = best_of_n_exact(jnp.asarray(reward), jnp.asarray(gold[test]), study.best_of_n, jnp.asarray(prompt_ids[test]))
                accuracy.setdefault(method, {}).setdefault(noise, []).append(acc)
                bon_gain.setdefault(method, {}).setdefault(noise, []).append(float(curve[-1] - curve[0]))
                run.log(seed, study="synthetic", method=method, noise=noise, accuracy=acc, bon_gain=bon_gain[method][noise][-1])
    return accuracy, bon_gain, float(np.mean(oracle_gain)), {"task": task.name, "unique_responses": int(len(tokens))}


def held_out_pairs(key, gold, prompt_ids, num: int = 5000):
    """Random within-prompt pairs of held-out responses, the higher gold reward first (no ties)."""
    a, b = (np.asarray(x) for x in jax.random.randint(key, (2, num), 0, len(gold)))
    keep = (prompt_ids[a] == prompt_ids[b]) & (gold[a] != gold[b])
    a, b = a[keep], b[keep]
    a_better = gold[a] > gold[b]
    return np.where(a_better, a, b), np.where(a_better, b, a)


# --------------------------------------------------------------------------- (b) HH-RLHF


HH_BACKBONES = ("transformer", "minilm")


def dialogue_texts(pairs: dict[str, np.ndarray], side: str) -> list[str]:
    """The prompt + response text of each stacked byte-tokenized pair (what the transformer reads)."""
    lengths = pairs["prompt_len"] + pairs[f"{side}_len"]
    return [ByteTokenizer().decode(row[:n], stop_at_eos=False) for row, n in zip(pairs[side], lengths)]


def hh_study(config: RMNoiseConfig, run: RunDir):
    if config.hh.backbone not in HH_BACKBONES:
        raise ConfigError(f"hh.backbone={config.hh.backbone!r} is not one of {HH_BACKBONES}")
    manual_dir = Path(config.hh.manual_dir) if config.hh.manual_dir else SHARED_HH
    builder = prepare(HHPreferences, run.path / "data", manual_dir=manual_dir, max_len=config.hh.max_len)
    report = preference_report(builder)
    splits = {split: stack(data_source(builder, split)) for split in ("train", "test")}

    if config.hh.backbone == "minilm":
        from jirl.models.bert import load_minilm

        graphdef, params, tokenizer, _ = load_minilm()
        tag = f"minilm-{fingerprint(params)[:8]}"

        def compute(pairs, side):
            return embed_texts(dialogue_texts(pairs, side), (graphdef, params, tokenizer))
    else:
        graphdef, params = embedder_params(config, ByteTokenizer.vocab_size, config.hh.max_len)
        tag = f"{config.hh.pooling}-{fingerprint(params)[:8]}"

        def compute(pairs, side):
            lengths = pairs["prompt_len"] + pairs[f"{side}_len"]
            return embed_sequences(
                graphdef, params, pairs[side], lengths, config.hh.pooling, batch_size=64, starts=pairs["prompt_len"]
            )

    def embed(split, side):
        path = run.path / "embeddings" / f"hh-{split}-{side}-{tag}.npy"
        return cached_array(path, lambda: compute(splits[split], side))

    train_c, train_r, test_c, test_r = (embed(s, side) for s in ("train", "test") for side in ("chosen", "rejected"))
    train_c, train_r, test_c, test_r = standardize(train_c, train_r, test_c, test_r)
    accuracy = {}
    # Per seed: one flip key (shared by the noise levels) and one key per method.
    keys = jnp.stack([
        jax.random.split(jax.random.key(config.seed * 1000 + seed + 17), 1 + len(config.methods)) for seed in range(config.num_seeds)
    ])
    fit = seed_fitters(config)
    for noise in config.noise_levels:
        flipped = [flip(keys[seed, 0], train_c, train_r, noise) for seed in range(config.num_seeds)]
        chosen, rejected = np.stack([c for c, _ in flipped]), np.stack([r for _, r in flipped])
        for m, method in enumerate(config.methods):
            heads = fit[method](keys[:, 1 + m], chosen, rejected)
            for seed in range(config.num_seeds):
                head = jax.tree_util.tree_map(lambda x: x[seed], heads)
                acc = float(jnp.mean(member_rewards(head, test_c)[0] > member_rewards(head, test_r)[0]))
                accuracy.setdefault(method, {}).setdefault(noise, []).append(acc)
                run.log(seed, study="hh", method=method, noise=noise, accuracy=acc)
    info = {"kept": report["kept"], "dropped": report["dropped"], "train": len(train_c), "test": len(test_c)}
    return accuracy, {**info, "backbone": config.hh.backbone, "embedding_dim": int(train_c.shape[1])}


def stack(source) -> dict[str, np.ndarray]:
    examples = [source[i] for i in range(len(source))]
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


# --------------------------------------------------------------------------- the experiment


def summarize(cells: dict) -> dict:
    """``{method: {noise: [values]}} -> {method: {"0.1": {"mean", "std"}}}``."""
    return {
        method: {f"{noise:g}": {"mean": float(np.mean(v)), "std": float(np.std(v))} for noise, v in by_noise.items()}
        for method, by_noise in cells.items()
    }


@register_experiment("rm_noise", config=RMNoiseConfig, description="BT vs classification vs hinge reward models under label noise")
def run(config: RMNoiseConfig, run: RunDir) -> dict:
    results = {"methods": list(config.methods), "noise_levels": [f"{n:g}" for n in config.noise_levels]}
    accuracy: dict = {m: {f"{n:g}": {} for n in config.noise_levels} for m in config.methods}
    if config.synthetic.enabled:
        syn_acc, syn_bon, oracle_gain, info = synthetic_study(config, run)
        for method, cells in summarize(syn_acc).items():
            for noise, cell in cells.items():
                accuracy[method][noise]["synthetic"] = cell
        results["bon_gain"] = summarize(syn_bon)
        results["bon_gain_oracle"] = oracle_gain
        results["synthetic"] = {**info, "best_of_n": config.synthetic.best_of_n, "beta_ann": config.synthetic.beta_ann}
    if config.hh.enabled:
        hh_acc, info = hh_study(config, run)
        for method, cells in summarize(hh_acc).items():
            for noise, cell in cells.items():
                accuracy[method][noise]["hh"] = cell
        results["hh"] = info
    results["accuracy"] = accuracy
    print_table(run, results)
    plot(run.path_for("rm_noise.png"), results)
    return results


def print_table(run: RunDir, results: dict) -> None:
    table = Table(title="reward models under label noise (mean ± std over seeds)")
    table.add_column("method")
    table.add_column("noise", justify="right")
    studies = [s for s in ("synthetic", "hh") if s in next(iter(next(iter(results["accuracy"].values())).values()))]
    for study in studies:
        table.add_column(f"{study} accuracy", justify="right")
    if "bon_gain" in results:
        table.add_column(f"BoN-{results['synthetic']['best_of_n']} gold gain", justify="right")
    for method in results["methods"]:
        for noise in results["noise_levels"]:
            cells = [fmt(results["accuracy"][method][noise][s]) for s in studies]
            if "bon_gain" in results:
                cells.append(fmt(results["bon_gain"][method][noise]))
            table.add_row(method, noise, *cells)
    run.console.print(table)
    if "bon_gain_oracle" in results:
        run.console.print(f"best-of-N gain when the gold reward itself picks: {results['bon_gain_oracle']:.3f}")


def fmt(cell: dict) -> str:
    return f"{cell['mean']:.3f} ± {cell['std']:.3f}"


def plot(path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("synthetic", "accuracy"), ("hh", "accuracy")]
    panels = [p for p in panels if p[0] in results["accuracy"][results["methods"][0]][results["noise_levels"][0]]]
    if "bon_gain" in results:
        panels.append(("synthetic", "bon_gain"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    noise = [float(n) for n in results["noise_levels"]]
    for ax, (study, metric) in zip(axes[0], panels):
        for method in results["methods"]:
            if metric == "accuracy":
                cells = [results["accuracy"][method][n][study] for n in results["noise_levels"]]
            else:
                cells = [results["bon_gain"][method][n] for n in results["noise_levels"]]
            mean = np.array([c["mean"] for c in cells])
            std = np.array([c["std"] for c in cells])
            ax.errorbar(noise, mean, yerr=std, marker="o", capsize=3, label=method)
        title = {"accuracy": "held-out pairwise accuracy", "bon_gain": "best-of-N gold-reward gain"}[metric]
        ax.set(xlabel="label-flip rate", title=f"{study}: {title}")
        if metric == "accuracy":
            ax.axhline(0.5, color="gray", ls=":", lw=1)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
