"""Check that what ``jirl.models.export.export_hf`` writes loads in Hugging Face transformers
(and PEFT) and computes jirl's logits; store transformers' numbers in
``tests/models/fixtures/hf_export_reference.json`` for ``tests/models/test_export.py``.

Needs jirl plus torch, transformers and peft (peft is not in jirl's ``bench`` extra; install it
beside), e.g. in a separate environment::

    pip install torch transformers peft safetensors tokenizers jinja2
    PYTHONPATH=. python scripts/check_hf_export.py

It builds a tiny deterministic Llama with LoRA adapters on five projections (nonzero A and B,
``lora_model``) and a small character tokenizer with a ChatML template (``tiny_tokenizer``),
exports it merged as float32 and as bfloat16 (both sharded by a small ``max_shard_size``), as
PEFT adapters over an exported base, and a LoRA-merged tiny Qwen2 (query/key/value biases, tied
embeddings), then loads each with ``AutoModelForCausalLM`` (+ ``PeftModel``) and
``AutoTokenizer`` and compares last-position logits with jirl's: at most 1e-4 apart for the
float32 computations (bfloat16 weights included, read back as float32); the bfloat16 weights'
own rounding and transformers' bfloat16 arithmetic are measured and bounded separately.

The builders here are imported by the test (by path), so both export the same model.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "models" / "fixtures"
REFERENCE = FIXTURES / "hf_export_reference.json"
TOKEN_PROMPTS = [[1, 5, 9, 2], [3, 3, 3, 3, 3, 3, 7], [60, 0, 17]]
TEXT = "hello world, is it sunny today?"
CHAT = [{"role": "system", "content": "be brief."}, {"role": "user", "content": "what is two plus two?"}]
SHARD_SIZE = "40KB"  # the tiny model's float32 weights are about 111 KB: three shards (two in bfloat16)
TOLERANCE = 1e-4  # float32 computation, transformers vs jirl
BF16_WEIGHT_TOLERANCE = 0.1  # bfloat16-rounded weights vs the float32 model (8-bit mantissa)
BF16_COMPUTE_TOLERANCE = 0.15  # transformers computing in bfloat16 vs jirl in float32 on the same weights
LORA_TARGETS = ("q_proj", "v_proj", "o_proj", "gate_proj", "down_proj")
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def set_adapter_values(model, seed: int = 0):
    """Give every LoRA adapter of ``model`` A and B drawn from NumPy's ``default_rng(seed)``
    (B nonzero, so the adapters change the model; NumPy draws the same on every platform)."""
    from jirl.models.lora import lora_layers

    rng = np.random.default_rng(seed)
    for layer in lora_layers(model):
        layer.lora_a[...] = jnp.asarray(0.3 * rng.standard_normal(layer.lora_a[...].shape), jnp.float32)
        layer.lora_b[...] = jnp.asarray(0.3 * rng.standard_normal(layer.lora_b[...].shape), jnp.float32)
    return model


def with_deterministic_adapters(model, rank: int, alpha: float, targets=LORA_TARGETS, seed: int = 0):
    """``model`` with rank-``rank`` LoRA adapters on ``targets``, values from ``set_adapter_values``."""
    from jirl.models.lora import add_lora

    add_lora(model, rank=rank, alpha=alpha, targets=targets, seed=seed)
    return set_adapter_values(model, seed)


def lora_model():
    """``(config, graphdef, params)``: the ``tiny_llama`` fixture with rank-4, alpha-8 LoRA
    adapters on ``LORA_TARGETS`` of both layers."""
    from jirl.models import llama

    config, graphdef, params = llama.load_hf(FIXTURES / "tiny_llama")
    model = with_deterministic_adapters(nnx.merge(graphdef, params), rank=4, alpha=8.0)
    return (config, *nnx.split(model))


def qwen2_lora_model():
    """``(config, graphdef, params)``: the ``tiny_qwen2`` fixture (query/key/value biases, tied
    embeddings) with rank-2, alpha-4 adapters on the attention projections."""
    from jirl.models import llama

    config, graphdef, params = llama.load_hf(FIXTURES / "tiny_qwen2")
    model = with_deterministic_adapters(nnx.merge(graphdef, params), rank=2, alpha=4.0, targets=("q_proj", "k_proj", "v_proj", "o_proj"), seed=1)
    return (config, *nnx.split(model))


def mixed_rank_lora_model():
    """``(config, graphdef, params)``: ``tiny_llama`` with rank-4, alpha-8 adapters on q_proj
    and v_proj and rank-2, alpha-3 adapters on down_proj (PEFT's ``rank_pattern`` /
    ``alpha_pattern``)."""
    from jirl.models import llama
    from jirl.models.lora import add_lora

    config, graphdef, params = llama.load_hf(FIXTURES / "tiny_llama")
    model = add_lora(nnx.merge(graphdef, params), rank=4, alpha=8.0, targets=("q_proj", "v_proj"))
    add_lora(model, rank=2, alpha=3.0, targets=("down_proj",), seed=2)
    return (config, *nnx.split(set_adapter_values(model, seed=2)))


def tiny_tokenizer():
    """A character-level BPE tokenizer (no merges) of 39 ids for the 64-token tiny models:
    ``<pad> <s> </s> <|im_start|> <|im_end|> <unk>``, newline, space, a-z and punctuation, with a
    ChatML chat template; ``<s>`` and ``</s>`` are ids 1 and 2 like the models' configs."""
    from tokenizers import AddedToken, decoders
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import BPE

    from jirl.models.tokenizers import Tokenizer

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<unk>"]
    characters = ["\n", " "] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(".,?!'")
    vocab = {token: index for index, token in enumerate(specials + characters)}
    backend = Backend(BPE(vocab, [], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return Tokenizer(backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=CHATML, source="tiny char tokenizer")


def export_variants(root: Path) -> dict[str, Path]:
    """Export every variant under ``root``: ``{name: folder transformers loads}`` (for ``peft``
    the adapter folder; its base is ``peft/base``)."""
    from jirl.models.export import export_hf

    config, graphdef, params = lora_model()
    tokenizer = tiny_tokenizer()
    folders = {
        "merged_float32": export_hf(root / "merged_float32", config, graphdef, params, tokenizer=tokenizer, dtype="float32", max_shard_size=SHARD_SIZE),
        "merged_bfloat16": export_hf(root / "merged_bfloat16", config, graphdef, params, tokenizer=tokenizer, dtype="bfloat16", max_shard_size=SHARD_SIZE),
        "peft": export_hf(root / "peft", config, graphdef, params, tokenizer=tokenizer, lora="peft"),
    }
    folders["peft_mixed_ranks"] = export_hf(root / "peft_mixed_ranks", *mixed_rank_lora_model(), lora="peft")
    q_config, q_graphdef, q_params = qwen2_lora_model()
    folders["qwen2_merged_float32"] = export_hf(root / "qwen2_merged_float32", q_config, q_graphdef, q_params)
    return folders


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, tokens):
    return nnx.merge(graphdef, params)(tokens).logits


def jirl_logits(graphdef, params, prompts=TOKEN_PROMPTS) -> list[np.ndarray]:
    """jirl's float64 last-position logits of each token prompt (one jitted call: the prompts
    right-padded into one batch, each read at its last token, which the causal mask keeps
    blind to the padding)."""
    width = max(len(ids) for ids in prompts)
    tokens = jnp.asarray([list(ids) + [0] * (width - len(ids)) for ids in prompts])
    logits = np.asarray(_forward(graphdef, params, tokens), np.float64)
    return [logits[i, len(ids) - 1] for i, ids in enumerate(prompts)]


def max_abs_diff(a: list, b: list) -> float:
    """The largest absolute difference between two lists of logit vectors."""
    return float(max(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))) for x, y in zip(a, b)))


