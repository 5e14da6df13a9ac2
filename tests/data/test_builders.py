import gzip
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jirl.data import DataError
from jirl.data.builders import JsonlSft, TaskDemonstrations, data_source, prepare
from jirl.mdp.demonstrations import from_optimum
from jirl.mdp.tasks import TaskConfig, build_task

TASK_ARGS = ("num_digits=2", "num_symbols=3")
DEMO_PARAMS = dict(task="sort", task_args=TASK_ARGS, beta=0.5, num_train=24, num_test=8, seed=3)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def demo_builder(demo_dir):
    return prepare(TaskDemonstrations, demo_dir, **DEMO_PARAMS)


def dataset_files(builder) -> list[Path]:
    return sorted(Path(builder.data_path).iterdir())


def read_all(builder, split):
    source = data_source(builder, split)
    return [source[i] for i in range(len(source))]


def test_demonstrations_are_written_as_array_record_files(demo_builder, demo_dir):
    files = [path.name for path in dataset_files(demo_builder)]
    assert any(".array_record" in name and "-train." in name for name in files), files
    assert any(".array_record" in name and "-test." in name for name in files), files
    assert not any("tfrecord" in name for name in files), files
    assert demo_dir in Path(demo_builder.data_path).parents


def test_reading_back_gives_exactly_the_generated_demonstrations(demo_builder):
    task = build_task(TaskConfig("sort", TASK_ARGS))
    train_key, test_key = jax.random.split(jax.random.key(3))
    for split, key, num in [("train", train_key, 24), ("test", test_key, 8)]:
        expected = from_optimum(task, key, num, 0.5)
        examples = read_all(demo_builder, split)
        assert len(examples) == num
        np.testing.assert_array_equal(np.stack([e["tokens"] for e in examples]), np.asarray(expected.tokens))
        np.testing.assert_array_equal([e["prompt_len"] for e in examples], np.asarray(expected.prompt_lens))
        np.testing.assert_array_equal([e["response_len"] for e in examples], np.asarray(expected.response_lens))
        np.testing.assert_array_equal(np.stack([e["rewards"] for e in examples]), np.asarray(expected.rewards))
    example = examples[0]
    assert example["tokens"].dtype == np.int32 and example["prompt_len"].dtype == np.int32
    assert example["prompt_len"].shape == () and example["rewards"].dtype == np.float32


def test_a_second_prepare_reuses_the_files(demo_builder, demo_dir, monkeypatch):
    before = {path.name: path.stat().st_mtime_ns for path in dataset_files(demo_builder)}

    def must_not_generate(*args, **kwargs):
        raise AssertionError("prepare regenerated an existing dataset")

    monkeypatch.setattr(TaskDemonstrations, "_generate_examples", must_not_generate)
    # Default task parameters spelled out (or reordered) name the same dataset.
    again = prepare(TaskDemonstrations, demo_dir, **{**DEMO_PARAMS, "task_args": tuple(reversed(TASK_ARGS))})
    assert again.data_path == demo_builder.data_path
    assert {path.name: path.stat().st_mtime_ns for path in dataset_files(again)} == before
    for split in ("train", "test"):
        for a, b in zip(read_all(again, split), read_all(demo_builder, split), strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_different_parameters_land_in_different_directories(demo_builder, demo_dir):
    other = prepare(TaskDemonstrations, demo_dir, **{**DEMO_PARAMS, "seed": 4, "num_test": 0})
    assert other.data_path != demo_builder.data_path
    assert sorted(other.info.splits.keys()) == ["train"]
    configs = {TaskDemonstrations.make_config(**{**DEMO_PARAMS, key: value}).name for key, value in
               [("beta", 0.25), ("num_train", 25), ("task_args", ("num_digits=3",)), ("seed", 3)]}
    assert len(configs) == 4


def test_bad_parameters_and_splits_are_data_errors(demo_builder, tmp_path):
    with pytest.raises(DataError, match=r"no parameter\(s\) \['betta'\]"):
        prepare(TaskDemonstrations, tmp_path, task="sort", betta=1.0)
    with pytest.raises(DataError, match="unknown task .sorted.. Did you mean .sort."):
        prepare(TaskDemonstrations, tmp_path, task="sorted")
    with pytest.raises(DataError, match="beta must be > 0"):
        prepare(TaskDemonstrations, tmp_path, task="sort", beta=0.0)
    with pytest.raises(DataError, match=r"no split 'validation'; its splits are \['test', 'train'\]"):
        data_source(demo_builder, "validation")


def write_jsonl(path, rows):
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def test_jsonl_sft_reads_train_and_test_from_the_manual_dir(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_jsonl(manual / "train.jsonl", [{"prompt": "ab", "response": "ca"}, {"prompt": "c", "response": ""}])
    write_jsonl(manual / "test.jsonl.gz", [{"prompt": "b a", "response": "b"}])
    builder = prepare(JsonlSft, tmp_path / "tfds", manual_dir=manual, alphabet="abc ", max_len=6)
    train, test = read_all(builder, "train"), read_all(builder, "test")
    np.testing.assert_array_equal(train[0]["tokens"], [1, 2, 3, 1, 0, 0])
    np.testing.assert_array_equal(train[1]["tokens"], [3, 0, 0, 0, 0, 0])
    assert [e["prompt_len"] for e in train] == [2, 1] and [e["response_len"] for e in train] == [3, 1]
    np.testing.assert_array_equal(test[0]["tokens"], [2, 4, 1, 2, 0, 0])
    assert any(".array_record" in path.name for path in dataset_files(builder))

    # Editing the files gives a new dataset directory, not the stale one.
    write_jsonl(manual / "train.jsonl", [{"prompt": "a", "response": "b"}])
    edited = prepare(JsonlSft, tmp_path / "tfds", manual_dir=manual, alphabet="abc ", max_len=6)
    assert edited.data_path != builder.data_path and len(data_source(edited, "train")) == 1


def test_jsonl_sft_errors_name_the_expected_file_and_the_row(tmp_path):
    with pytest.raises(DataError, match=r"expects .*downloads/manual/train\.jsonl .*not there"):
        prepare(JsonlSft, tmp_path, alphabet="ab", max_len=8)
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    write_jsonl(manual / "train.jsonl", [{"prompt": "ab", "response": "b"}, {"prompt": "a", "response": "bbbbbbbb"}])
    with pytest.raises(DataError, match=r"train\.jsonl:2: prompt \(1 tokens\) \+ response \(8 tokens \+ EOS\)"):
        prepare(JsonlSft, tmp_path, alphabet="ab", max_len=8)
    with pytest.raises(DataError, match="needs alphabet"):
        prepare(JsonlSft, tmp_path, max_len=8)
