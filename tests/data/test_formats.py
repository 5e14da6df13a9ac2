"""``jirl.data.formats.read_rows``: every accepted layout, every source format, errors and drops."""

import dataclasses
import gzip
import json
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jirl.data.conversations import PreferenceRow, PromptRow, SftRow, UnpairedRow
from jirl.data.errors import DataError
from jirl.data.formats import RowReport, read_rows

# The shared data folder beside the repository root (see ../shared/data/README.md).
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def system(text):
    return {"role": "system", "content": text}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_json(path, rows):
    """A pretty-printed JSON array (each element over several lines), gzipped if the name ends .gz."""
    text = json.dumps(rows, indent=2)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as file:
            file.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_one(tmp_path, kind, row, **kwargs):
    rows, report = read_rows(write_jsonl(tmp_path / "d.jsonl", [row]), kind, **kwargs)
    assert (report.rows_read, report.kept, report.dropped) == (1, 1, {})
    return rows[0]


def without_where(rows):
    return [dataclasses.replace(row, where="") for row in rows]


# ---- layouts

SG_CHOSEN, SG_REJECTED = {"from": "gpt", "value": "good"}, {"from": "gpt", "value": "bad"}

LAYOUTS = {
    "preference standard, margin": (
        "preference",
        {"prompt": "p", "chosen": "good", "rejected": "bad", "margin": 1.5, "id": 3},
        PreferenceRow([user("p")], [assistant("good")], [assistant("bad")], "", False, 1.5),
    ),
    "preference standard, integer margin": (
        "preference",
        {"prompt": "p", "chosen": "good", "rejected": "bad", "margin": 2},
        PreferenceRow([user("p")], [assistant("good")], [assistant("bad")], "", False, 2.0),
    ),
    "preference conversational": (
        "preference",
        {"prompt": [system("s"), user("p")], "chosen": [assistant("good")], "rejected": [assistant("bad")]},
        PreferenceRow([system("s"), user("p")], [assistant("good")], [assistant("bad")], "", True, 0.0),
    ),
    "preference implicit prompt": (
        "preference",
        {
            "chosen": [user("q"), assistant("a"), user("q2"), assistant("good")],
            "rejected": [user("q"), assistant("a"), user("q2"), assistant("bad")],
        },
        PreferenceRow([user("q"), assistant("a"), user("q2")], [assistant("good")], [assistant("bad")], "", True),
    ),
    "preference implicit prompt, replies share their first message": (
        "preference",
        {
            "chosen": [user("q"), assistant("same"), assistant("good")],
            "rejected": [user("q"), assistant("same"), assistant("bad")],
        },
        PreferenceRow(
            [user("q")], [assistant("same"), assistant("good")], [assistant("same"), assistant("bad")], "", True
        ),
    ),
    "preference ShareGPT with system": (
        "preference",
        {
            "system": "be kind",
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a"},
                {"from": "user", "value": "q2"},
            ],
            "chosen": SG_CHOSEN,
            "rejected": SG_REJECTED,
        },
        PreferenceRow(
            [system("be kind"), user("q"), assistant("a"), user("q2")],
            [assistant("good")],
            [assistant("bad")],
            "",
            True,
        ),
    ),
    "preference ShareGPT, system turn": (
        "preference",
        {
            "conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}],
            "chosen": {"from": "assistant", "value": "good"},
            "rejected": SG_REJECTED,
            "margin": -0.5,
        },
        PreferenceRow([system("s"), user("q")], [assistant("good")], [assistant("bad")], "", True, -0.5),
    ),
    "sft standard": ("sft", {"prompt": "p", "completion": "c"}, SftRow([user("p"), assistant("c")], "", False)),
    "sft conversational": (
        "sft",
        {"prompt": [system("s"), user("p")], "completion": [assistant("c")]},
        SftRow([system("s"), user("p"), assistant("c")], "", True),
    ),
    "sft messages (a 'prompt' beside them is ignored, as in UltraChat)": (
        "sft",
        {"prompt": "p", "messages": [user("p"), assistant("a"), user("q"), assistant("b")]},
        SftRow([user("p"), assistant("a"), user("q"), assistant("b")], "", True),
    ),
    "sft ShareGPT": (
        "sft",
        {"system": "s", "conversations": [{"from": "human", "value": "p"}, {"from": "gpt", "value": "c"}]},
        SftRow([system("s"), user("p"), assistant("c")], "", True),
    ),
    "unpaired standard": (
        "unpaired",
        {"prompt": "p", "completion": "c", "label": True},
        UnpairedRow([user("p")], [assistant("c")], True, "", False),
    ),
    "unpaired conversational": (
        "unpaired",
        {"prompt": [user("p")], "completion": [assistant("c")], "label": False},
        UnpairedRow([user("p")], [assistant("c")], False, "", True),
    ),
    "unpaired LLaMA-Factory messages": (
        "unpaired",
        {"messages": [user("p"), assistant("a"), user("q"), assistant("c")], "label": False},
        UnpairedRow([user("p"), assistant("a"), user("q")], [assistant("c")], False, "", True),
    ),
    "unpaired ShareGPT kto_tag": (
        "unpaired",
        {"conversations": [{"from": "human", "value": "p"}, {"from": "gpt", "value": "c"}], "kto_tag": True},
        UnpairedRow([user("p")], [assistant("c")], True, "", True),
    ),
    "prompt string, other fields to extra": (
        "prompt",
        {"prompt": "p", "answer": "4", "id": 7, "note": None},
        PromptRow([user("p")], "", False, {"answer": "4", "id": 7, "note": None}),
    ),
    "prompt messages": (
        "prompt",
        {"prompt": [system("s"), user("p")]},
        PromptRow([system("s"), user("p")], "", True, {}),
    ),
}


