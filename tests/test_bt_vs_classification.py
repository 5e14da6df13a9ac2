"""``jirl run bt_vs_classification`` (Sun et al. 2025): the statistics that give each finding its
verdict, the synthetic setting end to end, and the text setting's pipeline (generation, gold
scores, embeddings) on a tiny Llama with a tiny trained reward model."""

import gzip
import json

import numpy as np
import pytest
from scipy import stats

from experiments import bt_vs_classification as btc
from jirl.cli import main

from tests import test_rm_experiment

backbone = test_rm_experiment.backbone  # the rm tests' tiny Llama with a word tokenizer (a module fixture)


# --------------------------------------------------------------------------- statistics


def test_interval_and_detectable_difference_match_the_t_distribution():
    values = np.array([0.3, 0.1, 0.4, 0.2, 0.5])
    got = btc.interval(values)
    half = stats.t.ppf(0.975, 4) * values.std(ddof=1) / np.sqrt(5)
    assert got["mean"] == pytest.approx(0.3) and got["low"] == pytest.approx(0.3 - half) and got["high"] == pytest.approx(0.3 + half)
    assert btc.detectable(1.0, 5) == pytest.approx((stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) / np.sqrt(5))
    assert btc.verdict({"low": 0.1, "high": 0.3}) == "reproduced"
    assert btc.verdict({"low": -0.3, "high": -0.1}) == "not reproduced"
    assert btc.verdict({"low": -0.1, "high": 0.3}) == "inconclusive"


def fake_raw(config, quantities, gain_of):
    """Raw cell results whose per-seed gains come from ``gain_of(cell, method, seed)``."""
    cells = [(config.base_pairing, q, n) for q in config.qualities for n in quantities]
    cells += [(p, config.pairing_quality, max(quantities)) for p in config.pairings]
    raw = {}
    for cell in dict.fromkeys(cells):
        raw[cell] = {"label_error": [0.3 if cell[1] < 5 else 0.05] * config.num_seeds}
        for m in config.methods:
            raw[cell][m] = [{"gain": gain_of(cell, m, s)} for s in range(config.num_seeds)]
    return raw


def test_findings_reproduce_what_the_data_say_and_fail_when_it_is_reversed():
    config = btc.BTvsCLFConfig(qualities=(10.0, 1.0, 0.5), pairing_quality=1.0)
    quantities = (100, 200, 400)
    rng = np.random.default_rng(0)
    noise = {key: rng.normal(scale=0.02) for key in range(10_000)}

    def paper_like(cell, method, seed):
        pairing, q, n = cell
        gain = 1.0 + 0.1 * np.log2(n) * (2.0 if method != "bt_mlp" else 1.0)
        gain += 0.3 if (method != "bt_mlp" and q < 5) else 0.0  # classification wins when labels are noisy
        gain += {"same": 0.0, "cross": 0.2}[pairing.split("_")[0]] * (3.0 if pairing.endswith("similar") else 1.0)
        return gain + noise[hash((cell, method, seed)) % 10_000]

    raw = fake_raw(config, quantities, paper_like)
    noise_finding = btc.finding_noise(config, raw, quantities)
    assert noise_finding["verdicts"]["clf_mlp"]["verdict"] == "reproduced"
    assert noise_finding["verdicts"]["clf_mlp"]["qualities"] == ["1", "0.5"]  # label error >= 10 %
    assert noise_finding["verdicts"]["clf_mlp"]["mean"] == pytest.approx(0.3 + 0.1 * np.mean(np.log2(quantities)), abs=0.02)
    pairing = btc.finding_pairing(config, raw, quantities)
    assert pairing["verdicts"]["cross_beats_same"]["verdict"] == "reproduced"
    assert pairing["verdicts"]["largest_for_similar"]["verdict"] == "reproduced"
    assert btc.finding_quantity(config, raw, quantities)["verdicts"]["clf_gbdt"]["verdict"] == "reproduced"

    # Reversed: BT wins, same-prompt pairs win, BT's gain grows faster.
    raw = fake_raw(config, quantities, lambda c, m, s: -paper_like(c, m, s))
    assert btc.finding_noise(config, raw, quantities)["verdicts"]["clf_mlp"]["verdict"] == "not reproduced"
    assert btc.finding_pairing(config, raw, quantities)["verdicts"]["cross_beats_same"]["verdict"] == "not reproduced"
    assert btc.finding_quantity(config, raw, quantities)["verdicts"]["clf_mlp"]["verdict"] == "not reproduced"
    raw = fake_raw(config, quantities, lambda c, m, s: rng.normal())  # no effect at all
    verdicts = btc.finding_noise(config, raw, quantities)["verdicts"]
    assert all(v["verdict"] == "inconclusive" for v in verdicts.values()) or all(v["high"] - v["low"] > 1.0 for v in verdicts.values())


