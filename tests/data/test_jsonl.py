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


def test_a_byte_order_mark_at_the_start_is_accepted(tmp_path):
    text = '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n'
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    rows, _ = read_jsonl(path)
    assert [row.values for row in rows] == [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]
    gz = tmp_path / "bom.jsonl.gz"
    gz.write_bytes(gzip.compress(b"\xef\xbb\xbf" + text.encode("utf-8")))
    assert [row.values for row in read_jsonl(gz)[0]] == [row.values for row in rows]


def test_non_utf8_bytes_are_named_by_line_column_and_byte(tmp_path):
    good = b'{"prompt": "a", "response": "b"}\n'
    path = tmp_path / "latin.jsonl"
    path.write_bytes(good + b"\n" + good + b'{"prompt": "caf\xe9", "response": "z"}\n' + good)  # Latin-1 on line 4
    with pytest.raises(DataError, match=r"latin\.jsonl:4: not UTF-8 text: byte 0xe9 at column 16 \(byte 16 of the line\)"):
        read_jsonl(path)
    # Columns count characters and bytes count bytes: "é" is two bytes before the bad one.
    path.write_bytes(b'{"prompt": "\xc3\xa9\xff"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:1: not UTF-8 text: byte 0xff at column 14 \(byte 15 of the line\)"):
        read_jsonl(path)
    gz = tmp_path / "latin.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"prompt": "a", "response": "b"}\n{"prompt": "\x80"}\n'))
    with pytest.raises(DataError, match=r"latin\.jsonl\.gz:2: not UTF-8 text: byte 0x80 at column 13 \(byte 13"):
        read_jsonl(gz)
