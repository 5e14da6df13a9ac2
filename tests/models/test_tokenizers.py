"""Tokenizers: tokenizer.json loading, GGUF byte-level BPE, chat templates, the vocabulary check,
and SmolLM2-135M-Instruct's tokenizer against transformers' ids (slow: fetches the 93 MB file)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter
from tokenizers import Tokenizer as Backend
from tokenizers import pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

import jirl.models.tokenizers as tokenizers_module
from jirl.config import JirlError
from jirl.models.gguf import read_gguf, smollm2_gguf_path
from jirl.models.tokenizers import (
    Tokenizer,
    byte_to_unicode,
    check_vocab_matches,
    load_tokenizer,
    tokenizer_from_gguf,
)

FIXTURE = Path(__file__).parent / "fixtures" / "smollm2_tokens.json"
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# --------------------------------------------------------------------------- tokenizer.json


def write_word_level(folder: Path, config: dict | None) -> Path:
    words = ["[PAD]", "[UNK]", "<s>", "</s>", "hello", "world", "!"]
    backend = Backend(WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    backend.add_special_tokens(["[PAD]", "<s>", "</s>"])
    # As all-MiniLM-L6-v2's file does; encode() must still give the plain ids.
    backend.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    backend.enable_truncation(max_length=2)
    backend.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_load_tokenizer_reads_special_tokens_and_template(tmp_path):
    config = {
        "bos_token": "<s>",
        "eos_token": {"content": "</s>", "special": True},
        "pad_token": "[PAD]",
        # Block tags on their own lines: trim_blocks / lstrip_blocks must swallow the layout.
        "chat_template": "{{ bos_token }}\n{% for m in messages %}\n{{ m['content'] }} {{ eos_token }}\n  {% endfor %}",
    }
    tokenizer = load_tokenizer(write_word_level(tmp_path, config))
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.vocab_size) == (2, 3, 0, 7)
    assert tokenizer.encode("hello world !") == [4, 5, 6]
    assert tokenizer.encode("<s> hello </s>") == [2, 4, 3]
    assert tokenizer.decode([2, 4, 5, 3]) == "hello world"
    assert tokenizer.decode([2, 4, 3], skip_special_tokens=False) == "<s> hello </s>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}, {"role": "user", "content": "world"}])
    assert text == "<s>\nhello </s>\nworld </s>\n"
    assert tokenizer.encode_chat([{"role": "user", "content": "hello"}]) == [2, 4, 3]


def test_load_tokenizer_from_file_path_with_named_templates(tmp_path):
    config = {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
    tokenizer = load_tokenizer(write_word_level(tmp_path, config) / "tokenizer.json")
    assert tokenizer.chat_template == "D"
    assert tokenizer.bos_id is None and tokenizer.eos_id is None


def test_load_tokenizer_without_config_has_no_template(tmp_path):
    tokenizer = load_tokenizer(write_word_level(tmp_path, None))
    assert tokenizer.chat_template is None
    with pytest.raises(JirlError, match="no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hello"}])


def test_load_tokenizer_missing_file(tmp_path):
    with pytest.raises(JirlError, match="not found"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{ nonsense")
    with pytest.raises(JirlError, match="not a readable tokenizer.json"):
        load_tokenizer(tmp_path)


# --------------------------------------------------------------------------- chat templates


def chat_tokenizer(template: str) -> Tokenizer:
    return Tokenizer(Backend(WordLevel({"[UNK]": 0}, unk_token="[UNK]")), chat_template=template, source="test")


def test_chat_template_raise_exception_becomes_jirl_error():
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('must start with a user turn') }}{% endif %}ok"
    tokenizer = chat_tokenizer(template)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(JirlError, match="must start with a user turn"):
        tokenizer.apply_chat_template([{"role": "assistant", "content": "x"}])


def test_chat_template_is_sandboxed_and_immutable():
    with pytest.raises(JirlError, match="SecurityError"):
        chat_tokenizer("{{ messages.append(1) }}").apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(JirlError, match="SecurityError"):
        chat_tokenizer("{{ ''.__class__.__mro__[1].__subclasses__() }}").apply_chat_template([])


def test_chat_template_helpers_and_variables():
    template = "{{ messages[0]['content'] | tojson }}|{{ add_generation_prompt }}|{{ extra }}"
    text = chat_tokenizer(template).apply_chat_template(
        [{"role": "user", "content": "café"}], add_generation_prompt=False, extra=3
    )
    assert text == '"café"|False|3'


def test_chat_messages_are_validated():
    tokenizer = chat_tokenizer(CHATML)
    with pytest.raises(JirlError, match="list"):
        tokenizer.apply_chat_template("hello")
    with pytest.raises(JirlError, match="message 1"):
        tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"content": "b"}])
    with pytest.raises(JirlError, match="does not parse"):
        chat_tokenizer("{% for %}").apply_chat_template([])


@pytest.mark.parametrize(
    "template, what",
    [
        ("{{ 'a' * 200000000 }}", "a repeated string or list would be 200,000,000 long"),
        ("{{ 200000000 * 'ab' }}", "a repeated string or list would be 400,000,000 long"),
        ("{{ (['x'] * 300000000)|length }}", "a repeated string or list"),
        ("{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
         "a concatenated string or list"),
        ("{{ 'a'.ljust(200000000) }}", "str.ljust"),
        ("{{ 'a'|center(200000000) }}", "'center' filter"),
        ("{{ 'a'|indent(200000000, true) }}", "'indent' filter"),
        ("{{ ('ab' * 400000)|replace('a', 'xxxx') }}", "'replace' filter"),
        ("{{ '%200000000s' % 'a' }}", "a field width in a format string"),
        ("{{ '{:>200000000}'.format('a') }}", "a field width in a format string"),
        ("{{ messages|tojson(indent=200000000) }}", "the indent of the 'tojson' filter"),
        # No single step is too long; the output as a whole is, and is refused as it grows.
        ("{% for i in range(100000) %}{% for j in range(100000) %}0123456789{% endfor %}{% endfor %}",
         "the rendered chat prompt would be 1,000,010 long"),
    ],
)
def test_chat_template_output_is_capped(template, what):
    with pytest.raises(JirlError, match=f"refused: .*{re.escape(what)}.*MAX_CHAT_TEMPLATE_CHARS = 1,000,000"):
        chat_tokenizer(template).apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_cap_counts_the_messages_and_allows_up_to_the_cap(monkeypatch):
    monkeypatch.setattr(tokenizers_module, "MAX_CHAT_TEMPLATE_CHARS", 20)
    tokenizer = chat_tokenizer("{% for m in messages %}{{ m['content'] }}{% endfor %}!")
    exact = "x" * 19
    assert tokenizer.apply_chat_template([{"role": "user", "content": exact}]) == exact + "!"
    with pytest.raises(JirlError, match="the rendered chat prompt would be 21 long, over the cap of 20"):
        tokenizer.apply_chat_template([{"role": "user", "content": exact + "y"}])
    # Ordinary uses of the checked operators, methods and filters are untouched.
    monkeypatch.setattr(tokenizers_module, "MAX_CHAT_TEMPLATE_CHARS", 1_000_000)
    template = (
        "{{ 'ab' * 2 + 'c' }}|{{ 2 ** 10 }}|{{ '%3s' % 'x' }}|{{ 'x'.ljust(3) }}|{{ 'a{}'.format(1) }}|"
        "{{ 'ab'|replace('a', 'c') }}|{{ 'x'|center(5) }}|{{ 'a\nb'|indent(2) }}|{{ messages|tojson(indent=1) }}"
    )
    text = chat_tokenizer(template).apply_chat_template([{"role": "user", "content": "é"}])
    assert text == 'ababc|1024|  x|x  |a1|cb|  x  |a\n  b|[\n {\n  "role": "user",\n  "content": "é"\n }\n]'


# --------------------------------------------------------------------------- GGUF byte-level BPE


def test_byte_to_unicode_is_gpt2_byte_alphabet():
    spelling = byte_to_unicode()
    assert len(spelling) == 256 and len(set(spelling.values())) == 256
    assert set(spelling.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert (spelling[ord(" ")], spelling[ord("\n")], spelling[ord("a")]) == ("Ġ", "Ċ", "a")


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGED = ["he", "ll", "hell", "hello", "Ġw", "12"]


def write_bpe_gguf(path: Path, pre: str = "smollm", add_bos: bool = False, model: str = "gpt2") -> Path:
    """A byte-level BPE vocabulary: 3 control tokens, the 256 byte symbols, and a few merges."""
    spelling = byte_to_unicode()
    tokens = SPECIALS + [spelling[b] for b in range(256)] + MERGED
    writer = GGUFWriter(str(path), "llama")
    writer.add_string("tokenizer.ggml.model", model)
    writer.add_string("tokenizer.ggml.pre", pre)
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.token_type", [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    writer.add_array("tokenizer.ggml.merges", ["h e", "l l", "he ll", "hell o", "Ġ w", "1 2"])
    writer.add_uint32("tokenizer.ggml.bos_token_id", 1)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 2)
    writer.add_uint32("tokenizer.ggml.padding_token_id", 0)
    writer.add_bool("tokenizer.ggml.add_bos_token", add_bos)
    writer.add_string("tokenizer.chat_template", CHATML)
    writer.add_tensor("dummy", np.zeros(4, dtype=np.float32), raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def token_id(token: str) -> int:
    spelling = byte_to_unicode()
    return (SPECIALS + [spelling[b] for b in range(256)] + MERGED).index(token)


def test_gguf_bpe_merges_specials_and_round_trip(tmp_path):
    tokenizer = tokenizer_from_gguf(write_bpe_gguf(tmp_path / "t.gguf"))
    assert tokenizer.vocab_size == 3 + 256 + len(MERGED)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 0)
    assert tokenizer.encode("hello") == [token_id("hello")]
    assert tokenizer.encode("<|im_start|>hello world<|im_end|>") == [
        1, token_id("hello"), token_id("Ġw"), *(token_id(c) for c in "orld"), 2,
    ]
    assert tokenizer.encode("hello", add_special_tokens=True) == [token_id("hello")]  # add_bos_token is false
    for text in ["hello world", "naïve — ünïcode 🙂\n\ttabs", "<|im_start|>x<|im_end|>"]:
        assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == text
    assert tokenizer.decode(tokenizer.encode("<|im_start|>hello<|im_end|>")) == "hello"


def test_gguf_bpe_adds_bos_when_the_file_says_so(tmp_path):
    tokenizer = tokenizer_from_gguf(read_gguf(write_bpe_gguf(tmp_path / "t.gguf", add_bos=True)))
    assert tokenizer.encode("hello", add_special_tokens=True) == [1, token_id("hello")]
    assert tokenizer.encode("hello") == [token_id("hello")]


def test_gguf_pre_tokenizer_decides_digit_merges(tmp_path):
    # SmolLM (like StarCoder) isolates every digit before BPE, so "1 2" can never merge; GPT-2 does not.
    smollm = tokenizer_from_gguf(write_bpe_gguf(tmp_path / "smollm.gguf", pre="smollm"))
    gpt2 = tokenizer_from_gguf(write_bpe_gguf(tmp_path / "gpt2.gguf", pre="gpt2"))
    assert smollm.encode("12") == [token_id("1"), token_id("2")]
    assert gpt2.encode("12") == [token_id("12")]


def test_gguf_tokenizer_errors(tmp_path):
    with pytest.raises(JirlError, match="'bert'"):
        tokenizer_from_gguf(write_bpe_gguf(tmp_path / "a.gguf", model="bert"))
    with pytest.raises(JirlError, match="Unsupported GGUF pre-tokenizer 'mystery'.*smollm"):
        tokenizer_from_gguf(write_bpe_gguf(tmp_path / "b.gguf", pre="mystery"))


# --------------------------------------------------------------------------- vocabulary check


def test_check_vocab_matches(tmp_path):
    tokenizer = load_tokenizer(write_word_level(tmp_path, None))  # 7 tokens
    check_vocab_matches(tokenizer, 7)
    with pytest.raises(JirlError, match=r"7 tokens but the model's model\.vocab_size is 8.*allow_padding"):
        check_vocab_matches(tokenizer, 8, field="model.vocab_size")
    check_vocab_matches(tokenizer, 8, allow_padding=True)
    with pytest.raises(JirlError, match="7 tokens but the model's vocab_size is 6"):
        check_vocab_matches(tokenizer, 6, allow_padding=True)


# --------------------------------------------------------------------------- SmolLM2-135M-Instruct


@pytest.fixture(scope="module")
def smollm2_file():
    return read_gguf(smollm2_gguf_path())


@pytest.fixture(scope="module")
def smollm2(smollm2_file):
    return tokenizer_from_gguf(smollm2_file)


@pytest.fixture(scope="module")
def reference():
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_smollm2_special_tokens(smollm2, smollm2_file):
    assert smollm2.vocab_size == 49152
    check_vocab_matches(smollm2, smollm2_file.metadata["llama.vocab_size"])
    assert (smollm2.bos_token, smollm2.eos_token, smollm2.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.pad_id) == (1, 2, 2)
    assert smollm2.encode("<|im_start|>") == [1]
    assert smollm2.encode("<|endoftext|>") == [0]
    assert smollm2.encode("<|im_start|>user") == [1, smollm2.encode("user")[0]]


@pytest.mark.slow
def test_smollm2_matches_transformers_reference_ids(smollm2, reference):
    assert reference["texts"], "fixture has no texts"
    for entry in reference["texts"]:
        assert smollm2.encode(entry["text"]) == entry["ids"], entry["text"]


@pytest.mark.slow
def test_smollm2_round_trip(smollm2):
    texts = ["Hello world", "naïve café — 你好 🙂", "x = [1, 22, 333]\n\tprint(x)  ", "<|im_start|>hi<|im_end|>"]
    for text in texts:
        ids = smollm2.encode(text)
        assert smollm2.decode(ids, skip_special_tokens=False) == text
    assert smollm2.decode(smollm2.encode("<|im_start|>hi<|im_end|>")) == "hi"


@pytest.mark.slow
def test_smollm2_isolates_digits_like_llama_cpp(smollm2):
    # llama.cpp's "smollm" split cuts digits out first, leaving "  " whole (one token, "ĠĠ");
    # GPT-2's split alone (transformers' GGUF converter) would give "Ġ" + "Ġ2".
    ids = smollm2.encode("a  2")
    assert [smollm2.id_to_token(i) for i in ids] == ["a", "ĠĠ", "2"]
    assert [smollm2.id_to_token(i) for i in smollm2.encode(" 2024")] == ["Ġ", "2", "0", "2", "4"]


SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.mark.slow
def test_smollm2_chat_template_adds_default_system_prompt(smollm2, reference):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected = (
        f"<|im_start|>system\n{SMOLLM2_DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert smollm2.apply_chat_template(messages) == expected
    assert expected == reference["chat"]["text"]  # as transformers renders it
    assert smollm2.encode_chat(messages) == reference["chat"]["ids"]
    assert smollm2.apply_chat_template(messages, add_generation_prompt=False) == expected.removesuffix(
        "<|im_start|>assistant\n"
    )


@pytest.mark.slow
def test_smollm2_chat_template_keeps_a_given_system_prompt(smollm2):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert smollm2.apply_chat_template(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
