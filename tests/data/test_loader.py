import json

import numpy as np
import pytest

from jirl.data import DataError, batch_iterator, pad_to_bucket
from jirl.data.loader import batch_order, bucket_width

NUM_EXAMPLES = 20
MAX_LEN = 8


def make_source(num=NUM_EXAMPLES):
    """In-memory examples; example i has prompt [i+1] and response [i+1, EOS]."""
    source = []
    for i in range(num):
        tokens = np.zeros(MAX_LEN, np.int32)
        tokens[:2] = i + 1
        source.append({"tokens": tokens, "prompt_len": np.int32(1), "response_len": np.int32(2)})
    return source


def ids(batch):
    return (batch["tokens"][:, 0] - 1).tolist()


def take_ids(iterator, num_batches):
    return [i for _ in range(num_batches) for i in ids(next(iterator))]


def test_batches_are_dicts_of_stacked_arrays():
    batch = next(batch_iterator(make_source(), 4, seed=0))
    assert batch["tokens"].shape == (4, MAX_LEN) and batch["tokens"].dtype == np.int32
    assert batch["prompt_len"].shape == (4,) and batch["prompt_len"].dtype == np.int32


def test_the_order_is_a_function_of_the_seed():
    first = take_ids(batch_iterator(make_source(), 5, seed=7), 8)
    assert first == take_ids(batch_iterator(make_source(), 5, seed=7), 8)
    assert first != take_ids(batch_iterator(make_source(), 5, seed=8), 8)
    assert take_ids(batch_iterator(make_source(), 5, shuffle=False), 4) == list(range(NUM_EXAMPLES))


def test_every_example_once_per_epoch_in_a_new_order_each_epoch():
    stream = take_ids(batch_iterator(make_source(), 4, seed=1), 3 * NUM_EXAMPLES // 4)
    epochs = [stream[k * NUM_EXAMPLES : (k + 1) * NUM_EXAMPLES] for k in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(NUM_EXAMPLES))
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != list(range(NUM_EXAMPLES))


def test_a_finite_run_drops_only_the_last_partial_batch():
    batches = list(batch_iterator(make_source(), 6, seed=2, num_epochs=2))
    assert len(batches) == (2 * NUM_EXAMPLES) // 6 and all(len(ids(b)) == 6 for b in batches)
    seen = [i for b in batches for i in ids(b)]
    assert sorted(seen[:NUM_EXAMPLES]) == list(range(NUM_EXAMPLES))


def test_a_restored_iterator_continues_exactly_where_the_saved_one_was():
    original = batch_iterator(make_source(), 3, seed=5)
    take_ids(original, 9)  # crosses an epoch boundary (20 examples, 27 taken)
    state = json.loads(json.dumps(original.get_state()))
    expected = [next(original) for _ in range(10)]
    restored = batch_iterator(make_source(), 3, seed=5)
    restored.set_state(state)
    for want, got in zip(expected, (next(restored) for _ in range(10)), strict=True):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_restoring_into_other_settings_or_from_junk_is_an_error():
    state = batch_iterator(make_source(), 3, seed=5).get_state()
    with pytest.raises(DataError, match=r"other settings \(seed: saved 5, now 6\)"):
        batch_iterator(make_source(), 3, seed=6).set_state(state)
    with pytest.raises(DataError, match=r"num_examples: saved 20, now 21"):
        batch_iterator(make_source(21), 3, seed=5).set_state(state)
    with pytest.raises(DataError, match="not a data-loader state"):
        batch_iterator(make_source(), 3, seed=5).set_state({"next_index": 3})


def test_bad_loader_settings_are_errors():
    with pytest.raises(DataError, match="source is empty"):
        batch_iterator([], 2)
    with pytest.raises(DataError, match="make no full batch"):
        batch_iterator(make_source(), 64, num_epochs=1)
    with pytest.raises(DataError, match="batch_size must be >= 1"):
        batch_iterator(make_source(), 0)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume():
    with batch_iterator(make_source(), 4, seed=3) as local:
        expected = take_ids(local, 12)
    with batch_iterator(make_source(), 4, seed=3, worker_count=2) as workers:
        assert take_ids(workers, 6) == expected[:24]
        state = json.loads(json.dumps(workers.get_state()))
    with batch_iterator(make_source(), 4, seed=3, worker_count=2) as resumed:
        resumed.set_state(state)
        assert take_ids(resumed, 6) == expected[24:]


def batch_with_lengths(lengths, width):
    tokens = np.zeros((len(lengths), width), np.int32)
    for row, length in enumerate(lengths):
        tokens[row, :length] = 7
    return {
        "tokens": tokens,
        "prompt_len": np.ones(len(lengths), np.int32),
        "response_len": np.asarray(lengths, np.int32) - 1,
    }


def test_pad_to_bucket_trims_and_pads_to_the_smallest_fitting_bucket():
    trimmed = pad_to_bucket(batch_with_lengths([5, 30, 12], width=100))
    assert trimmed["tokens"].shape == (3, 32)
    assert trimmed["tokens"][1, :30].tolist() == [7] * 30 and not trimmed["tokens"][:, 30:].any()
    padded = pad_to_bucket(batch_with_lengths([40, 3], width=48))
    assert padded["tokens"].shape == (2, 64) and padded["tokens"][0, :40].tolist() == [7] * 40
    assert pad_to_bucket(batch_with_lengths([33], width=40), buckets=(16, 48))["tokens"].shape == (1, 48)
    assert pad_to_bucket(batch_with_lengths([32], width=40))["tokens"].shape == (1, 32)
    assert padded["prompt_len"] is not None and bucket_width(65) == 128


def test_pad_to_bucket_rejects_too_long_and_misaligned_batches():
    with pytest.raises(DataError, match="exceeds the largest bucket 16"):
        pad_to_bucket(batch_with_lengths([20], width=24), buckets=(8, 16))
    batch = batch_with_lengths([4], width=40)
    batch["tokens"][0, 35] = 3
    with pytest.raises(DataError, match="non-pad tokens beyond"):
        pad_to_bucket(batch)


def test_a_prepared_dataset_feeds_the_loader(tmp_path):
    from jirl.data.builders import JsonlSft, data_source, prepare

    manual = tmp_path / "manual"
    manual.mkdir()
    rows = [{"prompt": "a" * (1 + i % 3), "response": "b" * (i % 4)} for i in range(10)]
    (manual / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = data_source(prepare(JsonlSft, tmp_path, manual_dir=manual, alphabet="ab", max_len=40), "train")
    loader = batch_iterator(source, 5, seed=0)
    batch = pad_to_bucket(next(loader), buckets=(8, 16))
    assert batch["tokens"].shape == (5, 8) and batch["prompt_len"].dtype == np.int32
    state = loader.get_state()
    following = next(loader)
    restored = batch_iterator(source, 5, seed=0)
    restored.set_state(state)
    np.testing.assert_array_equal(next(restored)["tokens"], following["tokens"])


@pytest.mark.parametrize("shuffle", [True, False])
def test_batch_order_replays_the_loaders_batches_across_epochs(shuffle):
    """``batch_order`` gives the example indices of the loader's batches (7 batches of 6 over
    20 examples: three epoch boundaries), read here from the examples themselves."""
    batches = batch_iterator(make_source(), 6, seed=3, shuffle=shuffle)
    expected = [ids(next(batches)) for _ in range(7)]
    order = batch_order(NUM_EXAMPLES, 6, 7, seed=3, shuffle=shuffle)
    assert order.shape == (7, 6) and order.tolist() == expected
