import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from jirl.rewards.verifiable import exact_match_rewards, extract_final_answer, format_rewards, length_penalties, normalize_number

GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "test.jsonl.gz"


def test_number_normalisation_and_extraction():
    assert normalize_number("1,000.50") == normalize_number("1000.5") == "1000.5"
    assert normalize_number("$18") == "18" and normalize_number("-0.0") == "0" and normalize_number("abc") is None
    assert extract_final_answer("so 3 + 4 = 7\n#### 7") == "7"
    assert extract_final_answer("We get 12 apples, then 15. The answer is 15.") == "15"
    assert extract_final_answer("no digits here") is None


def test_the_real_gsm8k_references_score_one_against_themselves_and_zero_when_wrong():
    assert GSM8K.exists(), f"missing {GSM8K}: the shared GSM8K file is needed"
    rows = [json.loads(line) for line in gzip.open(GSM8K, "rt")]
    assert len(rows) == 1319
    references = [r["answer"] for r in rows]
    assert exact_match_rewards(references, references).sum() == 1319
    # A response that states the answer in prose (no ####) is still matched.
    prose = [f"After working it out, the result is {r['answer'].split('####')[-1].strip()}." for r in rows]
    assert exact_match_rewards(prose, references).mean() == 1.0
    wrong = [f"#### {int(extract_final_answer(r).split('.')[0]) + 1}" for r in references]
    assert exact_match_rewards(wrong, references).sum() == 0


def test_format_and_length_rewards():
    np.testing.assert_array_equal(format_rewards(["#### 5", "the answer is 5"]), [1.0, 0.0])
    np.testing.assert_allclose(length_penalties([10, 30], max_length=20, coefficient=2.0), [0.0, -1.0])
    with pytest.raises(ValueError, match="no numeric final answer"):
        exact_match_rewards(["1"], ["none"])
