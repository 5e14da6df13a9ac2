import gzip
import json

import pytest

from jirl.data import DataError, read_jsonl


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_rows_keep_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    lines = ['{"prompt": "ab", "response": "c"}', "", "  ", '{"prompt": "b", "response": ""}']
    path = write_lines(tmp_path / "d.jsonl", lines)
    rows, report = read_jsonl(path)
    assert [row.line for row in rows] == [1, 4]
    assert rows[0]["prompt"] == "ab" and rows[1]["response"] == ""
    assert (report.num_rows, report.num_blank_lines) == (2, 2)
    assert "2 rows" in str(report)


def test_gzipped_files_read_like_plain_ones(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write(json.dumps({"question": "q", "answer": "a"}) + "\n")
    rows, report = read_jsonl(path, fields=("question", "answer"))
    assert rows[0].values == {"question": "q", "answer": "a"} and report.num_rows == 1


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nope\.jsonl"):
        read_jsonl(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("lines", [[], ["", "   "]])
def test_a_file_without_rows_is_an_error(tmp_path, lines):
    with pytest.raises(DataError, match=r"e\.jsonl: no rows"):
        read_jsonl(write_lines(tmp_path / "e.jsonl", lines))


def test_invalid_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['{"prompt": "a", "response": "b"}', "", '{"prompt": "a", "response": '])
    with pytest.raises(DataError, match=r"d\.jsonl:3: invalid JSON \("):
        read_jsonl(path)


def test_a_missing_field_names_file_line_field_and_the_keys_present(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['{"prompt": "a", "response": "b"}', '{"prompt": "a", "answer": "b"}'])
    expected = r"d\.jsonl:2: missing field 'response' \(row has keys \['answer', 'prompt'\]\)"
    with pytest.raises(DataError, match=expected):
        read_jsonl(path)


def test_a_non_string_field_and_a_non_object_row_are_errors(tmp_path):
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'response' must be a string, got int"):
        read_jsonl(write_lines(tmp_path / "d.jsonl", ['{"prompt": "a", "response": 3}']))
    with pytest.raises(DataError, match=r"l\.jsonl:1: expected a JSON object"):
        read_jsonl(write_lines(tmp_path / "l.jsonl", ['["a", "b"]']))


def test_a_data_error_is_a_jirl_error_and_a_value_error(tmp_path):
    from jirl.config import JirlError

    with pytest.raises(JirlError):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError):
        read_jsonl(tmp_path / "nope.jsonl")
