"""Reference outputs of the PyTorch implementation (Hugging Face transformers) for jirl's
model-parity tests, stored under ``tests/models/fixtures/``.

Run it in an environment with torch, transformers and gguf (not jirl's own dependencies):

    python scripts/make_model_fixtures.py --smollm2 PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf

It writes
- ``tiny_llama/``, ``tiny_gpt2/`` and ``tiny_qwen2/``: small random models saved by transformers as safetensors
  (``config.json`` + ``model.safetensors``), and ``tiny_models.json``: their last-position
  logits for a few token prompts, plus the logits of ``tiny_llama_lora/`` (jirl's export of a
  LoRA-merged model, written by ``scripts/export_lora_fixture.py``) as transformers loads it;
- ``smollm2_reference.json``: SmolLM2-135M-Instruct (the GGUF, dequantised by transformers)
  on three chat prompts: the prompt ids, the 64 largest last-position logits with their ids,
  the log-sum-exp of all logits, and the greedy continuation (32 tokens).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import transformers

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "models" / "fixtures"
TOKEN_PROMPTS = [[1, 5, 9, 2], [3, 3, 3, 3, 3, 3, 7], [60, 0, 17]]
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
]
TOP = 64
NEW_TOKENS = 32


def last_logits(model, ids: list[int]) -> list[float]:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].double().tolist()


def tiny_models() -> None:
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, rope_theta=500.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    ))
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, layer_norm_epsilon=1e-5,
    ))
    qwen2 = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, rope_theta=1000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    ))
    out = {"prompts": TOKEN_PROMPTS}
    for name, model in (("tiny_llama", llama), ("tiny_gpt2", gpt2), ("tiny_qwen2", qwen2)):
        model = model.float().eval()
        with torch.no_grad():  # random init is tiny; widen it so logits are not all ~0
            for p in model.parameters():
                p.mul_(3.0)
        model.save_pretrained(FIXTURES / name)
        out[name] = [last_logits(model, ids) for ids in TOKEN_PROMPTS]
    # jirl's own export of a LoRA-merged model (scripts/export_lora_fixture.py), read back here.
    exported = transformers.AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny_llama_lora", dtype=torch.float32).eval()
    out["tiny_llama_lora"] = [last_logits(exported, ids) for ids in TOKEN_PROMPTS]
    (FIXTURES / "tiny_models.json").write_text(json.dumps(out))


def smollm2(gguf_path: Path) -> None:
    kwargs = dict(gguf_file=gguf_path.name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, torch_dtype=torch.float32, **kwargs).eval()
    records = []
    for question in CHAT_PROMPTS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        logits = torch.tensor(last_logits(model, ids))
        top = torch.topk(logits, TOP)
        with torch.no_grad():
            generated = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(ids):].tolist()
        records.append({
            "question": question, "chat_text": text, "prompt_ids": ids, "top_ids": top.indices.tolist(),
            "top_logits": top.values.tolist(), "logsumexp": float(torch.logsumexp(logits, 0)),
            "greedy_ids": generated, "greedy_text": tokenizer.decode(generated, skip_special_tokens=True),
        })
    (FIXTURES / "smollm2_reference.json").write_text(json.dumps({"transformers": transformers.__version__, "records": records}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", type=Path, help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    args = parser.parse_args()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    tiny_models()
    if args.smollm2:
        smollm2(args.smollm2)


if __name__ == "__main__":
    main()