def test_config_errors_name_the_problem(tmp_path, capsys):
    run = lambda name, *sets: main(["run", "bt_vs_classification", "--out", str(tmp_path / name), "--set", *sets])  # noqa: E731
    assert run("a", "text.enabled=false", "synthetic.train_prompts=100") != 0
    assert "4000 annotations need as many training prompts" in capsys.readouterr().err
    assert run("b", "methods=bt_mlp,svm") != 0
    assert "['svm'] unknown" in capsys.readouterr().err
    assert run("c", "preset=gpu") != 0
    assert "preset='gpu'" in capsys.readouterr().err


def test_paper_preset_changes_only_defaults():
    config = btc.apply_preset(btc.BTvsCLFConfig(preset="paper", text=btc.TextSetting(test_prompts=7)))
    assert config.synthetic.train_prompts == 40000 and config.synthetic.prompt_tokens == 6
    assert config.text.test_prompts == 7 and config.text.test_responses == 500  # an explicit value is kept
    assert 8 ** config.synthetic.prompt_tokens >= config.synthetic.train_prompts + config.synthetic.test_prompts


# --------------------------------------------------------------------------- synthetic, end to end


TINY_SYNTHETIC = ["text.enabled=false", "num_seeds=3", "qualities=10,0.5", "pairing_quality=0.5", "synthetic.train_prompts=400",
                  "synthetic.test_prompts=20", "synthetic.test_responses=60", "synthetic.quantities=100,400",
                  "best_of_n=1,2,5,10,30,50", "mlp.hidden=64,32", "mlp.epochs=60", "mlp.learning_rate=3e-3", "trees.num_trees=30"]


@pytest.mark.slow
def test_synthetic_study_learns_the_gold_and_reports_every_cell(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "bt_vs_classification", "--out", str(out), "--set", *TINY_SYNTHETIC]) == 0
    results = json.loads((out / "results.json").read_text())
    s = results["settings"]["synthetic"]
    assert s["best_of_n"] == [1, 2, 5, 10, 30, 50] and s["info"]["test_responses"] == 60
    assert len(s["cells"]) == 2 * 2 + 6 - 1  # the quality x quantity grid and the pairings (one shared)
    gold_gain = s["gold_selects"]["gain"]
    for cell in s["cells"].values():
        for m in results["methods"]:
            assert cell[m]["gain"]["mean"] <= gold_gain + 1e-9  # nothing beats picking by the gold itself
            assert cell[m]["bon_gold"][0] == pytest.approx(s["info"]["gold_test_mean"], abs=1e-6)  # N = 1: a random pick
    # Clean labels on 400 pairs: every method ranks held-out responses well above chance and its
    # best-of-50 beats a random pick (the positive control).
    easy = s["cells"]["same_random|q=10|n=400"]
    assert easy["label_error"]["mean"] < 0.1 < s["cells"]["same_random|q=0.5|n=400"]["label_error"]["mean"]
    for m in results["methods"]:
        assert easy[m]["accuracy"]["mean"] > 0.6, m
    assert s["positive_control"]["passes"]
    assert set(s["findings"]) == {"classification_beats_bt", "cross_prompt_beats_same_prompt", "classification_grows_with_quantity"}
    for name in ("noise", "pairing", "quantity"):
        assert (out / f"bt_vs_classification_{name}.png").stat().st_size > 10_000


# --------------------------------------------------------------------------- text, on a tiny Llama


@pytest.fixture(scope="module")
def tiny_text(backbone, tmp_path_factory):
    """The rm tests' tiny Llama with a word tokenizer, HH-format pairs over its words, and a
    reward model trained on them by ``jirl run rm`` (the gold)."""
    folder = tmp_path_factory.mktemp("tiny_text")
    hh = folder / "hh"
    hh.mkdir()
    rng = np.random.default_rng(0)
    with gzip.open(hh / "pairs.jsonl.gz", "wt") as f:
        for i in range(120):
            prompt = f"\n\nHuman: w{i % 20} w{(7 * i) % 20} w{i // 20}\n\nAssistant:"
            f.write(json.dumps({"chosen": f"{prompt} good w{rng.integers(20)}", "rejected": f"{prompt} bad w{rng.integers(20)}"}) + "\n")
    gold = folder / "gold"
    args = ["run", "rm", "--out", str(gold), "--set", f"model={backbone}", f"data={hh}", "max_len=24", "feature_batch_size=16",
            "eval_batch_size=16", "train.steps=40", "train.batch_size=16", "train.learning_rate=3e-2", "train.warmup_steps=2",
            "train.checkpoint_every=40", "train.eval_every=20", "train.log_every=10"]
    assert main(args) == 0
    return backbone, hh, gold


