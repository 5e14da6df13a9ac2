import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from jirl.data import DataError
from jirl.data.builders import data_source, prepare
from jirl.data.loader import batch_iterator
from jirl.data.preferences import (
    HH_ASSISTANT_MARKER,
    HHPreferences,
    JsonlPreferences,
    PreferencePair,
    assign_split,
    decode_pair,
    fit_preference,
    preference_report,
    read_hh_pairs,
    read_jsonl_pairs,
    split_hh_dialogue,
    tokenize_preference,
)
from jirl.mdp.tokenizer import ByteTokenizer, CharTokenizer

# The `shared` folder beside the repository root (tests/data/ -> tests/ -> repo -> its parent).
HH_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless"
HH_ROWS = 1843


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows (dicts, or raw strings written as they are) one per line; gzipped for ``.gz``."""
    text = "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read_all(builder, split):
    source = data_source(builder, split)
    return [source[i] for i in range(len(source))]


# --------------------------------------------------------------------------- split_hh_dialogue


def test_split_hh_dialogue_cuts_after_the_last_assistant_marker():
    dialogue = (
        "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?"
        "\n\nHuman: Name a colour.\n\nAssistant: Blue, like the sky."
    )
    prompt, response = split_hh_dialogue(dialogue)
    assert prompt == (
        "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Name a colour.\n\nAssistant:"
    )
    assert response == "Blue, like the sky."


def test_split_hh_dialogue_strips_one_leading_space_only():
    assert split_hh_dialogue("\n\nHuman: a\n\nAssistant:  two") == ("\n\nHuman: a\n\nAssistant:", " two")
    assert split_hh_dialogue("\n\nHuman: a\n\nAssistant:none") == ("\n\nHuman: a\n\nAssistant:", "none")
    assert split_hh_dialogue("\n\nHuman: a\n\nAssistant:") == ("\n\nHuman: a\n\nAssistant:", "")


def test_split_hh_dialogue_without_a_marker_is_an_error():
    with pytest.raises(DataError, match="no '\\\\n\\\\nAssistant:' marker"):
        split_hh_dialogue("\n\nHuman: anyone there?")
    with pytest.raises(DataError, match="marker"):  # "Assistant:" without the blank line is no turn
        split_hh_dialogue("Human: hi Assistant: hello")


# --------------------------------------------------------------------------- read_hh_pairs

GOOD_1 = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
GOOD_2 = {
    "chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: yes",
    "rejected": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: no",
}
IDENTICAL = {"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: x\n\nAssistant: y"}
PROMPTS_DIFFER = {"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: z\n\nAssistant: y"}
EMPTY_RESPONSE = {"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: x\n\nAssistant:  "}
NO_MARKER = {"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: x"}


@pytest.fixture
def messy_hh_file(tmp_path):
    rows = [GOOD_1, IDENTICAL, "", PROMPTS_DIFFER, EMPTY_RESPONSE, NO_MARKER, GOOD_2, IDENTICAL]
    return write_jsonl(tmp_path / "pairs.jsonl.gz", rows)


def test_read_hh_pairs_keeps_valid_pairs_and_counts_each_drop_with_its_line(messy_hh_file):
    pairs, report = read_hh_pairs(messy_hh_file)
    assert pairs == [
        PreferencePair("\n\nHuman: hi\n\nAssistant:", "hello", "go away", line=1),
        PreferencePair("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", "yes", "no", line=7),
    ]
    assert report == {
        "file": str(messy_hh_file),
        "rows": 7,  # the blank line 3 is no row
        "kept": 2,
        "dropped": {"identical": 2, "no_assistant_marker": 1, "prompt_mismatch": 1, "empty_response": 1},
        "dropped_lines": {
            "identical": [2, 8],
            "no_assistant_marker": [6],
            "prompt_mismatch": [4],
            "empty_response": [5],
        },
    }


def test_read_hh_pairs_lists_only_the_first_ten_dropped_lines(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [IDENTICAL] * 12)
    _, report = read_hh_pairs(path)
    assert report["dropped"]["identical"] == 12
    assert report["dropped_lines"]["identical"] == list(range(1, 11))


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"chosen": "x", "rejected": ', "pairs.jsonl:2: invalid JSON"),
        ('{"chosen": "\\n\\nHuman: x\\n\\nAssistant: y"}', "pairs.jsonl:2: missing field 'rejected'"),
        ('{"chosen": 3, "rejected": "x"}', "pairs.jsonl:2: field 'chosen' must be a string"),
    ],
)
def test_read_hh_pairs_fails_on_malformed_rows_naming_file_and_line(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD_1, bad_line, GOOD_2])
    with pytest.raises(DataError, match=message):
        read_hh_pairs(path)


# --------------------------------------------------------------------------- tokenize_preference

BYTES = ByteTokenizer()


def ids(text: str) -> list[int]:
    return BYTES.encode(text)


def padded(values: list[int], width: int) -> list[int]:
    return values + [0] * (width - len(values))


def test_tokenize_preference_lays_out_a_pair_that_fits():
    example = tokenize_preference(BYTES, "ab", "cd", "e", max_len=8, margin=1.5)
    np.testing.assert_array_equal(example["chosen"], padded(ids("abcd") + [0], 8))
    np.testing.assert_array_equal(example["rejected"], padded(ids("abe") + [0], 8))
    assert (example["prompt_len"], example["chosen_len"], example["rejected_len"]) == (2, 3, 2)
    assert example["margin"] == np.float32(1.5)
    assert example["chosen"].dtype == np.int32 and example["margin"].dtype == np.float32
    assert example["prompt_len"].dtype == np.int32 and example["chosen_len"].shape == ()


def test_tokenize_preference_keeps_the_end_of_a_long_prompt_for_both_responses():
    fitted = fit_preference(BYTES, "hello", "xy", "z", max_len=6)
    example = fitted.example
    np.testing.assert_array_equal(example["chosen"], ids("lloxy") + [0])
    np.testing.assert_array_equal(example["rejected"], ids("lloz") + [0, 0])
    assert (example["prompt_len"], example["chosen_len"], example["rejected_len"]) == (3, 3, 2)
    assert fitted.prompt_truncated and not fitted.response_truncated


def test_tokenize_preference_cuts_a_too_long_response_after_keeping_one_prompt_token():
    fitted = fit_preference(BYTES, "hello", "abcdefgh", "z", max_len=6)
    example = fitted.example
    np.testing.assert_array_equal(example["chosen"], ids("oabcde"))  # no EOS: the response was cut
    np.testing.assert_array_equal(example["rejected"], ids("oz") + [0, 0, 0, 0])
    assert (example["prompt_len"], example["chosen_len"], example["rejected_len"]) == (1, 5, 2)
    assert fitted.prompt_truncated and fitted.response_truncated
    assert decode_pair(BYTES, example) == {"prompt": "o", "chosen": "abcde", "rejected": "z"}


def test_tokenize_preference_exactly_at_max_len_is_not_truncated():
    fitted = fit_preference(BYTES, "ab", "cde", "f", max_len=6)
    np.testing.assert_array_equal(fitted.example["chosen"], ids("abcde") + [0])
    assert not fitted.prompt_truncated and not fitted.response_truncated


def test_tokenize_preference_rejects_an_empty_prompt_and_a_tiny_max_len():
    with pytest.raises(DataError, match="train.jsonl:4: the prompt is empty"):
        tokenize_preference(BYTES, "", "a", "b", max_len=8, where="train.jsonl:4")
    with pytest.raises(DataError, match="max_len must be at least 2"):
        tokenize_preference(BYTES, "p", "a", "b", max_len=1)
    with pytest.raises(DataError, match="rows.jsonl:2: the chosen response does not tokenize"):
        tokenize_preference(CharTokenizer("ab"), "a", "c", "b", max_len=8, where="rows.jsonl:2")


# --------------------------------------------------------------------------- assign_split


def test_assign_split_is_a_deterministic_seeded_function_of_the_prompt():
    prompts = [f"prompt {i}" for i in range(2000)]
    splits = [assign_split(p, 0.2, seed=0) for p in prompts]
    assert splits == [assign_split(p, 0.2, seed=0) for p in prompts]
    assert 0.17 < splits.count("test") / len(prompts) < 0.23
    assert splits != [assign_split(p, 0.2, seed=1) for p in prompts]
    assert {assign_split(p, 0.0, seed=0) for p in prompts} == {"train"}


# --------------------------------------------------------------------------- the real HH-RLHF file


@pytest.fixture(scope="module")
def hh_dir():
    if not (HH_DIR / "pairs.jsonl.gz").is_file():
        pytest.fail(
            f"the real HH-RLHF file {HH_DIR / 'pairs.jsonl.gz'} is missing; it ships in the 'shared' folder "
            "beside the repository root (see ../shared/data/README.md); restore it there"
        )
    return HH_DIR


@pytest.fixture(scope="module")
def hh_builder(hh_dir, tmp_path_factory):
    return prepare(HHPreferences, tmp_path_factory.mktemp("tfds"), manual_dir=hh_dir)


def test_hh_report_accounts_for_every_row(hh_builder):
    report = preference_report(hh_builder)
    assert report["rows"] == HH_ROWS
    assert report["kept"] + sum(report["dropped"].values()) == HH_ROWS
    file_report = report["files"]["pairs.jsonl.gz"]
    assert file_report["rows"] == HH_ROWS and file_report["kept"] == report["kept"]
    for reason, count in file_report["dropped"].items():
        assert len(file_report["dropped_lines"][reason]) == min(count, 10)
    splits = report["splits"]
    assert splits["train"]["pairs"] + splits["test"]["pairs"] == report["kept"]
    assert report["truncated"] == splits["train"]["truncated"] + splits["test"]["truncated"]
    assert 0 < report["truncated"] <= report["kept"] and report["max_len"] == 512


def test_hh_splits_are_about_80_20_and_match_the_report(hh_builder):
    report = preference_report(hh_builder)
    num_train, num_test = len(data_source(hh_builder, "train")), len(data_source(hh_builder, "test"))
    assert (num_train, num_test) == (report["splits"]["train"]["pairs"], report["splits"]["test"]["pairs"])
    assert 0.15 < num_test / (num_train + num_test) < 0.25


def test_hh_examples_round_trip_to_the_file_text(hh_builder, hh_dir):
    pairs, _ = read_hh_pairs(hh_dir / "pairs.jsonl.gz")
    num_truncated = 0
    for split in ("train", "test"):
        expected = [pair for pair in pairs if assign_split(pair.prompt, 0.2, seed=0) == split]
        examples = read_all(hh_builder, split)
        assert len(examples) == len(expected)
        for pair, example in zip(expected, examples, strict=True):
            p = int(example["prompt_len"])
            assert p >= 1
            np.testing.assert_array_equal(example["chosen"][:p], example["rejected"][:p])
            assert example["chosen"][:p].tolist() == ids(pair.prompt)[-p:]  # the end of the prompt
            if p >= len(HH_ASSISTANT_MARKER):
                assert BYTES.decode(example["chosen"][:p]).endswith("Assistant:")
            for name in ("chosen", "rejected"):
                response = example[name][p : p + int(example[f"{name}_len"])].tolist()
                full = ids(getattr(pair, name)) + [0]
                assert response == full[: len(response)]
                assert not example[name][p + len(response) :].any()  # padding after the response
            num_truncated += any(
                int(example[f"{name}_len"]) < len(ids(getattr(pair, name))) + 1 for name in ("chosen", "rejected")
            )
    assert num_truncated == preference_report(hh_builder)["truncated"]


def test_hh_a_second_prepare_gives_exactly_the_same_split(hh_builder, hh_dir, tmp_path):
    again = prepare(HHPreferences, tmp_path, manual_dir=hh_dir)
    assert Path(again.data_path) != Path(hh_builder.data_path)  # built afresh, not reused
    for split in ("train", "test"):
        for a, b in zip(read_all(again, split), read_all(hh_builder, split), strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    assert preference_report(again) == preference_report(hh_builder)


def test_hh_report_is_read_back_from_disk(hh_builder):
    reopened = HHPreferences(
        config=hh_builder.builder_config, data_dir=hh_builder.data_dir_root, file_format="array_record"
    )
    assert preference_report(reopened) == preference_report(hh_builder)


def test_preference_report_of_an_unprepared_dataset_says_to_prepare_it(hh_builder, tmp_path):
    unprepared = HHPreferences(config=hh_builder.builder_config, data_dir=tmp_path, file_format="array_record")
    with pytest.raises(DataError, match="has no preference report .*prepare it first"):
        preference_report(unprepared)


def test_hh_other_seed_gives_another_split(hh_dir, tmp_path):
    other = prepare(HHPreferences, tmp_path, manual_dir=hh_dir, seed=1, max_len=64, test_fraction=0.5)
    report = preference_report(other)
    assert report["max_len"] == 64 and 0.4 < report["splits"]["test"]["pairs"] / report["kept"] < 0.6
    assert data_source(other, "train")[0]["chosen"].shape == (64,)


def test_hh_batches_through_the_loader(hh_builder):
    with batch_iterator(data_source(hh_builder, "train"), 8, seed=0) as batches:
        batch = next(batches)
    assert batch["chosen"].shape == batch["rejected"].shape == (8, 512)
    assert batch["prompt_len"].shape == (8,) and batch["margin"].dtype == np.float32
    assert (batch["prompt_len"] + batch["chosen_len"] <= 512).all()


def test_hh_builder_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="expects .*pairs.jsonl.gz .*pass manual_dir"):
        prepare(HHPreferences, tmp_path, manual_dir=tmp_path / "nowhere")
    write_jsonl(tmp_path / "pairs.jsonl", [GOOD_1])
    with pytest.raises(DataError, match="unknown tokenizer 'char'; choose one of \\['byte'\\]"):
        prepare(HHPreferences, tmp_path, manual_dir=tmp_path, tokenizer="char")
    with pytest.raises(DataError, match="test_fraction must be in \\[0, 1\\)"):
        prepare(HHPreferences, tmp_path, manual_dir=tmp_path, test_fraction=1.0)
    with pytest.raises(DataError, match="has no parameter\\(s\\) \\['alphabet'\\]"):
        prepare(HHPreferences, tmp_path, manual_dir=tmp_path, alphabet="ab")


# --------------------------------------------------------------------------- JsonlPreferences

ALPHABET = "abcdefgh? "


@pytest.fixture
def jsonl_dir(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_jsonl(
        manual / "train.jsonl",
        [
            {"prompt": "ab?", "chosen": "cd", "rejected": "e", "margin": 2},
            {"prompt": "ab?", "chosen": "same", "rejected": "same"},
            {"prompt": "h?", "chosen": "abcdefgh", "rejected": "", "extra": 1},
            {"prompt": "fa?", "chosen": "g", "rejected": "h ha"},
        ],
    )
    write_jsonl(manual / "test.jsonl.gz", [{"prompt": "b?", "chosen": "a", "rejected": "c"}])
    return manual


def test_read_jsonl_pairs_counts_identical_and_empty_rows(jsonl_dir):
    pairs, report = read_jsonl_pairs(jsonl_dir / "train.jsonl")
    assert pairs == [PreferencePair("ab?", "cd", "e", 1, 2.0), PreferencePair("fa?", "g", "h ha", 4, 0.0)]
    assert report["rows"] == 4 and report["kept"] == 2
    assert report["dropped"] == {"identical": 1, "empty_prompt": 0, "empty_response": 1}
    assert report["dropped_lines"] == {"identical": [2], "empty_prompt": [], "empty_response": [3]}


def test_jsonl_preferences_end_to_end(jsonl_dir, tmp_path):
    builder = prepare(JsonlPreferences, tmp_path / "tfds", manual_dir=jsonl_dir, tokenizer="char", alphabet=ALPHABET)
    chars = CharTokenizer(ALPHABET)
    train = read_all(builder, "train")
    assert [decode_pair(chars, e) for e in train] == [
        {"prompt": "ab?", "chosen": "cd", "rejected": "e"},
        {"prompt": "fa?", "chosen": "g", "rejected": "h ha"},
    ]
    first = train[0]
    np.testing.assert_array_equal(first["chosen"][:6], chars.encode("ab?cd") + [0])
    assert first["chosen"].shape == (512,) and first["margin"] == 2.0 and train[1]["margin"] == 0.0
    assert (first["prompt_len"], first["chosen_len"], first["rejected_len"]) == (3, 3, 2)
    test = read_all(builder, "test")
    assert [decode_pair(chars, e) for e in test] == [{"prompt": "b?", "chosen": "a", "rejected": "c"}]
    report = preference_report(builder)
    assert (report["rows"], report["kept"], report["truncated"]) == (5, 3, 0)
    assert report["dropped"] == {"identical": 1, "empty_prompt": 0, "empty_response": 1}
    assert report["files"]["train.jsonl"]["dropped_lines"]["identical"] == [2]
    assert report["splits"] == {
        "train": {"pairs": 2, "truncated": 0, "prompt_truncated": 0, "long_prompts": 0},
        "test": {"pairs": 1, "truncated": 0, "prompt_truncated": 0, "long_prompts": 0},
    }
    assert report["duplicates"] == {"count": 0, "first": None, "first_repeats": None}
    assert report["long_prompts"] == {"count": 0, "first": None}
    with batch_iterator(data_source(builder, "train"), 2, seed=3, num_epochs=1) as batches:
        (batch,) = list(batches)
    assert sorted(batch["margin"].tolist()) == [0.0, 2.0] and batch["chosen"].dtype == np.int32


def test_jsonl_preferences_byte_tokenizer_truncates_and_reports(jsonl_dir, tmp_path):
    builder = prepare(JsonlPreferences, tmp_path / "tfds", manual_dir=jsonl_dir, max_len=5)
    report = preference_report(builder)
    # Row 4: "fa?" + "h ha" + EOS is 8 > 5 tokens: the prompt keeps "?", the response loses its EOS.
    assert report["tokenizer"] == "byte" and report["splits"]["train"]["truncated"] == 1
    assert report["splits"]["train"]["prompt_truncated"] == 2  # "ab?" also keeps only "b?"
    second = read_all(builder, "train")[1]
    assert decode_pair(BYTES, second) == {"prompt": "?", "chosen": "g", "rejected": "h ha"}
    np.testing.assert_array_equal(second["rejected"], ids("?h ha"))
    assert (second["prompt_len"], second["chosen_len"], second["rejected_len"]) == (1, 2, 4)


def test_jsonl_preferences_report_duplicates_and_long_prompts_with_their_first_line(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    pair = {"prompt": "ab", "chosen": "c", "rejected": "d"}
    write_jsonl(
        manual / "train.jsonl",
        [
            {"prompt": "a", "chosen": "b", "rejected": "c"},
            pair,
            {"prompt": "abcdefgh", "chosen": "a", "rejected": "b"},  # 8 prompt tokens >= max_len 6
            {"prompt": "aa", "chosen": "b", "rejected": "b"},  # dropped (identical), so not a duplicate
            {**pair, "margin": 1.5},  # the same texts: a duplicate of line 2
            {"prompt": "abcdef", "chosen": "a", "rejected": "b"},  # 6 tokens: fills max_len too
            pair,
        ],
    )
    write_jsonl(manual / "test.jsonl", [{"prompt": "b", "chosen": "a", "rejected": "c"}, pair])  # a train pair again
    builder = prepare(JsonlPreferences, tmp_path / "tfds", manual_dir=manual, max_len=6)
    report = preference_report(builder)
    train, test = manual / "train.jsonl", manual / "test.jsonl"
    assert report["duplicates"] == {"count": 3, "first": f"{train}:5", "first_repeats": f"{train}:2"}
    assert report["long_prompts"] == {"count": 2, "first": f"{train}:3"}
    assert report["splits"]["train"]["long_prompts"] == 2 and report["splits"]["test"]["long_prompts"] == 0
    assert report["kept"] == 8 and len(read_all(builder, "train")) == 6  # duplicates are kept
    # Only the test file repeats: the first repeat is found there, naming the train line it repeats.
    write_jsonl(manual / "train.jsonl", [pair, {"prompt": "abcdefgh", "chosen": "a", "rejected": "b"}])
    report = preference_report(prepare(JsonlPreferences, tmp_path / "tfds", manual_dir=manual, max_len=6))
    assert report["duplicates"] == {"count": 1, "first": f"{test}:2", "first_repeats": f"{train}:1"}
    assert report["long_prompts"] == {"count": 1, "first": f"{train}:2"}


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"prompt": "a", "chosen": "b"}, "train.jsonl:2: missing field 'rejected'"),
        ({"prompt": "a", "chosen": "b", "rejected": "c", "margin": "high"}, "train.jsonl:2: field 'margin' must be"),
        ({"prompt": "a", "chosen": "b", "rejected": "c", "margin": True}, "train.jsonl:2: field 'margin' must be"),
        ({"prompt": "a", "chosen": "b", "rejected": "zz"}, "train.jsonl:2: the rejected response does not tokenize"),
    ],
)
def test_jsonl_preferences_errors_name_file_and_line(tmp_path, bad_row, message):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_jsonl(manual / "train.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, bad_row])
    with pytest.raises(DataError, match=message):
        prepare(JsonlPreferences, tmp_path / "tfds", manual_dir=manual, tokenizer="char", alphabet="abc")


def test_jsonl_preferences_config_errors(jsonl_dir, tmp_path):
    with pytest.raises(DataError, match="expects .*train.jsonl .*not there"):
        prepare(JsonlPreferences, tmp_path, manual_dir=tmp_path / "empty")
    with pytest.raises(DataError, match="tokenizer='char' needs alphabet"):
        prepare(JsonlPreferences, tmp_path, manual_dir=jsonl_dir, tokenizer="char")
    with pytest.raises(DataError, match="tokenizer='byte' takes no alphabet"):
        prepare(JsonlPreferences, tmp_path, manual_dir=jsonl_dir, alphabet="ab")
    with pytest.raises(DataError, match="max_len must be an integer >= 2"):
        prepare(JsonlPreferences, tmp_path, manual_dir=jsonl_dir, max_len=1)


def test_jsonl_preferences_with_every_row_dropped_says_why(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_jsonl(manual / "train.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "b"}])
    with pytest.raises(DataError, match="every row .* was dropped \\(identical: 1\\)"):
        prepare(JsonlPreferences, tmp_path / "tfds", manual_dir=manual)


def test_edited_files_get_a_new_dataset_directory(jsonl_dir, tmp_path):
    first = prepare(JsonlPreferences, tmp_path / "tfds", manual_dir=jsonl_dir)
    write_jsonl(jsonl_dir / "train.jsonl", [{"prompt": "x", "chosen": "y", "rejected": "z"}])
    second = prepare(JsonlPreferences, tmp_path / "tfds", manual_dir=jsonl_dir)
    assert second.data_path != first.data_path and len(data_source(second, "train")) == 1


def test_last_human_turn_of_a_multi_turn_prompt():
    from jirl.data.preferences import hh_last_human_turn, split_hh_dialogue

    dialogue = "\n\nHuman: first question\n\nAssistant: first answer\n\nHuman:  second question \n\nAssistant: reply"
    prompt, response = split_hh_dialogue(dialogue)
    assert hh_last_human_turn(prompt) == "second question" and response == "reply"
    assert hh_last_human_turn("\n\nHuman: only\n\nAssistant:") == "only"
    assert hh_last_human_turn("no speaker labels\n\nAssistant:") == "no speaker labels"