@pytest.mark.parametrize("kind, source_row, expected", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_each_layout_gives_its_canonical_row(tmp_path, kind, source_row, expected):
    row = read_one(tmp_path, kind, source_row)
    assert row == dataclasses.replace(expected, where=f"{tmp_path / 'd.jsonl'}:1")


def test_columns_rename_source_fields_and_may_swap_them(tmp_path):
    row = read_one(tmp_path, "prompt", {"question": "q", "answer": "a"}, columns={"prompt": "question"})
    assert (row.prompt, row.extra) == ([user("q")], {"answer": "a"})
    source = {"prompt": "p", "chosen": "x", "rejected": "y"}
    row = read_one(tmp_path, "preference", source, columns={"chosen": "rejected", "rejected": "chosen"})
    assert (row.chosen, row.rejected) == ([assistant("y")], [assistant("x")])


# ---- the same rows in every source format

SAME_ROWS = {
    "preference": [
        {"prompt": "p1", "chosen": "c1", "rejected": "r1", "margin": 0.5},
        {"prompt": "p2", "chosen": "c2", "rejected": "r2"},  # no margin: a null in Parquet
    ],
    "sft": [
        {"messages": [system("s"), user("p1"), assistant("c1")]},
        {"messages": [user("p2"), assistant("c2"), user("p3"), assistant("c3")]},
    ],
    "unpaired": [
        {"prompt": [user("p1")], "completion": [assistant("c1")], "label": True},
        {"prompt": [user("p2")], "completion": [assistant("c2")], "label": False},
    ],
    "prompt": [{"prompt": "p1", "answer": "1", "level": 3}, {"prompt": "p2", "answer": "2", "level": 5}],
}


@pytest.mark.parametrize("kind", SAME_ROWS)
def test_jsonl_json_and_parquet_give_the_same_rows(tmp_path, kind):
    source_rows = SAME_ROWS[kind] * 2  # four rows
    jsonl_rows, _ = read_rows(write_jsonl(tmp_path / "d.jsonl", source_rows), kind)
    assert [row.where for row in jsonl_rows] == [f"{tmp_path / 'd.jsonl'}:{n}" for n in (1, 2, 3, 4)]
    for name in ("d.json", "d.json.gz"):
        path = write_json(tmp_path / name, source_rows)
        json_rows, _ = read_rows(path, kind)
        assert without_where(json_rows) == without_where(jsonl_rows)
        # json.dumps(indent=2) opens each element on its own line "  {".
        starts = [n for n, line in enumerate(json.dumps(source_rows, indent=2).splitlines(), 1) if line == "  {"]
        assert len(starts) == 4 and [row.where for row in json_rows] == [f"{path}:{n}" for n in starts]
    path = write_parquet(tmp_path / "d.parquet", source_rows)
    parquet_rows, _ = read_rows(path, kind)
    assert without_where(parquet_rows) == without_where(jsonl_rows)
    assert [row.where for row in parquet_rows] == [f"{path}:row {n}" for n in (1, 2, 3, 4)]
    gz_rows, _ = read_rows(write_jsonl_gz(tmp_path / "d.jsonl.gz", source_rows), kind)
    assert without_where(gz_rows) == without_where(jsonl_rows)


def write_jsonl_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_json_rows_are_placed_at_the_line_their_object_starts_on(tmp_path):
    text = '\ufeff[{"prompt": "a"},\n\n  {"prompt": "b"}, {"prompt": "c"}\n,\n{"prompt":\n"d"}\n]\n'
    path = tmp_path / "d.json"
    path.write_text(text, encoding="utf-8")
    rows, _ = read_rows(path, "prompt")
    assert [(row.prompt[0]["content"], row.where) for row in rows] == [
        ("a", f"{path}:1"),
        ("b", f"{path}:3"),
        ("c", f"{path}:3"),
        ("d", f"{path}:5"),
    ]


# ---- real files


def test_llamafactory_dpo_demo_reads_300_preference_pairs():
    path = str(SHARED / "llamafactory-demo" / "dpo_en_demo.json.gz")
    with gzip.open(path, "rt", encoding="utf-8") as file:
        source = json.load(file)
    rows, report = read_rows(path, "preference")
    assert (len(rows), report.rows_read, report.dropped) == (300, 300, {}), report.summary()
    assert rows[0].prompt == [user(source[0]["conversations"][0]["value"])]
    assert rows[0].chosen == [assistant(source[0]["chosen"]["value"])]
    assert rows[0].where == f"{path}:2" and rows[0].conversational
    with_system = next(n for n, row in enumerate(source) if row["conversations"][0]["from"] == "system")
    assert rows[with_system].prompt[0] == system(source[with_system]["conversations"][0]["value"])
    assert all(row.prompt[-1]["role"] == "user" for row in rows)


def test_llamafactory_kto_demo_reads_300_unpaired_rows_with_both_labels():
    path = str(SHARED / "llamafactory-demo" / "kto_en_demo.json.gz")
    with gzip.open(path, "rt", encoding="utf-8") as file:
        source = json.load(file)
    rows, report = read_rows(path, "unpaired")
    assert (len(rows), report.dropped) == (300, {}), report.summary()
    assert [row.label for row in rows] == [row["label"] for row in source]
    assert {row.label for row in rows} == {True, False}
    assert [row.prompt + row.completion for row in rows] == [row["messages"] for row in source]
    assert all(len(row.completion) == 1 and row.completion[0]["role"] == "assistant" for row in rows)


def test_gsm8k_questions_are_prompts_with_the_answer_in_extra():
    path = str(SHARED / "gsm8k" / "train.jsonl.gz")
    rows, report = read_rows(path, "prompt", columns={"prompt": "question"})
    with gzip.open(path, "rt", encoding="utf-8") as file:
        first = json.loads(file.readline())
    assert (len(rows), report.kept) == (7473, 7473)
    assert rows[0] == PromptRow([user(first["question"])], f"{path}:1", False, {"answer": first["answer"]})
    assert all(set(row.extra) == {"answer"} for row in rows)


# ---- datasets.Dataset objects and folders


class FakeDataset:
    """What read_rows uses of a datasets.Dataset: len, column_names, and rows by index as dicts."""

    def __init__(self, rows):
        self.rows = rows
        self.column_names = sorted({field for row in rows for field in row})

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def test_a_dataset_object_is_read_row_by_row(tmp_path):
    dataset = FakeDataset([{"question": "q1", "answer": "1"}, {"question": "q2", "answer": "2"}])
    rows, report = read_rows(dataset, "prompt", columns={"prompt": "question"})
    assert rows == [
        PromptRow([user("q1")], "dataset[0]", False, {"answer": "1"}),
        PromptRow([user("q2")], "dataset[1]", False, {"answer": "2"}),
    ]
    assert report == RowReport(rows_read=2, kept=2)


def test_dataset_errors_name_the_index():
    dataset = FakeDataset(
        [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "p", "completion": "c", "label": 1}]
    )
    with pytest.raises(DataError, match=r"^dataset\[1\]: field 'label' must be true or false"):
        read_rows(dataset, "unpaired")
    with pytest.raises(DataError, match=r"dataset\[0\]: a row must be an object .*got a list"):
        read_rows(FakeDataset([["p", "c"]]), "prompt")


