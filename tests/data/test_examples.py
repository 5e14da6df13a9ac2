import numpy as np
import pytest

from jirl.data import DataError, JsonlRow, stack_examples, tokenize_pair, tokenize_rows
from jirl.mdp.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer("abc")  # a=1, b=2, c=3, EOS=0


def test_prompt_then_response_then_eos_left_aligned_and_padded():
    example = tokenize_pair(TOKENIZER, "ab", "ca", max_len=8)
    np.testing.assert_array_equal(example["tokens"], [1, 2, 3, 1, 0, 0, 0, 0])
    assert example["tokens"].dtype == np.int32
    assert example["prompt_len"] == 2 and example["response_len"] == 3  # "ca" + EOS
    assert example["prompt_len"].dtype == np.int32 and example["prompt_len"].shape == ()


def test_an_empty_response_is_just_eos_and_an_exact_fit_is_allowed():
    example = tokenize_pair(TOKENIZER, "abc", "", max_len=4)
    np.testing.assert_array_equal(example["tokens"], [1, 2, 3, 0])
    assert example["response_len"] == 1


def test_too_long_pairs_name_the_place_and_the_lengths():
    expected = r"t\.jsonl:5: prompt \(2 tokens\) \+ response \(3 tokens \+ EOS\) = 6 tokens exceed max_len 5"
    with pytest.raises(DataError, match=expected):
        tokenize_pair(TOKENIZER, "ab", "cab", max_len=5, where="t.jsonl:5")


def test_empty_prompts_and_unknown_characters_are_errors():
    with pytest.raises(DataError, match=r"x:1: the prompt is empty"):
        tokenize_pair(TOKENIZER, "", "a", max_len=8, where="x:1")
    with pytest.raises(DataError, match=r"x:2: the response does not tokenize: characters \['z'\]"):
        tokenize_pair(TOKENIZER, "a", "az", max_len=8, where="x:2")


def test_rows_report_their_source_line():
    rows = [JsonlRow(1, {"q": "a", "a": "b"}), JsonlRow(7, {"q": "abc", "a": "abc"})]
    with pytest.raises(DataError, match=r"^f\.jsonl:7: "):
        tokenize_rows(rows, TOKENIZER, max_len=6, prompt_field="q", response_field="a", source="f.jsonl")
    batch = stack_examples(tokenize_rows(rows, TOKENIZER, max_len=8, prompt_field="q", response_field="a"))
    assert batch["tokens"].shape == (2, 8) and batch["prompt_len"].tolist() == [1, 3]
