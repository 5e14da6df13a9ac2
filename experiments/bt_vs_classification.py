"""``jirl run bt_vs_classification``: Sun, Shen & Ton (ICLR 2025) with their own protocol.

"Rethinking Bradley-Terry models in preference-based reward modeling" trains reward models on
*frozen embeddings* of a policy's responses and scores them by the gold reward that best-of-N
selection under them achieves. Their pipeline, at laptop scale (their ``step1``-``step6``):

1. a policy writes ``K = 10`` responses per training prompt and ``M`` (500) per test prompt;
2. a gold reward model scores every response, a frozen backbone embeds it;
3. an annotator of quality ``q`` labels one pair per training prompt (the first ``n`` prompts,
   ``n`` = the annotation quantity), preferring ``a`` with probability

       P(a > b) = sigma(q (r_a - r_b) / s),   s = std of the training responses' gold rewards,

   the pair's two members drawn from the prompt's gold ranks (``jirl.rewards.annotation.
   pair_by_rank``): two random ranks, the middle two ("similar") or the extremes ("diverse"),
   both from the prompt (same-prompt) or one from another prompt (cross-prompt);
4. BT-MLP, CLF-MLP (``train_mlp_reward``, their 1024-512 MLP recipe with early stopping) and
   CLF-GBDT (``jirl.rewards.trees``, LightGBM with its default settings, as the paper states:
   100 rounds of 31-leaf trees) train on the embeddings;
5. each reward picks best-of-N among random N-subsets of a test prompt's ``M`` responses
   (``best_of_n_subsets``, exact over subsets); the **gain** is the gold reward of best-of-N
   minus that of a random response (N = 1), in gold units. Per-prompt Spearman and within-prompt
   pairwise accuracy against the gold are reported beside it.

Two settings: ``synthetic`` (the ``gold_rm`` task's exact gold scorer, responses of a random
policy to random letter prompts, embeddings of a different random transformer at the last token)
and ``text`` (HH-RLHF harmless prompts, SmolLM2-135M-Instruct responses, the gold a ``jirl run
rm`` reward model, MiniLM sentence embeddings with its own mean pooling). Every cell runs
``num_seeds`` seeds (prompt order, pairs, labels, initialisation); the MLPs of one cell train as
one vmapped program.

The paper's findings, each given a verdict from paired 95 % intervals over seeds:

1. classification (CLF-MLP, CLF-GBDT) beats BT-MLP except at low label error (< ~10 %);
2. cross-prompt pairing beats same-prompt pairing, most of all for "similar" pairs;
3. classification's gain grows more steadily with the annotation quantity.

    jirl run bt_vs_classification                       # both settings, CPU sizes (see below for times)
    jirl run bt_vs_classification --set text.enabled=false
    jirl run bt_vs_classification --set preset=paper    # the paper's sizes, for an accelerator

Times on a 2-core CPU (the records under results/): synthetic 110 min while other jobs shared the
machine (the 1024-512 MLPs dominate); text 9 min once its generations are cached, and about
1.5 h to generate and score the 7,000 replies once (``cache=``, resumable chunk by chunk).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from jirl.config import ConfigError, at_least, preset_over_defaults, each, finite, in_range, non_empty, positive
from jirl.eval.form_selection import t_interval
from jirl.eval.metrics import best_of_n_subsets, spearman_per_prompt, within_prompt_accuracy
from jirl.experiment import RunDir, register_experiment
from jirl.mdp.sampler import SamplingConfig, generate
from jirl.mdp.tasks import TaskConfig, build_task
from jirl.models.transformer import ModelSize, Transformer
from jirl.rewards.annotation import RANK_CANDIDATES, annotate, label_error_rate, pair_by_rank
from jirl.rewards.embedding_heads import mlp_reward, standardize, train_mlp_reward
from jirl.rewards.embeddings import embed_sequences, fingerprint
from jirl.rewards.trees import TreeSettings, fit_tree_classifier, tree_rewards

SHARED_HH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf-harmless"
METHODS = ("bt_mlp", "clf_mlp", "clf_gbdt")
PAIRINGS = tuple(f"{side}_{c}" for side in ("same", "cross") for c in RANK_CANDIDATES)
PAPER_BEST_OF_N = (1, 2, 5, 10, 30, 50, 100, 300, 500)
# Sun et al. 2025 (the summary of their Helpful / Gemma-2B runs): best-of-500 gains.
PAPER_GAINS = {"bt_mlp": 1.77, "clf_mlp": 2.98, "clf_gbdt": 2.87}


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass
class SyntheticSetting:
    enabled: bool = True
    # The gold scorer reads sequences of up to 1 + horizon tokens: horizon covers prompt + response.
    task: TaskConfig = dataclasses.field(default_factory=lambda: TaskConfig("gold_rm", ("num_chars=8", "horizon=12")))
    prompt_tokens: Annotated[int, at_least(1)] = 5  # random letters per prompt (8^5 = 32,768 distinct)
    response_tokens: Annotated[int, at_least(1)] = 8
    policy: ModelSize = dataclasses.field(default_factory=lambda: ModelSize(family="gpt2", d_model=32))
    embedder: ModelSize = dataclasses.field(default_factory=lambda: ModelSize(family="gpt2", d_model=128))
    train_prompts: Annotated[int, at_least(2)] = 4000
    test_prompts: Annotated[int, at_least(1)] = 100
    test_responses: Annotated[int, at_least(2)] = 500
    quantities: Annotated[tuple[int, ...], non_empty, each(at_least(2))] = (500, 1000, 2000, 4000)


@dataclasses.dataclass
class TextSetting:
    enabled: bool = True
    manual_dir: str = ""  # folder with HH-RLHF pairs.jsonl.gz (default ../shared/data/hh-rlhf-harmless)
    policy: str = "smollm2-135m-instruct"
    gold: str = "runs/rm"  # a `jirl run rm` folder (its reward model on the policy's tokenizer)
    train_prompts: Annotated[int, at_least(2)] = 400
    test_prompts: Annotated[int, at_least(1)] = 30
    test_responses: Annotated[int, at_least(2)] = 100
    max_prompt_tokens: Annotated[int, at_least(8)] = 48
    max_new_tokens: Annotated[int, at_least(1)] = 32
    temperature: Annotated[float, finite, positive] = 1.0
    top_p: Annotated[float, in_range(0, 1)] = 0.95
    batch_size: Annotated[int, at_least(1)] = 50
    quantities: Annotated[tuple[int, ...], non_empty, each(at_least(2))] = (50, 100, 200, 400)


@dataclasses.dataclass
class MLPSettings:
    hidden: Annotated[tuple[int, ...], each(at_least(1))] = (1024, 512)
    epochs: Annotated[int, at_least(1)] = 30
    batch_size: Annotated[int, at_least(1)] = 10240
    learning_rate: Annotated[float, finite, positive] = 1e-3
    patience: Annotated[int, at_least(1)] = 3


@dataclasses.dataclass
class BTvsCLFConfig:
    seed: int = 0
    preset: str = "cpu"  # "paper": the paper's sizes (PAPER_PRESET) for an accelerator
    num_seeds: Annotated[int, at_least(2)] = 5
    methods: Annotated[tuple[str, ...], non_empty] = METHODS
    responses_per_prompt: Annotated[int, at_least(4)] = 10  # K, training responses per prompt
    # Annotator qualities q; the realised label error of each is reported.
    qualities: Annotated[tuple[float, ...], non_empty, each(positive)] = (10.0, 3.0, 1.0, 0.5, 0.2)
    pairings: Annotated[tuple[str, ...], non_empty] = PAIRINGS
    base_pairing: str = "same_random"  # the pairing of the quality x quantity grid
    pairing_quality: Annotated[float, positive] = 1.0  # the pairing grid's annotator (at the largest quantity)
    best_of_n: Annotated[tuple[int, ...], non_empty, each(at_least(1))] = PAPER_BEST_OF_N
    low_error: Annotated[float, in_range(0, 0.5)] = 0.10  # finding 1: "except below about 10 % label error"
    mlp: MLPSettings = dataclasses.field(default_factory=MLPSettings)
    trees: TreeSettings = dataclasses.field(default_factory=TreeSettings)  # LightGBM's defaults, as the paper states
    synthetic: SyntheticSetting = dataclasses.field(default_factory=SyntheticSetting)
    text: TextSetting = dataclasses.field(default_factory=TextSetting)
    cache: str = ""  # generations, gold rewards and embeddings (default <run>/cache); reused when present


# ``--set preset=paper`` replaces these fields where they still hold their CPU defaults.
PAPER_PRESET = {
    "synthetic.task": TaskConfig("gold_rm", ("num_chars=8", "horizon=14")), "synthetic.prompt_tokens": 6,
    "synthetic.train_prompts": 40000, "synthetic.test_prompts": 2000, "synthetic.quantities": (5000, 10000, 20000, 40000),
    "text.train_prompts": 1400, "text.test_prompts": 200, "text.test_responses": 500, "text.max_prompt_tokens": 450,
    "text.max_new_tokens": 128, "text.quantities": (175, 350, 700, 1400),
}


def apply_preset(config: BTvsCLFConfig) -> BTvsCLFConfig:
    if config.preset == "cpu":
        return config
    if config.preset != "paper":
        raise ConfigError(f"preset={config.preset!r}: use 'cpu' (the default) or 'paper'")
    return preset_over_defaults(config, PAPER_PRESET)


def check_config(config: BTvsCLFConfig) -> None:
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"methods: {unknown} unknown; choose from {METHODS}")
    bad = [p for p in (*config.pairings, config.base_pairing) if p not in PAIRINGS]
    if bad:
        raise ConfigError(f"pairings: {bad} unknown; choose from {PAIRINGS}")
    for name in ("synthetic", "text"):
        setting = getattr(config, name)
        if setting.enabled and max(setting.quantities) > setting.train_prompts:
            raise ConfigError(
                f"{name}.quantities: {max(setting.quantities)} annotations need as many training prompts "
                f"(one pair per prompt), but {name}.train_prompts={setting.train_prompts}; raise it or lower the quantities"
            )
    if not (config.synthetic.enabled or config.text.enabled):
        raise ConfigError("both settings are disabled; enable synthetic or text")


# --------------------------------------------------------------------------- response pools
#
# A pool: ``train_gold [P, K]`` and ``train_x [P * K, d]`` (prompt-major), ``test_gold [T, M]``
# and ``test_x [T * M, d]``, plus an ``info`` dict. Pools are cached as .npz under the cache folder.


def cached_pool(path: Path, build) -> dict:
    if path.exists():
        with np.load(path, allow_pickle=False) as data:
            pool = {k: data[k] for k in data.files if k != "info"}
            pool["info"] = json.loads(str(data["info"]))
        return pool
    pool = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: v for k, v in pool.items() if k != "info"}, info=json.dumps(pool["info"]))
    tmp.replace(path)
    return pool


def synthetic_pool(config: BTvsCLFConfig, cache: Path) -> dict:
    """Random letter prompts, a random policy's responses, the gold_rm scorer's standardised gold
    reward and a different random transformer's last-token embeddings."""
    setting = config.synthetic
    task = build_task(setting.task)
    if not hasattr(task, "gold_score"):
        raise ConfigError(f"synthetic.task must be gold_rm (a gold scorer), got {task.name!r}")
    width = setting.prompt_tokens + setting.response_tokens
    if task.prompt_width + task.horizon < width:
        raise ConfigError(
            f"synthetic: the gold scorer reads {task.prompt_width + task.horizon} tokens but prompt_tokens + response_tokens = {width}; "
            "raise the task's horizon"
        )
    key = jax.random.key(config.seed)
    num_prompts = setting.train_prompts + setting.test_prompts
    alphabet = task.num_chars ** setting.prompt_tokens
    if num_prompts > alphabet:
        raise ConfigError(f"synthetic: {num_prompts} prompts asked, but only {alphabet} distinct prompts of {setting.prompt_tokens} letters exist")
    codes = np.asarray(jax.random.choice(jax.random.fold_in(key, 1), alphabet, (num_prompts,), replace=False))
    prompts = np.stack([(codes // task.num_chars**i) % task.num_chars + 1 for i in range(setting.prompt_tokens)], axis=1).astype(np.int32)
    policy = Transformer(setting.policy.build(task.vocab_size, width), rngs=nnx.Rngs(config.seed + 11))
    graphdef, params = nnx.split(policy)
    embedder = Transformer(setting.embedder.build(task.vocab_size, width), rngs=nnx.Rngs(config.seed + 1000))
    embed_graphdef, embed_params = nnx.split(embedder)
    sampling = SamplingConfig(max_new_tokens=setting.response_tokens, eos_id=task.eos_id)
    gold_fn = jax.jit(task.gold_score)

    def responses(prompt_rows: np.ndarray, per_prompt: int, stream: int):
        ids = np.repeat(prompt_rows, per_prompt, axis=0)
        golds, embeddings = [], []
        for i, start in enumerate(range(0, len(ids), 4096)):
            batch = jnp.asarray(ids[start : start + 4096])
            lens = jnp.full((len(batch),), setting.prompt_tokens, jnp.int32)
            out = generate(graphdef, params, batch, lens, jax.random.fold_in(jax.random.fold_in(key, stream), i), sampling)
            lengths = out.prompt_lens + out.response_lens
            golds.append(np.asarray(gold_fn(out.tokens, lengths)))
            embeddings.append(embed_sequences(embed_graphdef, embed_params, out.tokens, lengths, "last", batch_size=512))
        return np.concatenate(golds).reshape(len(prompt_rows), per_prompt), np.concatenate(embeddings)

    def build():
        train_gold, train_x = responses(prompts[: setting.train_prompts], config.responses_per_prompt, 2)
        test_gold, test_x = responses(prompts[setting.train_prompts :], setting.test_responses, 3)
        info = {"task": task.name, "task_args": list(setting.task.args), "embedding": "random transformer, last token",
                "embedding_dim": int(train_x.shape[1])}
        return {"train_gold": train_gold, "train_x": train_x, "test_gold": test_gold, "test_x": test_x, "info": info}

    digest = fingerprint(params, embed_params, prompts)[:8]
    return cached_pool(cache / f"synthetic-{digest}-k{config.responses_per_prompt}-m{setting.test_responses}.npz", build)


def hh_prompts(setting: TextSetting, tokenizer, tokenization) -> dict[str, list[tuple[str, list[int]]]]:
    """HH-RLHF harmless prompts (the last human turn, as ``jirl run rm`` reads them), unique, split
    by ``assign_split`` as the reward model's data, rendered with the chat template; those longer
    than ``max_prompt_tokens`` are left out. ``{"train": [(text, ids)], "test": [...]}`` in file order."""
    from experiments.rm import HH_SPLIT
    from jirl.data.chat_tokenize import prompt_and_reply_ids
    from jirl.data.preferences import assign_split, hh_last_human_turn, read_hh_pairs

    folder = Path(setting.manual_dir).expanduser() if setting.manual_dir else SHARED_HH
    files = [folder / name for name in ("pairs.jsonl.gz", "pairs.jsonl") if (folder / name).exists()]
    if not files:
        raise ConfigError(f"text.manual_dir={str(folder)!r} holds no pairs.jsonl[.gz] (HH-RLHF rows)")
    pairs, _ = read_hh_pairs(files[0])
    seen, split = set(), {"train": [], "test": []}
    for pair in pairs:
        if pair.prompt in seen:
            continue
        seen.add(pair.prompt)
        text = hh_last_human_turn(pair.prompt)
        ids, _ = prompt_and_reply_ids(tokenizer, tokenization, [{"role": "user", "content": text}], [], f"{files[0]}:{pair.line}")
        if len(ids) <= setting.max_prompt_tokens:
            split[assign_split(pair.prompt, HH_SPLIT["test_fraction"], HH_SPLIT["seed"])].append((text, ids))
    return split


def gold_report(folder: Path, info: dict) -> dict:
    """What the gold reward model is and how well it ranks held-out human preferences: the
    held-out pairwise accuracy (and its standard error) its ``jirl run rm`` recorded."""
    report = {"backbone": info.get("backbone"), "lora_rank": info.get("lora", {}).get("rank")}
    results = folder / "results.json"
    if results.exists():
        after = json.loads(results.read_text()).get("after", {})
        report.update({k: after.get(k) for k in ("accuracy", "accuracy_se", "pairs")})
    return report


def text_pool(config: BTvsCLFConfig, cache: Path, console=None) -> dict:
    """HH-RLHF prompts, SmolLM2 responses (generated in resumable chunks), the gold reward model's
    scores and MiniLM embeddings of prompt + response."""
    from experiments.rm import load_reward_model
    from jirl.data.text_datasets import tokenizer_digest
    from jirl.models.pretrained import load_pretrained

    setting = config.text
    gold_folder = Path(setting.gold).expanduser()
    if not gold_folder.exists():
        raise ConfigError(f"text.gold={setting.gold!r} does not exist; train the gold reward model first: jirl run rm --out {setting.gold}")
    gold = load_reward_model(gold_folder)
    base = load_pretrained(setting.policy)
    if tokenizer_digest(gold.tokenizer) != tokenizer_digest(base.tokenizer):
        raise ConfigError(f"text.gold reads another tokenizer than text.policy={setting.policy!r}; train the gold on the policy's model")
    prompts = hh_prompts(setting, base.tokenizer, gold.tokenization)
    for side, wanted in (("train", setting.train_prompts), ("test", setting.test_prompts)):
        if len(prompts[side]) < wanted:
            raise ConfigError(f"text: {wanted} {side} prompts asked but only {len(prompts[side])} HH prompts fit max_prompt_tokens={setting.max_prompt_tokens}")
    rows = [(p, config.responses_per_prompt) for p in prompts["train"][: setting.train_prompts]]
    rows += [(p, setting.test_responses) for p in prompts["test"][: setting.test_prompts]]
    requests = [(text, ids) for (text, ids), count in rows for _ in range(count)]
    tag = f"{setting.policy.replace('/', '_')}-{fingerprint(np.array([len(requests), setting.max_prompt_tokens, setting.max_new_tokens]))[:6]}"
    folder = cache / f"text-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    sampling = SamplingConfig(max_new_tokens=setting.max_new_tokens, eos_id=base.tokenizer.eos_id,
                              temperature=setting.temperature, top_p=setting.top_p)
    width = setting.max_prompt_tokens
    key = jax.random.key(config.seed + 5)
    chunks = range(0, len(requests), setting.batch_size)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=console is None) as progress:
        bar = progress.add_task("generating and scoring", total=len(chunks))
        for i, start in enumerate(chunks):
            path = folder / f"chunk-{i:05d}.npz"
            if not path.exists():
                part = requests[start : start + setting.batch_size]
                pad = setting.batch_size - len(part)
                part = part + [part[-1]] * pad  # one compiled shape
                tokens = np.full((len(part), width), base.tokenizer.eos_id, np.int32)
                lens = np.array([len(ids) for _, ids in part], np.int32)
                for row, (_, ids) in enumerate(part):
                    tokens[row, : len(ids)] = ids
                out = generate(base.graphdef, base.params, tokens, lens, jax.random.fold_in(key, i), sampling)
                scores = gold.score_fn(out.tokens, out.prompt_lens, out.response_lens)
                keep = setting.batch_size - pad
                tmp = folder / f"chunk-{i:05d}.tmp.npz"
                np.savez(tmp, tokens=np.asarray(out.tokens)[:keep], prompt_len=np.asarray(out.prompt_lens)[:keep],
                         response_len=np.asarray(out.response_lens)[:keep], gold=np.asarray(scores, np.float32)[:keep])
                tmp.replace(path)
            progress.advance(bar)
    parts = []
    for i in range(len(chunks)):
        with np.load(folder / f"chunk-{i:05d}.npz") as chunk:
            parts.append({k: chunk[k] for k in chunk.files})
    data = {k: np.concatenate([p[k] for p in parts]) for k in ("tokens", "prompt_len", "response_len", "gold")}
    replies = [base.tokenizer.decode(t[p : p + n].tolist()) for t, p, n in zip(data["tokens"], data["prompt_len"], data["response_len"])]
    texts = [f"Human: {text}\n\nAssistant: {reply}" for (text, _), reply in zip(requests, replies)]
    embedding_path = folder / "minilm.npy"
    if not embedding_path.exists():
        from jirl.rewards.embeddings import embed_texts

        np.save(embedding_path, embed_texts(texts))
    x = np.load(embedding_path)
    k, n_train = config.responses_per_prompt, setting.train_prompts * config.responses_per_prompt
    info = {
        "policy": setting.policy, "gold": str(setting.gold), "gold_info": gold_report(gold_folder, gold.info),
        "embedding": "all-MiniLM-L6-v2 (mean pooling, its sentence-transformers recipe) of 'Human: prompt Assistant: reply'",
        "embedding_dim": int(x.shape[1]), "finished_replies": float(np.mean(data["response_len"] < setting.max_new_tokens)),
        "mean_reply_tokens": float(np.mean(data["response_len"])), "examples": {"prompt": requests[n_train][0], "reply": replies[n_train]},
    }
    return {"train_gold": data["gold"][:n_train].reshape(-1, k).astype(np.float64), "train_x": x[:n_train],
            "test_gold": data["gold"][n_train:].reshape(setting.test_prompts, -1).astype(np.float64), "test_x": x[n_train:], "info": info}


# --------------------------------------------------------------------------- one grid cell


def annotate_cell(order_key, pair_key, pool: dict, pairing: str, quality: float, quantity: int, scale: float):
    """One seed's annotations: the first ``quantity`` prompts of the seed's prompt order
    (``order_key``: shared by every cell of the seed, so cells compare on the same prompts), one
    pair each by ``pairing``, labelled by the quality-``quality`` annotator. Returns the chosen
    and rejected rows of ``train_x`` and the realised label error."""
    side, candidates = pairing.split("_")
    pair_key, label_key = jax.random.split(pair_key)
    gold = pool["train_gold"]
    order = np.asarray(jax.random.permutation(order_key, gold.shape[0]))
    a, b = pair_by_rank(pair_key, gold[order], quantity, candidates, cross_prompt=side == "cross")
    k = gold.shape[1]
    a, b = order[a // k] * k + a % k, order[b // k] * k + b % k  # back to the pool's rows
    flat = gold.reshape(-1)
    labels = np.asarray(annotate(label_key, flat[a], flat[b], quality / scale))
    chosen, rejected = np.where(labels > 0.5, a, b), np.where(labels > 0.5, b, a)
    return chosen, rejected, label_error_rate(flat[chosen], flat[rejected])


def mlp_trainer(config: BTvsCLFConfig, loss: str):
    """``fit(keys [S], chosen [S, P, d], rejected [S, P, d]) -> layers`` for S seeds in one program."""
    settings = config.mlp

    def fit(key, chosen, rejected):
        return train_mlp_reward(key, chosen, rejected, loss=loss, hidden=tuple(settings.hidden), epochs=settings.epochs,
                                batch_size=settings.batch_size, learning_rate=settings.learning_rate, patience=settings.patience)

    return jax.jit(jax.vmap(fit))


def evaluate_reward(scores: np.ndarray, pool: dict, ns: tuple[int, ...]) -> dict:
    """Best-of-N gold (exact over N-subsets) and its gain over N = 1, per-prompt Spearman and
    within-prompt pairwise accuracy of test-pool ``scores [T * M]`` against the gold."""
    gold = pool["test_gold"].reshape(-1)
    prompt_ids = np.repeat(np.arange(pool["test_gold"].shape[0]), pool["test_gold"].shape[1])
    curve = best_of_n_subsets(scores, gold, ns, prompt_ids)
    return {
        "bon_gold": curve.tolist(), "gain": float(curve[-1] - np.mean(gold)),
        "spearman": float(spearman_per_prompt(scores, gold, prompt_ids)),
        "accuracy": within_prompt_accuracy(scores, gold, prompt_ids),
    }


def run_cell(config: BTvsCLFConfig, pool: dict, cell: tuple[str, float, int], trainers: dict, ns, scale: float) -> dict:
    """Every method and seed of one (pairing, quality, quantity) cell: ``{method: [per-seed results]}``
    and the realised label errors."""
    pairing, quality, quantity = cell
    # Per seed: one key for the prompt order and the initialisations (common to every cell), one
    # for this cell's pairs and labels.
    keys = [jax.random.fold_in(jax.random.key(config.seed), s) for s in range(config.num_seeds)]
    annotated = [annotate_cell(jax.random.fold_in(k, 0), jax.random.fold_in(k, 1 + hash_cell(cell)), pool, pairing, quality, quantity, scale)
                 for k in keys]
    chosen = np.stack([pool["train_x"][c] for c, _, _ in annotated])
    rejected = np.stack([pool["train_x"][r] for _, r, _ in annotated])
    out = {"label_error": [e for _, _, e in annotated]}
    fit_keys = jnp.stack([jax.random.fold_in(k, 1) for k in keys])
    test_x = jnp.asarray(pool["test_x"])  # on the device once for every method and seed
    for method in config.methods:
        if method == "clf_gbdt":
            scores = [tree_rewards(fit_tree_classifier(chosen[s], rejected[s], seed=s, settings=config.trees), pool["test_x"])
                      for s in range(config.num_seeds)]
        else:
            layers, _ = trainers[method](fit_keys, jnp.asarray(chosen), jnp.asarray(rejected))
            scores = list(np.asarray(jax.vmap(mlp_reward, in_axes=(0, None))(layers, test_x)))  # [seeds, T * M]
        out[method] = [evaluate_reward(s, pool, ns) for s in scores]
    return out


def hash_cell(cell) -> int:
    """A stable small integer of a cell (its seeds' stream; not Python's salted hash)."""
    pairing, quality, quantity = cell
    return (PAIRINGS.index(pairing) * 1009 + int(round(quality * 1000)) * 7 + quantity) % 100_003


# --------------------------------------------------------------------------- statistics


def interval(values) -> dict:
    """Mean and 95 % t-interval over seeds (``form_selection.t_interval``), with the standard
    deviation and the number of seeds."""
    values = np.asarray(values, np.float64)
    mean, low, high = t_interval(values)
    return {"mean": mean, "low": low, "high": high, "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}


def detectable(sd: float, n: int) -> float:
    """The smallest true paired difference a two-sided 5 % t-test over ``n`` seeds detects with
    80 % power: ``(t_0.975 + t_0.8) sd / sqrt(n)``."""
    from scipy import stats

    return float((stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n))


def verdict(contrast: dict) -> str:
    """``reproduced`` when the interval of (paper's direction) lies above 0, ``not reproduced``
    when below, ``inconclusive`` when it holds 0."""
    return "reproduced" if contrast["low"] > 0 else "not reproduced" if contrast["high"] < 0 else "inconclusive"


def contrast(values_a, values_b) -> dict:
    """Paired difference a - b over seeds, with its interval and detectable difference."""
    diff = np.asarray(values_a) - np.asarray(values_b)
    out = interval(diff)
    out["detectable"] = detectable(out["sd"], out["n"])
    return out


# --------------------------------------------------------------------------- a setting's study


def cell_key(cell) -> str:
    pairing, quality, quantity = cell
    return f"{pairing}|q={quality:g}|n={quantity}"


def study(config: BTvsCLFConfig, pool: dict, quantities: tuple[int, ...], run: RunDir, name: str) -> dict:
    """The grids of one setting, its controls and the three findings."""
    scale = float(np.std(pool["train_gold"]))
    # Features standardised by the training responses' mean and std (the MLPs train on any
    # embedding scale alike; trees are unaffected).
    train_x, test_x = standardize(pool["train_x"], pool["test_x"])
    pool = {**pool, "train_x": train_x, "test_x": test_x}
    ns = tuple(n for n in config.best_of_n if n <= pool["test_gold"].shape[1])
    quality_grid = [(config.base_pairing, q, n) for q in config.qualities for n in quantities]
    pairing_grid = [(p, config.pairing_quality, max(quantities)) for p in config.pairings]
    cells = list(dict.fromkeys(quality_grid + pairing_grid))
    trainers = {m: mlp_trainer(config, "bt" if m == "bt_mlp" else "classification") for m in config.methods if m != "clf_gbdt"}
    raw = {}
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=run.console) as progress:
        bar = progress.add_task(f"{name}: cells", total=len(cells))
        for cell in cells:
            raw[cell] = run_cell(config, pool, cell, trainers, ns, scale)
            for method in config.methods:
                for seed, r in enumerate(raw[cell][method]):
                    run.log(seed, setting=name, cell=cell_key(cell), method=method, gain=r["gain"], accuracy=r["accuracy"],
                            spearman=r["spearman"], label_error=raw[cell]["label_error"][seed])
            progress.advance(bar)
    gold_itself = evaluate_reward(pool["test_gold"].reshape(-1), pool, ns)
    summary = {cell_key(c): summarize_cell(c, raw[c], config.methods) for c in cells}
    findings = {
        "classification_beats_bt": finding_noise(config, raw, quantities),
        "cross_prompt_beats_same_prompt": finding_pairing(config, raw, quantities),
        "classification_grows_with_quantity": finding_quantity(config, raw, quantities),
    }
    easiest = (config.base_pairing, max(config.qualities), max(quantities))
    control = {m: interval([r["gain"] for r in raw[easiest][m]]) for m in config.methods}
    return {
        "info": {**pool["info"], "train_prompts": int(pool["train_gold"].shape[0]), "responses_per_prompt": int(pool["train_gold"].shape[1]),
                 "test_prompts": int(pool["test_gold"].shape[0]), "test_responses": int(pool["test_gold"].shape[1]),
                 "gold_scale": scale, "gold_test_mean": float(np.mean(pool["test_gold"]))},
        "best_of_n": list(ns), "quantities": list(quantities), "qualities": list(config.qualities),
        "gold_selects": gold_itself,
        # The positive control: at the easiest cell every learned reward's best-of-N beats a
        # random pick (gain interval above 0), and the gold's own best-of-N bounds them.
        "positive_control": {"cell": cell_key(easiest), "gain": control, "passes": all(c["low"] > 0 for c in control.values())},
        "cells": summary, "findings": findings,
    }


def summarize_cell(cell, raw: dict, methods) -> dict:
    pairing, quality, quantity = cell
    out = {"pairing": pairing, "quality": quality, "quantity": quantity, "label_error": interval(raw["label_error"])}
    for method in methods:
        seeds = raw[method]
        out[method] = {
            "gain": interval([r["gain"] for r in seeds]), "accuracy": interval([r["accuracy"] for r in seeds]),
            "spearman": interval([r["spearman"] for r in seeds]),
            "bon_gold": np.mean([r["bon_gold"] for r in seeds], axis=0).tolist(),
            "seeds": {k: [r[k] for r in seeds] for k in ("gain", "accuracy", "spearman")},
        }
    return out


def gains(raw: dict, cell, method: str) -> np.ndarray:
    return np.array([r["gain"] for r in raw[cell][method]])


def finding_noise(config: BTvsCLFConfig, raw: dict, quantities) -> dict:
    """Finding 1: per annotator quality, CLF - BT best-of-N gain (paired over seeds), at the
    largest quantity and averaged over quantities; the verdict pools the qualities whose realised
    label error is at least ``low_error`` (the paper's exception is below it)."""
    classifiers = [m for m in ("clf_mlp", "clf_gbdt") if m in config.methods]
    if "bt_mlp" not in config.methods or not classifiers:
        return {"skipped": "needs bt_mlp and a classifier in methods"}
    per_quality, noisy = {}, []
    for q in config.qualities:
        error = float(np.mean([np.mean(raw[(config.base_pairing, q, n)]["label_error"]) for n in quantities]))
        entry = {"label_error": error}
        for m in classifiers:
            at_max = (config.base_pairing, q, max(quantities))
            averaged = np.mean([gains(raw, (config.base_pairing, q, n), m) - gains(raw, (config.base_pairing, q, n), "bt_mlp") for n in quantities], axis=0)
            entry[m] = {"largest_quantity": contrast(gains(raw, at_max, m), gains(raw, at_max, "bt_mlp")),
                        "over_quantities": interval(averaged)}
        per_quality[f"{q:g}"] = entry
        if error >= config.low_error:
            noisy.append(q)
    verdicts = {}
    for m in classifiers:
        if not noisy:
            verdicts[m] = {"verdict": "inconclusive", "why": f"no quality gives label error >= {config.low_error:g}"}
            continue
        per_seed = np.mean([gains(raw, (config.base_pairing, q, n), m) - gains(raw, (config.base_pairing, q, n), "bt_mlp")
                            for q in noisy for n in quantities], axis=0)
        c = contrast(per_seed, np.zeros_like(per_seed))
        verdicts[m] = {**c, "verdict": verdict(c), "qualities": [f"{q:g}" for q in noisy]}
    return {"claim": "classification reward models beat BT except at low label error (below ~10 %)",
            "statistic": f"{', '.join(classifiers)} minus bt_mlp best-of-N gain, paired over seeds, averaged over the qualities with "
                         f"label error >= {config.low_error:g} and over the quantities ({config.base_pairing} pairs)",
            "per_quality": per_quality, "verdicts": verdicts}


def finding_pairing(config: BTvsCLFConfig, raw: dict, quantities) -> dict:
    """Finding 2: cross-prompt minus same-prompt gain per rank-candidate set (averaged over the
    methods, paired over seeds), and whether the advantage is largest for "similar" pairs."""
    q, n = config.pairing_quality, max(quantities)
    sets = [c for c in RANK_CANDIDATES if f"same_{c}" in config.pairings and f"cross_{c}" in config.pairings]
    if not sets:
        return {"skipped": "needs same_ and cross_ pairings of one candidate set"}
    diff = {c: np.mean([gains(raw, (f"cross_{c}", q, n), m) - gains(raw, (f"same_{c}", q, n), m) for m in config.methods], axis=0)
            for c in sets}
    pooled = contrast(np.mean([diff[c] for c in sets], axis=0), np.zeros(config.num_seeds))
    out = {"claim": "cross-prompt pairing beats same-prompt pairing, most of all for 'similar' pairs",
           "statistic": f"cross minus same best-of-N gain at q={q:g}, n={n}, averaged over {', '.join(config.methods)}, paired over seeds",
           "per_candidates": {c: contrast(diff[c], np.zeros(config.num_seeds)) for c in sets},
           "verdicts": {"cross_beats_same": {**pooled, "verdict": verdict(pooled)}}}
    if "similar" in sets and len(sets) > 1:
        others = np.mean([diff[c] for c in sets if c != "similar"], axis=0)
        most = contrast(diff["similar"], others)
        out["verdicts"]["largest_for_similar"] = {**most, "verdict": verdict(most)}
    return out


def finding_quantity(config: BTvsCLFConfig, raw: dict, quantities) -> dict:
    """Finding 3: the slope of best-of-N gain in log2(quantity) per method and seed (least squares
    over the quantities, averaged over the qualities); classification minus BT, paired over seeds."""
    if len(quantities) < 2 or "bt_mlp" not in config.methods:
        return {"skipped": "needs two quantities and bt_mlp"}
    x = np.log2(np.asarray(quantities, np.float64))
    x = x - x.mean()

    def slopes(method):
        per_q = [np.stack([gains(raw, (config.base_pairing, q, n), method) for n in quantities]) for q in config.qualities]
        return np.mean([(x @ g) / (x @ x) for g in per_q], axis=0)  # [seeds]

    slope = {m: interval(slopes(m)) for m in config.methods}
    verdicts = {}
    for m in ("clf_mlp", "clf_gbdt"):
        if m in config.methods:
            c = contrast(slopes(m), slopes("bt_mlp"))
            verdicts[m] = {**c, "verdict": verdict(c)}
    return {"claim": "classification reward models' gains grow more steadily with the number of annotations",
            "statistic": "slope of best-of-N gain per doubling of the annotations (least squares over the quantities, averaged over "
                         "the qualities), classifier minus bt_mlp, paired over seeds",
            "slope_per_doubling": slope, "verdicts": verdicts}


# --------------------------------------------------------------------------- the experiment


@register_experiment("bt_vs_classification", config=BTvsCLFConfig,
                     description="Sun et al. 2025: BT vs classification reward models on embeddings (annotator quality, pairing, quantity, best-of-N)")
def run(config: BTvsCLFConfig, run: RunDir) -> dict:
    config = apply_preset(config)
    check_config(config)
    cache = Path(config.cache).expanduser() if config.cache else run.path / "cache"
    results = {"methods": list(config.methods), "paper": {"best_of_500_gain_helpful_gemma2b": PAPER_GAINS,
               "findings": ["classification beats BT except below ~10 % label error",
                            "cross-prompt beats same-prompt pairing, most for similar pairs",
                            "classification gains grow more steadily with annotation quantity"]},
               "protocol": {"annotator": "P(a > b) = sigmoid(q (r_a - r_b) / s), s = std of the training gold rewards",
                            "pairs": "one per training prompt, the first n of a seeded prompt order",
                            "mlp": dataclasses.asdict(config.mlp), "trees": dataclasses.asdict(config.trees),
                            "num_seeds": config.num_seeds, "base_pairing": config.base_pairing,
                            "pairing_quality": config.pairing_quality},
               "settings": {}}
    if config.synthetic.enabled:
        results["settings"]["synthetic"] = study(config, synthetic_pool(config, cache), config.synthetic.quantities, run, "synthetic")
    if config.text.enabled:
        results["settings"]["text"] = study(config, text_pool(config, cache, run.console), config.text.quantities, run, "text")
    print_report(run, results)
    plot(run, results)
    return results


def fmt(c: dict, digits: int = 2) -> str:
    return f"{c['mean']:.{digits}f} [{c['low']:.{digits}f}, {c['high']:.{digits}f}]"


def print_report(run: RunDir, results: dict) -> None:
    for name, setting in results["settings"].items():
        table = Table(title=f"{name}: best-of-{setting['best_of_n'][-1]} gold gain (95 % interval over seeds)")
        table.add_column("pairing")
        table.add_column("q", justify="right")
        table.add_column("n", justify="right")
        table.add_column("error", justify="right")
        for method in results["methods"]:
            table.add_column(f"{method} gain / acc", justify="right")
        for cell in setting["cells"].values():
            table.add_row(cell["pairing"], f"{cell['quality']:g}", str(cell["quantity"]), f"{cell['label_error']['mean']:.3f}",
                          *[f"{cell[m]['gain']['mean']:.2f}±{cell[m]['gain']['high'] - cell[m]['gain']['mean']:.2f} / "
                            f"{cell[m]['accuracy']['mean']:.3f}" for m in results["methods"]])
        run.console.print(table)
        run.console.print(f"gold itself: gain {setting['gold_selects']['gain']:.3f}; positive control "
                          f"({setting['positive_control']['cell']}) {'passes' if setting['positive_control']['passes'] else 'FAILS'}")
        for key, finding in setting["findings"].items():
            for sub, v in finding.get("verdicts", {}).items():
                run.console.print(f"  {key} / {sub}: {v['verdict']} ({fmt(v, 3)}; detectable {v.get('detectable', float('nan')):.3f})")


def plot(run: RunDir, results: dict) -> None:
    """One figure per finding (``bt_vs_classification_{noise,pairing,quantity}.png``, a column per
    setting) and all three stacked in ``bt_vs_classification.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("noise", plot_noise), ("pairing", plot_pairing), ("quantity", plot_quantity))
    settings = results["settings"]
    combined, grid = plt.subplots(len(panels), len(settings), figsize=(6 * len(settings), 4.2 * len(panels)), squeeze=False)
    for row, (name, draw) in enumerate(panels):
        fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.2), squeeze=False)
        for col, (setting, s) in enumerate(settings.items()):
            for ax in (axes[0, col], grid[row, col]):
                draw(ax, setting, s, results)
        fig.tight_layout()
        fig.savefig(run.path_for(f"bt_vs_classification_{name}.png"), dpi=110)
        plt.close(fig)
    combined.tight_layout()
    combined.savefig(run.path_for("bt_vs_classification.png"), dpi=100)
    plt.close(combined)


def errorbar(ax, x, cells, method, **kwargs):
    mean = np.array([c[method]["gain"]["mean"] for c in cells])
    low = np.array([c[method]["gain"]["low"] for c in cells])
    high = np.array([c[method]["gain"]["high"] for c in cells])
    ax.errorbar(x, mean, yerr=[mean - low, high - mean], marker="o", capsize=3, label=method, **kwargs)


def plot_noise(ax, name: str, s: dict, results: dict) -> None:
    """Finding 1: best-of-N gain against the realised label error, at the largest quantity."""
    base, n = results["protocol"]["base_pairing"], max(s["quantities"])
    cells = sorted((c for c in s["cells"].values() if c["pairing"] == base and c["quantity"] == n and c["quality"] in s["qualities"]),
                   key=lambda c: c["label_error"]["mean"])
    for method in results["methods"]:
        errorbar(ax, [c["label_error"]["mean"] for c in cells], cells, method)
    ax.axvline(0.10, color="gray", ls=":", lw=1)
    ax.set(xlabel="realised label error", ylabel=f"best-of-{s['best_of_n'][-1]} gold gain", title=f"{name}: annotator quality (n = {n})")
    ax.legend(fontsize=8)


def plot_pairing(ax, name: str, s: dict, results: dict) -> None:
    """Finding 2: gain per pairing, at the pairing grid's quality and the largest quantity."""
    q, n = results["protocol"]["pairing_quality"], max(s["quantities"])
    cells = [c for c in s["cells"].values() if c["quality"] == q and c["quantity"] == n]
    width = 0.8 / len(results["methods"])
    for i, method in enumerate(results["methods"]):
        mean = np.array([c[method]["gain"]["mean"] for c in cells])
        ax.bar(np.arange(len(cells)) + i * width, mean, width, yerr=np.array([c[method]["gain"]["high"] for c in cells]) - mean,
               capsize=2, label=method)
    ax.set_xticks(np.arange(len(cells)) + 0.4 - width / 2, [c["pairing"] for c in cells], rotation=25, fontsize=8)
    ax.set(ylabel="best-of-N gold gain", title=f"{name}: pairing (q = {q:g}, n = {n})")
    ax.legend(fontsize=8)


def plot_quantity(ax, name: str, s: dict, results: dict) -> None:
    """Finding 3: gain against the number of annotations, one line per method and quality."""
    base = results["protocol"]["base_pairing"]
    styles = ["-", "--", ":", "-.", (0, (1, 3))]
    for j, q in enumerate(s["qualities"]):
        for i, method in enumerate(results["methods"]):
            cells = [s["cells"][f"{base}|q={q:g}|n={n}"] for n in s["quantities"]]
            ax.plot(s["quantities"], [c[method]["gain"]["mean"] for c in cells], marker="o", ms=3, ls=styles[j % len(styles)],
                    color=f"C{i}", label=f"{method}" if j == 0 else None)
    ax.set(xscale="log", xlabel="annotations (pairs)", ylabel="best-of-N gold gain",
           title=f"{name}: quantity (line style: q = {', '.join(f'{q:g}' for q in s['qualities'])})")
    ax.legend(fontsize=8)
