"""What ``prepare_text_dataset`` says about malformed input: a table of cases, each with the
file it is given and the message it must give (``{f}`` stands for the file's path), so that the
table reads as the specification of jirl's data errors.

Every message names the problem, where it is (``file:line`` for a row) and the fix.
"""

from __future__ import annotations

import gzip
import json
import re

import pytest

from jirl.data.chat_tokenize import ChatTokenization
from jirl.data.errors import DataError
from jirl.data.text_datasets import check_tokenizer_fits, prepare_text_dataset
from tests.data.test_chat_tokenize import byte_chat_tokenizer


def jsonl(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def pair(prompt="Hi", chosen="Hello", rejected="Go away", **extra) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def truncated_gzip(lines: int = 400) -> bytes:
    """A gzipped JSONL file cut in half, as an interrupted download leaves it."""
    whole = gzip.compress(jsonl(*(pair(prompt=f"question {i}") for i in range(lines))).encode(), mtime=0)
    return whole[: len(whole) // 2]


GOOD = jsonl(pair(), pair(prompt="Bye", chosen="See you", rejected="Whatever"))

# (case id, kind, file name, file content (None: no file), expected message, keyword arguments).
CASES = [
    ("invalid JSON line", "preference", "d.jsonl", jsonl(pair(), '{"prompt": "a", "chosen": '),
     "{f}:2: invalid JSON (Expecting value", {}),
    ("row is not an object", "preference", "d.jsonl", jsonl(pair(), "[1, 2]"),
     "{f}:2: expected a JSON object {...}, got a JSON list", {}),
    ("JSON array element is not an object", "preference", "d.json", json.dumps([pair(), "text"], indent=1),
     "{f}:7: a row must be an object {field: value, ...}, got a str", {}),
    ("missing field", "preference", "d.jsonl", jsonl(pair(), {"prompt": "a", "chosen": "b"}),
     "{f}:2: no preference layout matches the row's fields ['chosen', 'prompt']", {}),
    ("wrong field type", "preference", "d.jsonl", jsonl({"prompt": 3, "chosen": "b", "rejected": "c"}),
     "{f}:1: field 'prompt' must be a string or a list of messages, got int", {}),
    ("mixed standard and conversational fields", "preference", "d.jsonl",
     jsonl({"prompt": "a", "chosen": [{"role": "assistant", "content": "b"}], "rejected": "c"}),
     "{f}:1: fields ['prompt', 'rejected'] are strings but ['chosen'] are lists of messages", {}),
    ("message without role", "sft", "d.jsonl", jsonl({"messages": [{"content": "hi"}]}),
     "{f}:1: field 'messages', message 1 has no 'role' (keys ['content'])", {}),
    ("message without content", "sft", "d.jsonl", jsonl({"messages": [{"role": "user"}]}),
     "{f}:1: field 'messages', message 1 has no 'content'", {}),
    ("unknown role", "sft", "d.jsonl",
     jsonl({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]}),
     "{f}:1: field 'messages', message 2 has role 'tool'; jirl reads the roles 'system', 'user', 'assistant'", {}),
    ("ShareGPT unknown from", "sft", "d.json",
     json.dumps([{"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{}"}]}]),
     "{f}:1: field 'conversations', turn 2 is from 'function_call'", {}),
    ("SFT row without an assistant turn", "sft", "d.jsonl",
     jsonl({"messages": [{"role": "user", "content": "hi"}]}),
     "{f}:1: the conversation has no assistant turn", {}),
    ("prompt ends with the assistant", "preference", "d.jsonl",
     jsonl({"prompt": [{"role": "assistant", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}),
     "{f}:1: field 'prompt': the prompt must end with a user message", {}),
    ("every row has chosen equal to rejected", "preference", "d.jsonl",
     jsonl(pair(chosen="same", rejected="same"), pair(prompt="b", chosen="x", rejected="x"),
           pair(prompt="c", chosen="y", rejected="y")),
     "{f}: no usable preference rows: read 3 rows, kept 0, dropped 3 (chosen equals rejected: 3 rows, first at {f}:1)",
     {}),
    ("prompts differ between chosen and rejected", "preference", "d.jsonl",
     jsonl({"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "b"}]}),
     "dropped 1 (prompts differ: 1 row, first at {f}:1)", {}),
    ("empty response", "preference", "d.jsonl", jsonl(pair(chosen="   ")),
     "dropped 1 (empty response: 1 row, first at {f}:1)", {}),
    ("empty prompt", "preference", "d.jsonl", jsonl(pair(prompt="")),
     "dropped 1 (empty prompt: 1 row, first at {f}:1)", {}),
    ("several drop reasons, each with its first place", "preference", "d.jsonl",
     jsonl(pair(prompt=" "), pair(chosen="s", rejected="s"), pair(prompt="")),
     "dropped 3 (empty prompt: 2 rows, first at {f}:1; chosen equals rejected: 1 row, first at {f}:2)", {}),
    ("KTO label is not a boolean", "unpaired", "d.jsonl", jsonl({"prompt": "a", "completion": "b", "label": "yes"}),
     "{f}:1: field 'label' must be true or false (a JSON boolean), got str 'yes'", {}),
    ("margin is not a number", "preference", "d.jsonl", jsonl(pair(margin="big")),
     "{f}:1: field 'margin' must be a finite number, got str 'big'", {}),
    ("plain text field for SFT", "sft", "d.jsonl", jsonl({"text": "just text"}),
     "{f}:1: a 'text' field (plain language-modeling text) is not an SFT layout", {}),
    ("file not found", "preference", "missing.jsonl", None, "data file not found: {f}", {}),
    ("unsupported extension", "preference", "d.csv", "prompt,chosen,rejected\na,b,c\n",
     "{f}: unknown file type; jirl reads .jsonl, .jsonl.gz, .json, .json.gz, .parquet", {}),
    ("truncated gzip", "preference", "d.jsonl.gz", truncated_gzip(),
     re.compile(r"{f}:\d+: the gzip file ends part-way .* after \d+ whole lines"), {}),
    ("not gzip at all", "preference", "d.jsonl.gz", GOOD, "{f}: not a valid gzip file", {}),
    ("bytes that are not UTF-8", "preference", "d.jsonl", GOOD.encode() + b'{"prompt": "caf\xe9"}\n',
     "{f}:3: not UTF-8 text: byte 0xe9 at column 16", {}),
    ("empty file", "preference", "d.jsonl", "", "{f}: no rows (the source is empty)", {}),
    ("JSON file holding an object, not an array", "preference", "d.json", json.dumps({"data": [pair()]}),
     "{f}: the top-level JSON value is an object with keys ['data'], not an array", {}),
    ("columns names a field no row has", "preference", "d.jsonl", GOOD,
     "{f}: columns maps 'question' to 'prompt', but no row has a field 'question'",
     {"columns": {"prompt": "question"}}),
    ("multi-turn row written as plain text", "sft", "d.jsonl",
     jsonl({"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"}]}),
     "{f}:1: chat_template='none' writes plain text", {"tokenization": ChatTokenization(64, chat_template="none")}),
    ("tokenizer vocabulary larger than the model's", "preference", "d.jsonl", GOOD,
     "has 259 tokens but the model's vocab_size is 100", {"vocab_size": 100}),
    ("max_len above the model context", "preference", "d.jsonl", GOOD,
     "max_len 64 is larger than the model's context of 32 tokens; set max_len to at most 32", {"context": 32}),
    ("eval split empty", "preference", "d.jsonl", GOOD,
     "the eval split is empty: none of the 2 distinct prompts fell into the eval fraction 0.01 (rows sharing a "
     "prompt share a split); raise eval_fraction, pass eval_data, or set eval_fraction=0", {"eval_fraction": 0.01}),
    ("train split empty", "preference", "d.jsonl", jsonl(pair(), pair(chosen="Hey")),
     "the train split is empty: all 1 distinct prompts fell into the eval fraction 0.999", {"eval_fraction": 0.999}),
    ("eval_fraction out of range", "preference", "d.jsonl", GOOD,
     "eval_fraction must be a number in [0, 1) (0: no eval split), got 1.5", {"eval_fraction": 1.5}),
    ("unknown kind", "pairs", "d.jsonl", GOOD,
     "kind must be one of 'preference', 'sft', 'unpaired', 'prompt', got 'pairs'", {}),
    ("tokenizer without EOS", "preference", "d.jsonl", GOOD, "has no EOS token", {"tokenizer": "no eos"}),
]


def no_eos_tokenizer():
    tokenizer = byte_chat_tokenizer()
    tokenizer.eos_token = None
    return tokenizer


@pytest.mark.parametrize(("kind", "name", "content", "expected", "kwargs"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_malformed_input_gives_its_message(kind, name, content, expected, kwargs, tmp_path):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    options = {"tokenizer": byte_chat_tokenizer(), "tokenization": ChatTokenization(max_len=64),
               "data_dir": tmp_path / "tfds", "eval_fraction": 0, **kwargs}
    if options["tokenizer"] == "no eos":
        options["tokenizer"] = no_eos_tokenizer()
    with pytest.raises(DataError) as raised:
        prepare_text_dataset(kind, path, **options)
    message = str(raised.value)
    if isinstance(expected, re.Pattern):
        assert re.search(expected.pattern.replace("{f}", re.escape(str(path))), message), message
    else:
        assert expected.replace("{f}", str(path)) in message
    # Nothing is written when the input is refused.
    assert not (tmp_path / "tfds").exists() or not any((tmp_path / "tfds").rglob("*.array_record*"))


def test_the_table_covers_at_least_fifteen_cases():
    assert len(CASES) >= 15 and len({case[0] for case in CASES}) == len(CASES)


def test_a_refused_build_leaves_earlier_builds_as_they_were(tmp_path):
    """A row the tokenizer refuses stops the build before anything is written: the earlier
    build, its files and their times are untouched, and no half-built folder is left."""
    tokenizer, data_dir = byte_chat_tokenizer(), tmp_path / "tfds"
    good = tmp_path / "good.jsonl"
    good.write_text(jsonl({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}))
    plain = ChatTokenization(max_len=64, chat_template="none")
    prepare_text_dataset("sft", good, tokenizer=tokenizer, tokenization=plain, data_dir=data_dir, eval_fraction=0)
    before = {path: path.stat().st_mtime_ns for path in data_dir.rglob("*")}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + jsonl({"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}))
    with pytest.raises(DataError, match=re.escape(f"{bad}:2: chat_template='none' writes plain text")):
        prepare_text_dataset("sft", bad, tokenizer=tokenizer, tokenization=plain, data_dir=data_dir, eval_fraction=0)
    assert {path: path.stat().st_mtime_ns for path in data_dir.rglob("*")} == before


def test_a_build_killed_part_way_is_cleaned_up(tmp_path):
    """TFDS writes a build into ``incomplete.*`` and renames it when done; the leftover of a
    build killed part-way is removed by the next build of that config."""
    import shutil

    tokenizer, data_dir = byte_chat_tokenizer(), tmp_path / "tfds"
    source = tmp_path / "d.jsonl"
    source.write_text(GOOD)
    settings = ChatTokenization(max_len=64)
    first = prepare_text_dataset("preference", source, tokenizer=tokenizer, tokenization=settings,
                                 data_dir=data_dir, eval_fraction=0)
    version_dir = data_dir / "jirl_text" / first.report["config"] / "1.0.0"
    # As if the build had been killed: no finished version folder, a half-written one beside it.
    shutil.rmtree(version_dir)
    leftover = version_dir.parent / "incomplete.abc123_1.0.0"
    leftover.mkdir()
    (leftover / "jirl_text-train.array_record-00000-of-00001").write_bytes(b"half")
    again = prepare_text_dataset("preference", source, tokenizer=tokenizer, tokenization=settings,
                                 data_dir=data_dir, eval_fraction=0)
    assert again.report["reused"] is False and not leftover.exists()
    assert len(again.train) == 2 and sorted(p.name for p in version_dir.parent.iterdir()) == ["1.0.0"]


def test_check_tokenizer_fits_accepts_a_padded_model_vocabulary():
    tokenizer = byte_chat_tokenizer()
    check_tokenizer_fits(tokenizer, tokenizer.vocab_size)
    check_tokenizer_fits(tokenizer, 512)  # embedding rows padded to a round number
    with pytest.raises(DataError, match="has 259 tokens but the model's vocab_size is 258.*use the tokenizer"):
        check_tokenizer_fits(tokenizer, 258)


def test_a_datasetdict_asks_for_one_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    both = datasets.DatasetDict({"train": datasets.Dataset.from_list([pair()]),
                                 "test": datasets.Dataset.from_list([pair()])})
    with pytest.raises(DataError, match=r"DatasetDict with splits \['test', 'train'\]; pass one split"):
        prepare_text_dataset("preference", both, tokenizer=byte_chat_tokenizer(),
                             tokenization=ChatTokenization(max_len=64), data_dir=tmp_path)