def test_a_dataset_dict_asks_for_one_split():
    class FakeDatasetDict(dict):
        column_names = {"train": ["prompt"], "test": ["prompt"]}

    with pytest.raises(DataError, match=r"DatasetDict with splits \['test', 'train'\]; pass one split"):
        read_rows(FakeDatasetDict(), "prompt")


def test_a_saved_dataset_folder_without_the_datasets_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(DataError, match=re.escape(f"{tmp_path} is a folder") + r".*pip install datasets"):
        read_rows(tmp_path, "prompt")


# ---- structural errors


def assert_error_on_line_2(tmp_path, kind, bad_row, match, **kwargs):
    """read_rows of a good row then ``bad_row`` raises, naming line 2 and ``match``."""
    good = {
        "preference": {"prompt": "p", "chosen": "c", "rejected": "r"},
        "sft": {"prompt": "p", "completion": "c"},
        "unpaired": {"prompt": "p", "completion": "c", "label": True},
        "prompt": {"prompt": "p"},
    }[kind]
    path = write_jsonl(tmp_path / "d.jsonl", [good, bad_row])
    with pytest.raises(DataError, match="^" + re.escape(f"{path}:2: ") + match):
        read_rows(path, kind, **kwargs)


ROW_ERRORS = {
    "no preference layout": (
        "preference",
        {"question": "q", "answer": "a"},
        r"no preference layout matches the row's fields \['answer', 'question'\]; accepted for kind='preference': "
        r"\{prompt, chosen, rejected\} as strings .*\{conversations, chosen, rejected\} \(ShareGPT.*columns=",
    ),
    "a null field is named": (
        "preference",
        {"prompt": "p", "chosen": "c", "rejected": None},
        r"no preference layout matches the row's fields \['chosen', 'prompt', 'rejected'\] \(null: \['rejected'\]\)",
    ),
    "wrong field type": (
        "preference",
        {"prompt": "p", "chosen": 3, "rejected": "r"},
        r"field 'chosen' must be a string or a list of messages, got int",
    ),
    "strings mixed with messages": (
        "preference",
        {"prompt": "p", "chosen": [assistant("c")], "rejected": [assistant("r")]},
        r"fields \['prompt'\] are strings but \['chosen', 'rejected'\] are lists of messages; give all of them",
    ),
    "standard implicit prompt": (
        "preference",
        {"chosen": "Human: q Assistant: a", "rejected": "Human: q Assistant: b"},
        r"'chosen' and 'rejected' are strings without a 'prompt' \(TRL's standard implicit-prompt form\)"
        r".*add a 'prompt' field",
    ),
    "a reply holding a user turn": (
        "preference",
        {"prompt": [user("p")], "chosen": [user("p"), assistant("c")], "rejected": [assistant("r")]},
        r"field 'chosen' holds a 'user' message, but a reply is assistant messages only",
    ),
    "a prompt not ending with a user turn": (
        "preference",
        {"prompt": [user("p"), assistant("a")], "chosen": [assistant("c")], "rejected": [assistant("r")]},
        r"field 'prompt': the prompt must end with a user message, but its last message is from 'assistant'",
    ),
    "a non-numeric margin": (
        "preference",
        {"prompt": "p", "chosen": "c", "rejected": "r", "margin": "1"},
        r"field 'margin' must be a finite number, got str '1'",
    ),
    "a boolean margin": (
        "preference",
        {"prompt": "p", "chosen": "c", "rejected": "r", "margin": True},
        r"field 'margin' must be a finite number, got bool",
    ),
    "ShareGPT chosen as a string": (
        "preference",
        {"conversations": [{"from": "human", "value": "q"}], "chosen": "c", "rejected": SG_REJECTED},
        r"field 'chosen' must be a ShareGPT turn \{'from': 'gpt', 'value': \.\.\.\}, got str",
    ),
    "ShareGPT chosen from the human": (
        "preference",
        {
            "conversations": [{"from": "human", "value": "q"}],
            "chosen": {"from": "human", "value": "c"},
            "rejected": SG_REJECTED,
        },
        r"field 'chosen' must be the assistant's reply \(from 'gpt'\), got from 'human'",
    ),
    "ShareGPT tool turn": (
        "sft",
        {
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "function_call", "value": "{}"},
                {"from": "gpt", "value": "a"},
            ]
        },
        r"field 'conversations', turn 2 is from 'function_call'; jirl reads ShareGPT turns from 'human'/'user'",
    ),
    "ShareGPT turn without from": (
        "sft",
        {"conversations": [{"role": "user", "content": "q"}]},
        r"field 'conversations', turn 1 has no 'from' \(keys \['content', 'role'\]\)",
    ),
    "ShareGPT system not a string": (
        "sft",
        {"system": ["s"], "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        r"field 'system' must be a string, got list",
    ),
    "unknown role": (
        "sft",
        {"messages": [user("q"), {"role": "tool", "content": "{}"}, assistant("a")]},
        r"field 'messages', message 2 has role 'tool'; jirl reads the roles 'system', 'user', 'assistant' only",
    ),
    "message without content": (
        "sft",
        {"messages": [{"role": "user"}, assistant("a")]},
        r"field 'messages', message 1 has no 'content' \(keys \['role'\]\)",
    ),
    "message content not a string": (
        "sft",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}, assistant("a")]},
        r"field 'messages', message 1: 'content' must be a string, got list",
    ),
    "a message that is not an object": (
        "sft",
        {"messages": ["q", assistant("a")]},
        r"field 'messages', message 1 must be an object",
    ),
    "messages not a list": ("sft", {"messages": "q"}, r"field 'messages' must be a list of messages, got str"),
    "plain text for SFT": (
        "sft",
        {"text": "some text"},
        r"a 'text' field \(plain language-modeling text\) is not an SFT layout jirl reads: "
        r"jirl trains on assistant turns",
    ),
    "SFT without an assistant turn": (
        "sft",
        {"messages": [system("s"), user("q")]},
        r"the conversation has no assistant turn",
    ),
    "no sft layout": (
        "sft",
        {"instruction": "i", "output": "o"},
        r"no sft layout matches the row's fields \['instruction', 'output'\]",
    ),
    "label as a string": (
        "unpaired",
        {"prompt": "p", "completion": "c", "label": "true"},
        r"field 'label' must be true or false \(a JSON boolean\), got str 'true'",
    ),
    "label as an integer": (
        "unpaired",
        {"prompt": "p", "completion": "c", "label": 1},
        r"field 'label' must be true or false \(a JSON boolean\), got int 1",
    ),
    "kto_tag as a string": (
        "unpaired",
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "kto_tag": "false"},
        r"field 'kto_tag' must be true or false",
    ),
    "no label": (
        "unpaired",
        {"prompt": "p", "completion": "c"},
        r"no unpaired layout matches the row's fields \['completion', 'prompt'\]",
    ),
    "KTO messages not ending with the reply": (
        "unpaired",
        {"messages": [user("q"), assistant("a"), user("q2")], "label": True},
        r"field 'messages' must end with the assistant's reply, but its last message is from 'user'",
    ),
    "KTO turns before the reply not ending with a user turn": (
        "unpaired",
        {"messages": [user("q"), assistant("a"), assistant("b")], "label": True},
        r"field 'messages': the prompt must end with a user message, but its last message is from 'assistant'",
    ),
    "prompt messages ending with the assistant": (
        "prompt",
        {"prompt": [user("q"), assistant("a")]},
        r"field 'prompt': the prompt must end with a user message",
    ),
    "no prompt": ("prompt", {"question": "q"}, r"no prompt layout matches the row's fields \['question'\]"),
    "prompt not text": ("prompt", {"prompt": 5}, r"field 'prompt' must be a string or a list of messages, got int"),
}


