"""User text data as tokenized TFDS datasets (jirl.data.text_datasets.prepare_text_dataset).

Records are checked against ``jirl.data.chat_tokenize`` applied row by row (an independent path
that writes nothing), reuse against the files on disk, the eval split against the prompts in the
records, the report against counts made by hand, and the acceptance test against the same data
written in every layout jirl reads.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

import jirl.data.text_datasets as text_datasets
from jirl.data.chat_tokenize import (
    ChatTokenization,
    tokenize_preference_row,
    tokenize_prompt_row,
    tokenize_sft_row,
    tokenize_unpaired_row,
)
from jirl.data.conversations import PreferenceRow, PromptRow, SftRow, UnpairedRow
from jirl.data.loader import batch_iterator
from jirl.data.text_datasets import TextDataset, prepare_text_dataset, tokenizer_digest
from tests.data.test_chat_tokenize import CHATML, byte_chat_tokenizer

SETTINGS = ChatTokenization(max_len=48)


@pytest.fixture(scope="module")
def tokenizer():
    """Byte-level BPE with ChatML's special tokens and template (fast, no files)."""
    return byte_chat_tokenizer()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# 30 pairs over 10 prompts: each prompt is answered three times.
PAIRS = [
    {"prompt": f"question {i % 10}", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(30)
]

ROWS_BY_KIND = {
    "preference": PAIRS,
    "sft": [{"prompt": f"say {i % 7}", "completion": f"{i % 7} said, take {i}"} for i in range(21)],
    "unpaired": [{"prompt": f"rate {i % 6}", "completion": f"reply {i}", "label": i % 3 == 0} for i in range(18)],
    "prompt": [{"prompt": f"solve {i}", "answer": str(i)} for i in range(12)],
}

TOKENIZE = {
    "preference": tokenize_preference_row,
    "sft": tokenize_sft_row,
    "unpaired": tokenize_unpaired_row,
    "prompt": tokenize_prompt_row,
}


def canonical_row(kind: str, row: dict, where: str):
    """The canonical row of a standard-form source row, built by hand (not by read_rows)."""
    prompt = [user(row["prompt"])]
    if kind == "preference":
        return PreferenceRow(prompt, [assistant(row["chosen"])], [assistant(row["rejected"])], where, False)
    if kind == "sft":
        return SftRow(prompt + [assistant(row["completion"])], where, False)
    if kind == "unpaired":
        return UnpairedRow(prompt, [assistant(row["completion"])], row["label"], where, False)
    return PromptRow(prompt, where, False)


def assert_same_example(actual: dict, expected: dict, what: str = "") -> None:
    assert sorted(actual) == sorted(expected), what
    for key in expected:
        want = np.asarray(expected[key])
        assert actual[key].dtype == want.dtype, f"{what} {key}"
        np.testing.assert_array_equal(actual[key], want, err_msg=f"{what} {key}")


def example_bytes(example: dict) -> tuple:
    """Every field of ``example`` (name, dtype, bytes): equal exactly when the examples are."""
    return tuple((key, str(np.asarray(example[key]).dtype), np.asarray(example[key]).tobytes())
                 for key in sorted(example))


def all_examples(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def files_with_mtimes(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in sorted(root.rglob("*")) if path.is_file()}


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize("kind", sorted(ROWS_BY_KIND))
def test_records_equal_chat_tokenize_row_by_row(kind, tokenizer, tmp_path):
    rows = ROWS_BY_KIND[kind]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    dataset = prepare_text_dataset(kind, path, tokenizer=tokenizer, tokenization=SETTINGS,
                                   data_dir=tmp_path / "tfds", eval_fraction=0)
    assert isinstance(dataset, TextDataset) and dataset.kind == kind
    assert len(dataset.train) == len(rows) and len(dataset.eval) == 0
    for index, row in enumerate(rows):
        expected = TOKENIZE[kind](canonical_row(kind, row, f"row {index}"), tokenizer, SETTINGS).example
        assert_same_example(dataset.train[index], expected, f"row {index}")


def test_eval_split_keeps_row_order_and_every_row_once(tokenizer, tmp_path):
    """Train and eval, merged back by each row's prompt, are the rows' records in file order."""
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    dataset = prepare_text_dataset("preference", path, tokenizer=tokenizer, tokenization=SETTINGS,
                                   data_dir=tmp_path / "tfds", eval_fraction=0.4, seed=3)
    train, evals = iter(all_examples(dataset.train)), iter(all_examples(dataset.eval))
    eval_prompts = {prompt_ids(example) for example in all_examples(dataset.eval)}
    for index, row in enumerate(PAIRS):
        expected = tokenize_preference_row(canonical_row("preference", row, "r"), tokenizer, SETTINGS).example
        split = evals if prompt_ids(expected) in eval_prompts else train
        assert_same_example(next(split), expected, f"row {index}")
    assert next(train, None) is None and next(evals, None) is None


def prompt_ids(example: dict) -> tuple[int, ...]:
    return tuple(example["chosen"][: int(example["prompt_len"])].tolist())


def test_eval_split_never_splits_a_prompt_and_depends_only_on_the_seed(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)

    def prompts(seed, data_dir):
        dataset = prepare_text_dataset("preference", path, tokenizer=tokenizer, tokenization=SETTINGS,
                                       data_dir=data_dir, eval_fraction=0.5, seed=seed)
        train = [prompt_ids(example) for example in all_examples(dataset.train)]
        evals = [prompt_ids(example) for example in all_examples(dataset.eval)]
        return train, evals

    splits = {}
    for seed in range(4):
        train, evals = prompts(seed, tmp_path / f"seed{seed}")
        assert not set(train) & set(evals), f"seed {seed}: a prompt is in both splits"
        # Every prompt comes with all three of its pairs.
        assert all(train.count(p) == 3 for p in train) and all(evals.count(p) == 3 for p in evals)
        splits[seed] = set(evals)
    assert len({frozenset(evals) for evals in splits.values()}) > 1, "the seed should change the split"
    assert set(prompts(2, tmp_path / "again")[1]) == splits[2]


def test_eval_data_is_the_eval_split(tokenizer, tmp_path):
    train_path = write_jsonl(tmp_path / "train.jsonl", PAIRS[:20])
    eval_path = write_jsonl(tmp_path / "eval.jsonl", PAIRS[20:])
    dataset = prepare_text_dataset("preference", train_path, eval_data=eval_path, tokenizer=tokenizer,
                                   tokenization=SETTINGS, data_dir=tmp_path / "tfds", eval_fraction=0.5)
    assert (len(dataset.train), len(dataset.eval)) == (20, 10)
    for index, row in enumerate(PAIRS[20:]):
        expected = tokenize_preference_row(canonical_row("preference", row, "r"), tokenizer, SETTINGS).example
        assert_same_example(dataset.eval[index], expected, f"eval row {index}")
    # PAIRS[20:] ask the same ten questions as PAIRS[:20]: the report warns about it.
    assert dataset.report["eval_prompts_in_train"] == 10
    assert dataset.report["settings"]["eval"] == "eval_data"
    assert set(dataset.report["read"]) == {"data", "eval_data"}


# --------------------------------------------------------------------------- reuse and identity


def test_a_second_call_reuses_the_build_without_tokenizing(tokenizer, tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    data_dir = tmp_path / "tfds"
    first = prepare_text_dataset("preference", path, tokenizer=tokenizer, tokenization=SETTINGS, data_dir=data_dir)
    assert first.report["reused"] is False
    before = files_with_mtimes(data_dir)

    def refuse(*args):
        raise AssertionError("a reused build must not tokenize again")

    monkeypatch.setattr(text_datasets, "TOKENIZE", dict.fromkeys(text_datasets.TOKENIZE, refuse))
    second = prepare_text_dataset("preference", path, tokenizer=tokenizer, tokenization=SETTINGS, data_dir=data_dir)
    assert files_with_mtimes(data_dir) == before
    assert second.report["reused"] is True
    assert {k: v for k, v in second.report.items() if k != "reused"} == {
        k: v for k, v in first.report.items() if k != "reused"
    }
    for a, b in zip(all_examples(first.train), all_examples(second.train)):
        assert_same_example(a, b)


def config_of(dataset: TextDataset) -> str:
    return dataset.report["config"]


def test_changes_to_rows_tokenizer_or_settings_build_a_new_config(tokenizer, tmp_path):
    data_dir = tmp_path / "tfds"
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)

    def prepare(source=path, tok=tokenizer, settings=SETTINGS, **kwargs):
        return prepare_text_dataset("preference", source, tokenizer=tok, tokenization=settings, data_dir=data_dir,
                                    **kwargs)

    base = prepare()
    edited = [dict(row) for row in PAIRS]
    edited[7]["chosen"] += "!"
    variants = {
        "edited row": prepare(write_jsonl(tmp_path / "edited.jsonl", edited)),
        "max_len": prepare(settings=ChatTokenization(max_len=40)),
        "max_prompt_len": prepare(settings=ChatTokenization(max_len=48, max_prompt_len=20)),
        "chat_template none": prepare(settings=ChatTokenization(max_len=48, chat_template="none")),
        "tokenizer template": prepare(tok=byte_chat_tokenizer(CHATML.replace("\n", "\n\n"))),
        "seed": prepare(seed=1),
        "eval_fraction": prepare(eval_fraction=0.2),
    }
    names = {name: config_of(dataset) for name, dataset in variants.items()}
    assert len(set(names.values()) | {config_of(base)}) == len(names) + 1, names
    assert not any(dataset.report["reused"] for dataset in variants.values())
    # Every build stays on disk beside the others, and the first is reused as it was.
    built = sorted(p.name for p in (data_dir / "jirl_text").iterdir())
    assert built == sorted([config_of(base), *names.values()])
    assert prepare().report["reused"] is True
    # The edited build differs exactly at the edited row.
    edited_build = variants["edited row"]
    changed = [
        i for i, (a, b) in enumerate(zip(all_examples(base.train) + all_examples(base.eval),
                                         all_examples(edited_build.train) + all_examples(edited_build.eval)))
        if not np.array_equal(a["chosen"], b["chosen"])
    ]
    assert len(changed) == 1


def test_the_same_rows_in_another_layout_reuse_the_build(tokenizer, tmp_path):
    data_dir = tmp_path / "tfds"
    standard = write_jsonl(tmp_path / "standard.jsonl", PAIRS)
    conversational = write_jsonl(tmp_path / "conversational.jsonl", [conversational_pair(row) for row in PAIRS])
    first = prepare_text_dataset("preference", standard, tokenizer=tokenizer, tokenization=SETTINGS,
                                 data_dir=data_dir)
    second = prepare_text_dataset("preference", conversational, tokenizer=tokenizer, tokenization=SETTINGS,
                                  data_dir=data_dir)
    assert config_of(first) == config_of(second) and second.report["reused"] is True


def test_tokenizer_digest_follows_what_decides_the_ids(tokenizer):
    digest = tokenizer_digest(tokenizer)
    assert digest == tokenizer_digest(byte_chat_tokenizer()) and len(digest) == 16
    assert tokenizer_digest(byte_chat_tokenizer(template=None)) != digest
    other_eos = byte_chat_tokenizer()
    other_eos.eos_token = "<|endoftext|>"
    assert tokenizer_digest(other_eos) != digest
    from jirl.mdp.tokenizer import ByteTokenizer, CharTokenizer

    assert tokenizer_digest(CharTokenizer("ab")) != tokenizer_digest(CharTokenizer("abc"))
    assert tokenizer_digest(ByteTokenizer()) == tokenizer_digest(ByteTokenizer())


# --------------------------------------------------------------------------- report


def test_report_matches_a_hand_count(tokenizer, tmp_path):
    """Drops, truncations and token lengths of a small file, counted by hand.

    ChatML with the byte tokenizer: a prompt "p" is 19 + len(p) tokens (<|im_start|>, "user\\n",
    p, <|im_end|>, "\\n", <|im_start|>, "assistant\\n"), a reply "c" is len(c) + 1 (its <|im_end|>).
    With max_len 32: line 3's prompt (31) + its longest reply (3) is 34, so the prompt is cut to
    29; line 5's reply (41) cuts the prompt to one token and itself to 31.
    """
    rows = [
        {"prompt": "hi", "chosen": "yes", "rejected": "no"},  # 1: kept, prompt 21, replies 4 and 3
        {"prompt": "hi", "chosen": "same", "rejected": "same"},  # 2: chosen equals rejected
        {"prompt": "x" * 12, "chosen": "ok", "rejected": "no"},  # 3: kept, prompt 31 cut; replies 3, 3
        {"prompt": "  ", "chosen": "a", "rejected": "b"},  # 4: empty prompt
        {"prompt": "hi", "chosen": "z" * 40, "rejected": "no"},  # 5: kept, prompt 21 cut, reply 41 cut to 31; 3
        {"prompt": "yo", "chosen": "dup", "rejected": "dup"},  # 6: chosen equals rejected
        {"prompt": "hey", "chosen": "a", "rejected": "bb"},  # 7: kept, prompt 22, replies 2 and 3
        {"prompt": "hey", "chosen": "", "rejected": "x"},  # 8: empty response
    ]
    path = write_jsonl(tmp_path / "messy.jsonl", rows)
    console = io.StringIO()
    dataset = prepare_text_dataset("preference", path, tokenizer=tokenizer, tokenization=ChatTokenization(max_len=32),
                                   data_dir=tmp_path / "tfds", eval_fraction=0, console=PrintTo(console))
    report = dataset.report
    assert report["read"] == {"data": {
        "rows_read": 8,
        "kept": 4,
        "dropped": {"chosen equals rejected": 2, "empty prompt": 1, "empty response": 1},
        "first": {"chosen equals rejected": f"{path}:2", "empty prompt": f"{path}:4", "empty response": f"{path}:8"},
    }}
    assert report["splits"]["train"] == {
        "examples": 4,
        "prompts": 3,
        "prompt_truncated": 2,
        "response_truncated": 1,
        "prompt_tokens": {"mean": 23.75, "max": 31},  # 21, 31, 21, 22 before cuts
        "response_tokens": {"mean": 6.5, "max": 31},  # 4 3, 3 3, 31 3, 2 3
    }
    assert report["splits"]["eval"]["examples"] == 0 and len(dataset.eval) == 0  # eval_fraction=0
    assert [int(dataset.train[i]["prompt_len"]) for i in range(4)] == [21, 29, 1, 22]
    assert report["tokenizer"] == tokenizer_digest(tokenizer)
    assert report["settings"]["max_len"] == 32 and report["kind"] == "preference"
    # The report is saved beside the records.
    saved = json.loads((Path(report["path"]) / "metadata.json").read_text())["report"]
    assert saved == {k: v for k, v in report.items() if k not in ("path", "reused")}
    printed = console.getvalue()
    assert f"chosen equals rejected 2 (first at {path}:2)" in printed
    assert "train: 4 preference examples" in printed and "2 prompts, 1 responses" in printed


def test_a_rich_console_prints_places_verbatim(tokenizer, tmp_path):
    """Places reach a rich console as text, not as markup: a folder named ``runs[bold]`` stays."""
    from rich.console import Console

    folder = tmp_path / "runs[bold]"
    folder.mkdir()
    path = write_jsonl(folder / "d.jsonl", [PAIRS[0], {"prompt": "a", "chosen": "same", "rejected": "same"}])
    output = io.StringIO()
    prepare_text_dataset("preference", path, tokenizer=tokenizer, tokenization=SETTINGS, data_dir=tmp_path / "tfds",
                         eval_fraction=0, console=Console(file=output, width=500))
    assert f"dropped chosen equals rejected 1 (first at {path}:2)" in output.getvalue()


class PrintTo:
    """A console stand-in: ``print`` writes to a text buffer."""

    def __init__(self, buffer):
        self.buffer = buffer

    def print(self, text):
        self.buffer.write(f"{text}\n")


# --------------------------------------------------------------------------- loader


def test_batches_through_the_loader_are_deterministic(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)

    def batches(data_dir, seed):
        dataset = prepare_text_dataset("preference", path, tokenizer=tokenizer, tokenization=SETTINGS,
                                       data_dir=data_dir, eval_fraction=0.2)
        with batch_iterator(dataset.train, batch_size=4, seed=seed) as iterator:
            return [next(iterator) for _ in range(8)]

    first, again = batches(tmp_path / "a", seed=0), batches(tmp_path / "b", seed=0)
    other = batches(tmp_path / "a", seed=1)
    assert first[0]["chosen"].shape == (4, 48) and first[0]["chosen"].dtype == np.int32
    assert first[0]["margin"].dtype == np.float32
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["chosen"], b["chosen"]) for a, b in zip(first, other))