@pytest.mark.slow
def test_text_pool_scores_with_the_gold_and_embeds_the_decoded_text(tiny_text, tmp_path):
    from experiments.rm import load_reward_model
    from jirl.models.pretrained import load_pretrained
    from jirl.rewards.embeddings import embed_texts

    backbone, hh, gold = tiny_text
    config = btc.BTvsCLFConfig(responses_per_prompt=4)
    config.text = btc.TextSetting(manual_dir=str(hh), policy=str(backbone), gold=str(gold), train_prompts=12, test_prompts=3,
                                  test_responses=6, max_prompt_tokens=12, max_new_tokens=6, batch_size=8, quantities=(6, 12))
    pool = btc.text_pool(config, tmp_path / "cache")
    assert pool["train_gold"].shape == (12, 4) and pool["test_gold"].shape == (3, 6)
    assert pool["train_x"].shape == (48, 384) and pool["test_x"].shape == (18, 384)
    # The stored gold is the reward model's score of the stored tokens, and the embeddings are
    # MiniLM's of the decoded prompt and reply.
    chunk = np.load(next((tmp_path / "cache").glob("text-*/chunk-00000.npz")))
    loaded = load_reward_model(gold)
    np.testing.assert_allclose(chunk["gold"], np.asarray(loaded.score_fn(chunk["tokens"], chunk["prompt_len"], chunk["response_len"])), rtol=1e-5)
    np.testing.assert_allclose(pool["train_gold"].reshape(-1)[:8], chunk["gold"], rtol=1e-6)
    tokenizer = load_pretrained(str(backbone)).tokenizer
    reply = tokenizer.decode(chunk["tokens"][0, chunk["prompt_len"][0] : chunk["prompt_len"][0] + chunk["response_len"][0]].tolist())
    prompts = btc.hh_prompts(config.text, tokenizer, loaded.tokenization)
    text = f"Human: {prompts['train'][0][0]}\n\nAssistant: {reply}"
    np.testing.assert_allclose(pool["train_x"][0], embed_texts([text])[0], atol=1e-5)
    # Training and test prompts come from the reward model's own train / held-out split.
    assert {p for p, _ in prompts["train"]}.isdisjoint({p for p, _ in prompts["test"]})
    # A second call reads the cache (no generation: the chunk files are unchanged).
    stamp = [p.stat().st_mtime_ns for p in sorted((tmp_path / "cache").glob("text-*/chunk-*.npz"))]
    again = btc.text_pool(config, tmp_path / "cache")
    np.testing.assert_array_equal(again["test_gold"], pool["test_gold"])
    assert stamp == [p.stat().st_mtime_ns for p in sorted((tmp_path / "cache").glob("text-*/chunk-*.npz"))]


def test_text_setting_without_a_gold_reward_model_says_how_to_train_one(tmp_path, capsys):
    args = ["run", "bt_vs_classification", "--out", str(tmp_path / "run"), "--set", "synthetic.enabled=false",
            f"text.gold={tmp_path / 'nowhere'}"]
    assert main(args) != 0
    assert "jirl run rm --out" in capsys.readouterr().err


@pytest.mark.slow
def test_cross_prompt_similar_pairs_beat_same_prompt_similar_pairs_at_a_small_size(tmp_path):
    """Guards the synthetic record's reproduced pairing finding at a small size: pairs of a
    prompt's two middle responses are nearly ties (the annotator errs often), while the middle
    responses of two different prompts differ more, so cross-prompt 'similar' annotations are
    cleaner and the learned reward picks better best-of-N responses."""
    out = tmp_path / "run"
    sets = ["text.enabled=false", "num_seeds=5", "qualities=1", "pairing_quality=1", "pairings=same_similar,cross_similar",
            "base_pairing=same_similar", "methods=bt_mlp,clf_mlp", "synthetic.train_prompts=1000", "synthetic.test_prompts=20",
            "synthetic.test_responses=100", "synthetic.quantities=1000", "best_of_n=1,10,100", "mlp.hidden=64,32", "mlp.epochs=60",
            "mlp.learning_rate=3e-3"]
    assert main(["run", "bt_vs_classification", "--out", str(out), "--set", *sets]) == 0
    s = json.loads((out / "results.json").read_text())["settings"]["synthetic"]
    same, cross = s["cells"]["same_similar|q=1|n=1000"], s["cells"]["cross_similar|q=1|n=1000"]
    assert cross["label_error"]["mean"] < same["label_error"]["mean"] - 0.05
    similar = s["findings"]["cross_prompt_beats_same_prompt"]["per_candidates"]["similar"]
    assert similar["mean"] > 0, similar  # the direction (5 small seeds: the record's 5 full-size seeds decide it)