@pytest.mark.parametrize("kind, bad_row, match", ROW_ERRORS.values(), ids=ROW_ERRORS.keys())
def test_structural_problems_raise_naming_the_row(tmp_path, kind, bad_row, match):
    assert_error_on_line_2(tmp_path, kind, bad_row, match)


def test_a_column_clash_names_the_row(tmp_path):
    match = r"the row has both 'question' and 'prompt', and columns maps 'question' to 'prompt'"
    assert_error_on_line_2(tmp_path, "prompt", {"question": "q", "prompt": "p"}, match, columns={"prompt": "question"})


def test_a_column_no_row_has_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q"}])
    match = re.escape(
        f"{path}: columns maps 'query' to 'prompt', but no row has a field 'query' (the rows have ['question'])"
    )
    with pytest.raises(DataError, match=match):
        read_rows(path, "prompt", columns={"prompt": "query"})


def test_jsonl_file_errors_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: invalid JSON (")):
        read_rows(path, "prompt")
    path.write_text('{"prompt": "p"}\n\n["p"]\n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:3: expected a JSON object")):
        read_rows(path, "prompt")


JSON_ERRORS = {
    "bad syntax": ('[\n  {"prompt": "a"},\n  {"prompt": }\n]', r":3: invalid JSON \(Expecting value at column 14\)"),
    "trailing comma": ('[\n  {"prompt": "a"},\n]', r":3: invalid JSON \(Expecting value at column 1\)"),
    "missing comma": (
        '[\n  {"prompt": "a"}\n  {"prompt": "b"}\n]',
        r":3: invalid JSON \(Expecting ',' or '\]' after an array element",
    ),
    "unclosed array": ('[\n  {"prompt": "a"}\n', r":3: invalid JSON \(Expecting ',' or '\]'"),
    "data after the array": ('[{"prompt": "a"}]\n[]', r":2: invalid JSON \(Extra data after the array"),
    "element not an object": (
        '[\n  {"prompt": "a"},\n  "b"\n]',
        r":3: a row must be an object \{field: value, \.\.\.\}, got a str",
    ),
    "rows under a key": (
        '{"version": 1, "data": [{"prompt": "a"}]}',
        r": the top-level JSON value is an object with keys \['data', 'version'\], not an array; .* "
        r"\(its key 'data' holds a list: write that list as the top level, or as JSONL\)",
    ),
    "JSON Lines named .json": (
        '{"prompt": "a"}\n{"prompt": "b"}\n',
        r":2: a second JSON value follows the first; .*name it \.jsonl",
    ),
    "a top-level string": ('"rows"', r": the top-level JSON value is a str, not an array of row objects"),
}


@pytest.mark.parametrize("text, match", JSON_ERRORS.values(), ids=JSON_ERRORS.keys())
def test_json_file_errors_name_the_line_and_the_problem(tmp_path, text, match):
    path = tmp_path / "d.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match="^" + re.escape(str(path)) + match):
        read_rows(path, "prompt")


def test_json_bytes_that_are_not_utf8_are_named_by_line(tmp_path):
    path = tmp_path / "d.json.gz"
    with gzip.open(path, "wb") as file:
        file.write(b'[\n  {"prompt": "a"},\n  {"prompt": "caf\xe9"}\n]')
    with pytest.raises(DataError, match=re.escape(f"{path}:3: not UTF-8 text: byte 0xe9 at column 18")):
        read_rows(path, "prompt")


def test_parquet_errors_name_the_row(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", [{"prompt": "p", "completion": "c", "label": "yes"}] * 2)
    with pytest.raises(DataError, match=re.escape(f"{path}:row 1: field 'label' must be true or false")):
        read_rows(path, "unpaired")


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*nope\.jsonl \(working directory"):
        read_rows(tmp_path / "nope.jsonl", "prompt")
    csv = tmp_path / "d.csv"
    csv.write_text("prompt\np\n", encoding="utf-8")
    with pytest.raises(
        DataError,
        match=r"d\.csv: unknown file type; jirl reads \.jsonl, \.jsonl\.gz, \.json, \.json\.gz, \.parquet files",
    ):
        read_rows(csv, "prompt")
    junk = tmp_path / "d.parquet"
    junk.write_text("not parquet", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.parquet: not a readable Parquet file"):
        read_rows(junk, "prompt")
    plain = tmp_path / "d.json.gz"
    plain.write_text('[{"prompt": "p"}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.json\.gz: cannot read the file \(Not a gzipped file"):
        read_rows(plain, "prompt")
    with pytest.raises(DataError, match=r"kind must be one of 'preference', 'sft', 'unpaired', 'prompt', got 'dpo'"):
        read_rows(plain, "dpo")
    with pytest.raises(DataError, match=r"source must be a path \(str or Path\) or a datasets\.Dataset, got list"):
        read_rows([{"prompt": "p"}], "prompt")


# ---- content problems: dropped and counted


def test_content_problems_are_dropped_and_counted_with_the_first_place(tmp_path):
    source_rows = [
        {"prompt": "p", "chosen": "good", "rejected": "bad"},  # kept
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "  ", "chosen": "good", "rejected": "bad"},
        {"prompt": "p", "chosen": "good", "rejected": " \n"},
        {"prompt": [user("p")], "chosen": [assistant("x")], "rejected": [assistant("x")]},
        {"chosen": [user("q1"), assistant("good")], "rejected": [user("q2"), assistant("bad")]},
        {
            "chosen": [user("q"), assistant("a"), user("q2"), assistant("good")],
            "rejected": [user("q"), assistant("bad")],
        },
        {"prompt": [user("p")], "chosen": [], "rejected": [assistant("bad")]},
        {"prompt": [], "chosen": [assistant("good")], "rejected": [assistant("bad")]},
        {"prompt": "p2", "chosen": "good", "rejected": "bad"},  # kept
    ]
    path = write_jsonl(tmp_path / "d.jsonl", source_rows)
    rows, report = read_rows(path, "preference")
    assert [row.where for row in rows] == [f"{path}:1", f"{path}:10"]
    assert report.dropped == {"chosen equals rejected": 2, "empty prompt": 2, "empty response": 2, "prompts differ": 2}
    assert report.first == {
        "chosen equals rejected": f"{path}:2",
        "empty prompt": f"{path}:3",
        "empty response": f"{path}:4",
        "prompts differ": f"{path}:6",
    }
    assert (report.rows_read, report.kept) == (10, 2)
    assert f"read 10 rows, kept 2, dropped 8 (chosen equals rejected: 2 rows, first at {path}:2; " in report.summary()


@pytest.mark.parametrize(
    "kind, source_row, reason",
    [
        ("sft", {"messages": [user("q"), assistant("a"), user("q2"), assistant(" ")]}, "empty response"),
        ("sft", {"messages": [system("s"), assistant("a")]}, "empty prompt"),
        ("sft", {"prompt": "", "completion": "c"}, "empty prompt"),
        ("unpaired", {"prompt": "p", "completion": "", "label": True}, "empty response"),
        ("unpaired", {"messages": [assistant("a")], "label": False}, "empty prompt"),
        ("prompt", {"prompt": "\t"}, "empty prompt"),
        ("prompt", {"prompt": [system("s"), user("")]}, "empty prompt"),
        ("preference", {"chosen": [assistant("a")], "rejected": [assistant("b")]}, "empty prompt"),
        ("preference", {"chosen": [user("q")], "rejected": [user("q"), assistant("b")]}, "empty response"),
    ],
)
def test_each_kind_drops_empty_prompts_and_responses(tmp_path, kind, source_row, reason):
    keep = {
        "sft": {"prompt": "p", "completion": "c"},
        "unpaired": {"prompt": "p", "completion": "c", "label": True},
        "prompt": {"prompt": "p"},
        "preference": {"prompt": "p", "chosen": "c", "rejected": "r"},
    }[kind]
    path = write_jsonl(tmp_path / "d.jsonl", [source_row, keep])
    rows, report = read_rows(path, kind)
    assert [row.where for row in rows] == [f"{path}:2"]
    assert (report.dropped, report.first) == ({reason: 1}, {reason: f"{path}:1"})


def test_no_rows_left_is_an_error_giving_the_counts(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "p", "chosen": "x", "rejected": "x"}, {"prompt": "p", "chosen": "", "rejected": "r"}],
    )
    expected = (
        f"{path}: no usable preference rows: read 2 rows, kept 0, dropped 2 (chosen equals rejected: 1 row, "
        f"first at {path}:1; empty response: 1 row, first at {path}:2); fix or remove these rows"
    )
    with pytest.raises(DataError, match="^" + re.escape(expected) + "$"):
        read_rows(path, "preference")
    empty = write_jsonl(tmp_path / "e.jsonl", [])
    with pytest.raises(DataError, match=re.escape(f"{empty}: no rows (the source is empty)")):
        read_rows(empty, "preference")
    empty_array = tmp_path / "e.json"
    empty_array.write_text(" [ ]\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{empty_array}: no rows")):
        read_rows(empty_array, "prompt")


def test_the_summary_of_a_clean_read():
    assert RowReport(rows_read=3, kept=3).summary() == "read 3 rows, kept all 3"