# --------------------------------------------------------------------------- acceptance: every layout, same records


def conversational_pair(row: dict) -> dict:
    return {"prompt": [user(row["prompt"])], "chosen": [assistant(row["chosen"])],
            "rejected": [assistant(row["rejected"])]}


def sharegpt_pair(row: dict) -> dict:
    return {"conversations": [{"from": "human", "value": row["prompt"]}],
            "chosen": {"from": "gpt", "value": row["chosen"]}, "rejected": {"from": "gpt", "value": row["rejected"]}}


def implicit_prompt_pair(row: dict) -> dict:
    return {"chosen": [user(row["prompt"]), assistant(row["chosen"])],
            "rejected": [user(row["prompt"]), assistant(row["rejected"])]}


def messages_sft(row: dict) -> dict:
    return {"messages": [user(row["prompt"]), assistant(row["completion"])]}


def sharegpt_sft(row: dict) -> dict:
    return {"conversations": [{"from": "human", "value": row["prompt"]}, {"from": "gpt", "value": row["completion"]}]}


def conversational_sft(row: dict) -> dict:
    return {"prompt": [user(row["prompt"])], "completion": [assistant(row["completion"])]}


def write_parquet(path: Path, rows) -> Path:
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def write_json_array(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def in_memory_dataset(path: Path, rows):
    import datasets

    return datasets.Dataset.from_list(rows)


def saved_dataset(path: Path, rows) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(os.fspath(path))
    return path


# Real text with non-ASCII characters, newlines and repeated prompts (so both splits hold rows).
TEXT_PAIRS = [
    {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for prompt, chosen, rejected in [
        ("What is the capital of France?", "Paris.", "I think it is Lyon."),
        ("What is the capital of France?", "The capital is Paris.", "Marseille."),
        ("Translate 'thank you' to Japanese.", "ありがとう (arigatou).", "Sayonara."),
        ("Write a haiku about rain.", "Soft rain on the roof\nwhispers to the sleeping town\npuddles hold the sky",
         "Rain is wet."),
        ("Write a haiku about rain.",
         "Grey clouds, silver threads —\nthe garden drinks slowly\nsnails come out to play",
         "No."),
        ("How many legs does a spider have?", "Eight.", "Six."),
        ("How many legs does a spider have?", "A spider has 8 legs.", "Ten, usually."),
        ("Is 17 prime?", "Yes: its only divisors are 1 and 17.", "No, 17 = 3 × 6."),
        ("Name a colour of the rainbow.", "Indigo.", "Brown."),
        ("Explain recursion briefly.", "A function that calls itself on a smaller input until a base case.",
         "Recursion is recursion."),
        ("Explain recursion briefly.", "Solving a problem by reducing it to smaller copies of itself.", "Loops."),
        ("¿Cómo estás?", "Muy bien, ¿y tú?", "I don't speak Spanish."),
    ]
]
TEXT_SFT = [{"prompt": row["prompt"], "completion": row["chosen"]} for row in TEXT_PAIRS]

PREFERENCE_LAYOUTS = {
    "jsonl standard": (write_jsonl, "pairs.jsonl", None),
    "jsonl conversational": (write_jsonl, "pairs.jsonl", conversational_pair),
    "jsonl implicit prompt": (write_jsonl, "pairs.jsonl", implicit_prompt_pair),
    "json sharegpt": (write_json_array, "pairs.json", sharegpt_pair),
    "parquet standard": (write_parquet, "pairs.parquet", None),
    "parquet conversational": (write_parquet, "pairs.parquet", conversational_pair),
    "datasets.Dataset standard": (in_memory_dataset, "", None),
    "datasets.Dataset conversational": (in_memory_dataset, "", conversational_pair),
    "save_to_disk folder": (saved_dataset, "saved", None),
}
SFT_LAYOUTS = {
    "jsonl standard": (write_jsonl, "sft.jsonl", None),
    "jsonl messages": (write_jsonl, "sft.jsonl", messages_sft),
    "jsonl conversational prompt/completion": (write_jsonl, "sft.jsonl", conversational_sft),
    "json sharegpt": (write_json_array, "sft.json", sharegpt_sft),
    "parquet messages": (write_parquet, "sft.parquet", messages_sft),
    "datasets.Dataset standard": (in_memory_dataset, "", None),
    "datasets.Dataset messages": (in_memory_dataset, "", messages_sft),
}


@pytest.fixture(scope="module")
def smollm2():
    from jirl.models.gguf import smollm2_gguf_path
    from jirl.models.tokenizers import tokenizer_from_gguf

    return tokenizer_from_gguf(smollm2_gguf_path())  # the tokenizer only, no weights (~3-6 s)


@pytest.fixture(params=["byte_chatml", pytest.param("smollm2", marks=pytest.mark.slow)])
def chat_tokenizer(request):
    """A real chat-templated tokenizer: ChatML over byte-level BPE (fast) or SmolLM2-135M-Instruct's."""
    if request.param == "smollm2":
        return request.getfixturevalue("smollm2")
    return byte_chat_tokenizer()


@pytest.mark.parametrize(("kind", "rows", "layouts"), [
    ("preference", TEXT_PAIRS, PREFERENCE_LAYOUTS),
    ("sft", TEXT_SFT, SFT_LAYOUTS),
], ids=["preference", "sft"])
def test_every_layout_gives_identical_records(kind, rows, layouts, chat_tokenizer, tmp_path):
    """THE acceptance test of issue 23: the same data in every layout, each built on its own
    (a fresh data_dir), gives the very same records in both splits, and the same identity."""
    pytest.importorskip("datasets")
    pytest.importorskip("pyarrow")
    settings = ChatTokenization(max_len=96)
    built = {}
    for number, (name, (write, file_name, convert)) in enumerate(layouts.items()):
        folder = tmp_path / f"layout{number}"
        folder.mkdir()
        source = write(folder / file_name, [convert(row) if convert else row for row in rows])
        built[name] = prepare_text_dataset(kind, source, tokenizer=chat_tokenizer, tokenization=settings,
                                           data_dir=folder / "tfds", eval_fraction=0.3, seed=0)
        assert not built[name].report["reused"]
    reference_name, reference = next(iter(built.items()))
    assert len(reference.train) > 0 and len(reference.eval) > 0
    assert len(reference.train) + len(reference.eval) == len(rows)
    # The records are what chat_tokenize gives for the standard rows, so all layouts are checked
    # against an independent path too, not only against each other.
    expected = [TOKENIZE[kind](canonical_row(kind, row, "r"), chat_tokenizer, settings).example for row in rows]
    merged = all_examples(reference.train) + all_examples(reference.eval)
    assert sorted(map(example_bytes, merged)) == sorted(map(example_bytes, expected))
    for name, dataset in built.items():
        assert config_of(dataset) == config_of(reference), name
        for split in ("train", "eval"):
            mine, theirs = getattr(dataset, split), getattr(reference, split)
            assert len(mine) == len(theirs), f"{name} {split}"
            for index in range(len(theirs)):
                assert_same_example(mine[index], theirs[index], f"{name} vs {reference_name}, {split}[{index}]")
