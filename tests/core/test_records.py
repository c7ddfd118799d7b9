"""Tabular readers: rows with their line numbers, and errors that name file and line."""
import gzip

import pytest

from mlm.errors import DataError
from mlm.core.records import decoded_lines, iter_records, require_columns


def test_formats_and_line_numbers(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",1\n\nbye,0\n')
    assert list(iter_records(str(tmp_path / "a.csv"))) == [(2, {"text": "hello, world", "label": "1"}), (4, {"text": "bye", "label": "0"})]
    (tmp_path / "a.tsv").write_text('sentence\tlabel\nhe said "hi\t1\n')
    assert list(iter_records(str(tmp_path / "a.tsv"))) == [(2, {"sentence": 'he said "hi', "label": "1"})]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write('{"text": "x"}\n\n{"text": "y"}\n')
    assert [line for line, _ in iter_records(str(tmp_path / "a.jsonl.gz"))] == [1, 3]


def test_errors_name_file_and_line(tmp_path):
    bad_json = tmp_path / "b.jsonl"
    bad_json.write_text('{"text": "x"}\n{"text": \n')
    with pytest.raises(DataError, match=r"b.jsonl:2: invalid JSON"):
        list(iter_records(str(bad_json)))
    wrong_delim = tmp_path / "c.csv"
    wrong_delim.write_text("text,label\na;b;c,1,2\n")
    with pytest.raises(DataError, match=r"c.csv:2: expected 2 fields"):
        list(iter_records(str(wrong_delim)))
    bad_bytes = tmp_path / "d.csv"
    bad_bytes.write_bytes(b"text,label\n" + b"ok,1\n" * 5000 + b"caf\xe9,1\n")
    with pytest.raises(DataError, match=r"d.csv:5002: not valid UTF-8"):
        list(iter_records(str(bad_bytes)))
    with pytest.raises(DataError, match="file not found"):
        list(iter_records(str(tmp_path / "missing.csv")))
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unknown file type"):
        list(iter_records(str(tmp_path / "x.xml")))
    with pytest.raises(DataError, match=r"f.csv:7: missing column 'label' \(columns: text\)"):
        require_columns("f.csv", 7, {"text": "a"}, ["text", "label"])


def test_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    # Excel's "CSV UTF-8" starts with a BOM: the first column must still be found by its name
    (tmp_path / "bom.csv").write_bytes("\ufefflabel,text\r\n1,café\r\n".encode("utf-8"))
    assert list(iter_records(str(tmp_path / "bom.csv"))) == [(2, {"label": "1", "text": "café"})]
    (tmp_path / "bom.jsonl").write_bytes('\ufeff{"text": "x"}\n'.encode("utf-8"))
    assert list(iter_records(str(tmp_path / "bom.jsonl"))) == [(1, {"text": "x"})]
    assert list(decoded_lines(str(tmp_path / "bom.csv"))) == ["label,text\r\n", "1,café\r\n"]


def test_bare_carriage_returns_end_lines(tmp_path):
    (tmp_path / "mac.csv").write_bytes(b"text,label\rgood,1\rbad,0\r")
    assert list(iter_records(str(tmp_path / "mac.csv"))) == [(2, {"text": "good", "label": "1"}),
                                                              (3, {"text": "bad", "label": "0"})]
    (tmp_path / "mixed.txt").write_bytes(b"a\r\nb\rc\n")
    assert list(decoded_lines(str(tmp_path / "mixed.txt"))) == ["a\r\n", "b\r", "c\n"]


def test_json_file_holding_an_array_of_records(tmp_path):
    (tmp_path / "a.json").write_text('[\n  {"text": "x", "label": 1},\n  {"text": "y", "label": 0}\n]\n')
    assert list(iter_records(str(tmp_path / "a.json"))) == [(1, {"text": "x", "label": 1}), (2, {"text": "y", "label": 0})]
    (tmp_path / "b.json").write_text('[{"text": "x"}, 3]')
    with pytest.raises(DataError, match=r"b.json: record 2: expected a JSON object, got int"):
        list(iter_records(str(tmp_path / "b.json")))