# ---------------------------------------------------------------------------------------------
# The transformers side (torch, transformers, peft)


def transformers_logits(model, prompts=TOKEN_PROMPTS) -> list[list[float]]:
    """transformers' last-position logits of each token prompt, as float64 lists."""
    import torch

    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0, -1].double().tolist() for ids in prompts]


def load_causal_lm(folder: Path, dtype: str = "float32"):
    """``AutoModelForCausalLM`` of ``folder`` in ``dtype``, in eval mode; a checkpoint tensor
    transformers does not use, or a weight it has to initialise itself, fails the check."""
    import torch
    import transformers

    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), output_loading_info=True)
    unused = {key: sorted(value) for key, value in info.items() if key in ("missing_keys", "unexpected_keys", "mismatched_keys") and value}
    if unused:
        raise SystemExit(f"transformers loads {folder} with {unused}")
    return model.eval()


def tokenizer_reference(folder: Path) -> dict:
    """What ``AutoTokenizer`` of ``folder`` makes of ``TEXT`` and ``CHAT``, and its special tokens."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    chat_text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    return {
        "class": type(tokenizer).__name__, "text": TEXT, "ids": tokenizer(TEXT, add_special_tokens=False)["input_ids"],
        "chat": CHAT, "chat_text": chat_text, "chat_ids": tokenizer(chat_text, add_special_tokens=False)["input_ids"],
        "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
        "decoded": tokenizer.decode(tokenizer(TEXT, add_special_tokens=False)["input_ids"]),
    }


def check(out: dict, name: str, got: list, expected: list, tolerance: float) -> None:
    """Record the largest difference of variant ``name`` in ``out`` and fail above ``tolerance``."""
    diff = max_abs_diff(got, expected)
    out["max_abs_diff"][name] = diff
    print(f"{name:38s} max |logit diff| = {diff:.3e}  (tolerance {tolerance:g})")
    if not diff <= tolerance:
        raise SystemExit(f"{name}: transformers and jirl differ by {diff:.3e} > {tolerance:g}")


def main() -> None:
    import peft
    import torch
    import transformers

    from jirl.models.lora import without_lora
    from jirl.models.pretrained import load_pretrained

    torch.manual_seed(0)
    out = {"versions": {"transformers": transformers.__version__, "torch": torch.__version__, "peft": peft.__version__},
           "prompts": TOKEN_PROMPTS, "tolerance": TOLERANCE, "bf16_weight_tolerance": BF16_WEIGHT_TOLERANCE,
           "bf16_compute_tolerance": BF16_COMPUTE_TOLERANCE, "logits": {}, "max_abs_diff": {}}
    config, graphdef, params = lora_model()
    lora_logits = jirl_logits(graphdef, params)
    with tempfile.TemporaryDirectory() as tmp:
        folders = export_variants(Path(tmp))
        for name in ("merged_float32", "merged_bfloat16", "qwen2_merged_float32"):
            reference = transformers_logits(load_causal_lm(folders[name]))
            out["logits"][name] = reference
            loaded = load_pretrained(str(folders[name]))
            check(out, f"{name}: jirl reload vs transformers", jirl_logits(loaded.graphdef, loaded.params), reference, TOLERANCE)
        check(out, "merged_float32: LoRA model vs transformers", lora_logits, out["logits"]["merged_float32"], TOLERANCE)
        q_config, q_graphdef, q_params = qwen2_lora_model()
        check(out, "qwen2: LoRA model vs transformers", jirl_logits(q_graphdef, q_params), out["logits"]["qwen2_merged_float32"], TOLERANCE)
        check(out, "merged_bfloat16: weight rounding", out["logits"]["merged_bfloat16"], lora_logits, BF16_WEIGHT_TOLERANCE)
        native = transformers_logits(load_causal_lm(folders["merged_bfloat16"], "bfloat16"))
        out["logits"]["merged_bfloat16_native"] = native
        check(out, "merged_bfloat16: transformers bf16 compute", native, out["logits"]["merged_bfloat16"], BF16_COMPUTE_TOLERANCE)
        adapted = peft.PeftModel.from_pretrained(load_causal_lm(folders["peft"] / "base"), folders["peft"]).eval()
        out["logits"]["peft"] = transformers_logits(adapted)
        check(out, "peft: PeftModel vs jirl LoRA model", lora_logits, out["logits"]["peft"], TOLERANCE)
        auto = transformers_logits(load_causal_lm(folders["peft"]))  # transformers' own PEFT integration
        check(out, "peft: AutoModelForCausalLM(adapter dir)", auto, out["logits"]["peft"], TOLERANCE)
        mixed = peft.PeftModel.from_pretrained(load_causal_lm(folders["peft_mixed_ranks"] / "base"), folders["peft_mixed_ranks"]).eval()
        out["logits"]["peft_mixed_ranks"] = transformers_logits(mixed)
        check(out, "peft_mixed_ranks: PeftModel vs jirl", jirl_logits(*mixed_rank_lora_model()[1:]), out["logits"]["peft_mixed_ranks"], TOLERANCE)
        merged_by_peft = transformers_logits(adapted.merge_and_unload())
        check(out, "peft: merge_and_unload vs merged export", merged_by_peft, out["logits"]["merged_float32"], TOLERANCE)
        base = load_pretrained(str(folders["peft"] / "base"))
        plain_base = without_lora(nnx.merge(graphdef, params))  # sanity: the base differs from the merged model
        assert max_abs_diff(jirl_logits(base.graphdef, base.params), jirl_logits(*nnx.split(plain_base))) > 1e-2
        out["tokenizer"] = tokenizer_reference(folders["merged_float32"])
    tokenizer = tiny_tokenizer()
    if out["tokenizer"]["ids"] != tokenizer.encode(TEXT) or out["tokenizer"]["chat_text"] != tokenizer.apply_chat_template(CHAT):
        raise SystemExit(f"AutoTokenizer differs from jirl's tokenizer: {out['tokenizer']}")
    print(f"tokenizer: AutoTokenizer ({out['tokenizer']['class']}) encodes and renders the chat template as jirl does")
    REFERENCE.write_text(json.dumps(out) + "\n")
    print(f"wrote {REFERENCE.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
