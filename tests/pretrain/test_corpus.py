"""mlm.pretrain.corpus: reading documents from every input format, the errors a user can fix, the default corpus."""
from __future__ import annotations

import csv
import gzip
import json
import os

import pytest

from mlm.pretrain import corpus as corpus_module
from mlm.pretrain import default_corpus
from mlm.pretrain.corpus import FileCorpus, corpus_sources
from mlm.pretrain.default_corpus import DefaultCorpus
from mlm.errors import ConfigError, DataError


def write(path, text: str, encoding="utf-8") -> str:
    path = str(path)
    with open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
    return path


def docs_of(train_file, **kw) -> list[str]:
    train, _ = corpus_sources(train_file=train_file, **kw)
    return list(train.documents())


# ------------------------------------------------------------------------------------------- text files


def test_blank_line_separator_keeps_inner_lines_and_skips_whitespace_lines(tmp_path):
    path = write(tmp_path / "a.txt", "\ufeffFirst line\nsecond line\n\n \t \n\nThird doc\r\nstill third\r\n\r\nlast")
    assert docs_of(path) == ["First line\nsecond line", "Third doc\nstill third", "last"]


def test_line_separator_gives_one_document_per_non_blank_line(tmp_path):
    path = write(tmp_path / "a.txt", "one\n  two  \n\n \nthree\n")
    assert docs_of(path, document_separator="line") == ["one", "two", "three"]


def test_any_non_table_suffix_is_text_and_gz_is_decompressed(tmp_path):
    raw = write(tmp_path / "wiki.raw", " = Title = \n \n Body text . \n")
    assert docs_of(raw) == ["= Title =", "Body text ."]
    gz = tmp_path / "b.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("alpha\n\nbeta gamma\n")
    assert docs_of(str(gz)) == ["alpha", "beta gamma"]


def test_a_run_of_lines_without_blank_line_is_cut_at_a_line_break(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "MAX_DOCUMENT_CHARS", 10)
    path = write(tmp_path / "a.txt", "aaaa\nbbbb\ncccc\ndd\n\nee\n")
    assert docs_of(path) == ["aaaa\nbbbb\ncccc", "dd", "ee"]


def test_documents_is_a_fresh_stream_each_call(tmp_path):
    train, validation = corpus_sources(train_file=write(tmp_path / "a.txt", "x\n\ny\n"))
    assert validation is None
    first = train.documents()
    assert next(first) == "x"
    assert list(train.documents()) == ["x", "y"]  # a second stream starts over, independent of the first
    assert list(first) == ["y"]


# --------------------------------------------------------------------------------------------- tables


def test_jsonl_and_json_rows_are_documents_empty_cells_skipped(tmp_path):
    rows = [{"text": "first doc", "id": 1}, {"text": "  "}, {"text": None}, {"text": "second doc"}]
    lines = "\n".join(json.dumps(r) for r in rows) + "\n\n"
    assert docs_of(write(tmp_path / "a.jsonl", lines)) == ["first doc", "second doc"]
    assert docs_of(write(tmp_path / "b.json", lines)) == ["first doc", "second doc"]


def test_csv_tsv_and_custom_text_column(tmp_path):
    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "body"])
        w.writerow([1, "a doc, with a comma"])
        w.writerow([2, "multi\nline cell"])
    assert docs_of(str(tmp_path / "a.csv"), text_column="body") == ["a doc, with a comma", "multi\nline cell"]
    tsv = write(tmp_path / "a.tsv", 'label\ttext\n0\tsaid "hi" there\n1\tbye\n')
    assert docs_of(tsv) == ['said "hi" there', "bye"]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p one", None, "p two"], "n": [1, 2, 3]}), tmp_path / "a.parquet")
    assert docs_of(str(tmp_path / "a.parquet")) == ["p one", "p two"]


def test_missing_column_names_file_line_and_the_columns(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"body": "no text here", "id": 3}\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: missing column 'text' \(columns: body, id\)"):
        docs_of(path)
    csv_path = write(tmp_path / "b.csv", "body,id\nhello,1\n")
    with pytest.raises(DataError, match=r"b\.csv:2: missing column 'text' \(columns: body, id\)"):
        corpus_sources(train_file=csv_path)  # checked up front, before any run starts


def test_non_text_cell_is_an_error(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"text": 42}\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: column 'text' holds int"):
        docs_of(path)


# ----------------------------------------------------------------------------------- paths and globs


def test_globs_and_comma_lists_in_order_without_repeats(tmp_path):
    (tmp_path / "d").mkdir()
    b = write(tmp_path / "d" / "b.txt", "bee\n")
    write(tmp_path / "d" / "a.txt", "ay\n")
    j = write(tmp_path / "c.jsonl", '{"text": "sea"}\n')
    spec = f"{j}, {tmp_path}/d/*.txt ,{b}"
    train, _ = corpus_sources(train_file=spec)
    assert list(train.documents()) == ["sea", "ay", "bee"]
    assert train.description.startswith("3 files")


def test_path_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"nothing-\*\.txt: glob matches no file \(train_file\)"):
        corpus_sources(train_file=f"{tmp_path}/nothing-*.txt")
    with pytest.raises(DataError, match=r"missing\.txt: file not found \(train_file\)"):
        corpus_sources(train_file=f"{write(tmp_path / 'ok.txt', 'x')},{tmp_path}/missing.txt")
    with pytest.raises(DataError, match=r"is a directory"):
        corpus_sources(train_file=str(tmp_path))
    with pytest.raises(DataError, match=r"v\.txt: file not found \(validation_file\)"):
        corpus_sources(train_file=str(tmp_path / "ok.txt"), validation_file=str(tmp_path / "v.txt"))


def test_empty_corpus_is_an_error_naming_the_source(tmp_path):
    path = write(tmp_path / "empty.txt", "\n   \n\t\n")
    with pytest.raises(DataError, match=r"empty\.txt: no text found"):
        corpus_sources(train_file=path)
    jsonl = write(tmp_path / "empty.jsonl", '{"text": ""}\n')
    with pytest.raises(DataError, match=r"empty\.jsonl: no text found"):
        corpus_sources(train_file=jsonl)


def test_undecodable_bytes_name_file_line_and_byte_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine line\n\nok \xff broken\n")
    train = FileCorpus([str(path)])
    # the bad byte is the 4th of line 3, which starts at byte 11
    with pytest.raises(DataError, match=r"bad\.txt:3: not valid UTF-8 \(invalid start byte at byte 14\)"):
        list(train.documents())
    gz = tmp_path / "bad.txt.gz"
    gz.write_bytes(gzip.compress(b"\xc3\x28 first line is bad\n"))
    with pytest.raises(DataError, match=r"bad\.txt\.gz:1: .* at decompressed byte 0"):
        corpus_sources(train_file=str(gz))  # found up front: it is in the first document


def test_config_errors(tmp_path):
    path = write(tmp_path / "a.txt", "x")
    with pytest.raises(ConfigError, match="document_separator"):
        corpus_sources(train_file=path, document_separator="paragraph")
    with pytest.raises(ConfigError, match="train_file and dataset_name"):
        corpus_sources(train_file=path, dataset_name="wikitext")


def test_validation_file_gives_a_validation_corpus(tmp_path):
    train, validation = corpus_sources(train_file=write(tmp_path / "t.txt", "t\n"),
                                       validation_file=write(tmp_path / "v.txt", "v1\n\nv2\n"))
    assert list(validation.documents()) == ["v1", "v2"]


def test_hub_dataset_offline_is_a_one_line_error():
    with pytest.raises(DataError) as err:
        corpus_sources(dataset_name="no-such-user/no-such-dataset-xyz")
    message = str(err.value)
    assert "\n" not in message and "no-such-dataset-xyz" in message and "train_file" in message


# ---------------------------------------------------------------------------------------- fingerprints


def test_file_fingerprint_follows_content_not_path(tmp_path):
    a = write(tmp_path / "a.txt", "hello world\n")
    b = write(tmp_path / "b.txt", "hello world\n")
    fa = FileCorpus([a]).fingerprint()
    assert fa == FileCorpus([b]).fingerprint()
    assert fa != FileCorpus([a], document_separator="line").fingerprint()
    assert fa != FileCorpus([a, b]).fingerprint()
    corpus = FileCorpus([a])
    stat = os.stat(a)
    write(a, "hello worle\n")  # same size; mtime restored: the content hash still sees the change
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert corpus.fingerprint() != fa


# ------------------------------------------------------------------------------------- default corpus


def test_default_corpus_is_used_when_no_source_is_given():
    train, validation = corpus_sources()
    assert isinstance(train, DefaultCorpus) and validation is None
    assert "embedded default corpus" in train.description and "python" in train.description


def test_default_corpus_is_deterministic_and_non_trivial():
    corpus = DefaultCorpus(packages=("numpy",), max_chars_per_source=150_000)
    docs = list(corpus.documents())
    assert docs == list(corpus.documents())
    assert len(docs) > 100 and sum(map(len, docs)) > 150_000
    assert len(set(docs)) == len(docs)  # exact duplicates are skipped
    assert all(len(d) >= 80 and d == d.strip() for d in docs)
    assert [name for name, _, _ in corpus.sources] == ["python", "numpy"]
    # inspect.cleandoc removed the common indentation of continuation lines
    assert sum(d.count("\n    ") for d in docs) < sum(d.count("\n") for d in docs) / 2
    assert corpus.fingerprint() == DefaultCorpus(packages=("numpy",), max_chars_per_source=150_000).fingerprint()
    assert corpus.fingerprint() != DefaultCorpus(packages=("numpy",), max_chars_per_source=100_000).fingerprint()


def test_default_corpus_reads_no_test_folders_or_private_modules():
    import sysconfig

    files = default_corpus._python_files(sysconfig.get_paths()["stdlib"])
    assert files == sorted(files) and len(files) > 100
    parts = [p.split(os.sep) for p in files]
    assert not any({"test", "tests", "site-packages"} & set(p) for p in parts)
    assert not any(p[-1].startswith("_") and not p[-1].startswith("__") for p in parts)


def test_docstrings_come_from_modules_classes_and_functions_in_source_order(tmp_path):
    path = write(tmp_path / "m.py", '''"""Module doc."""
class A:
    """Class doc.

        detail
            more indented
    """
    def f(self):
        """Method doc."""
        def inner():
            "Nested function doc."
async def g():
    """Async doc."""
x = """not a docstring"""
''')
    assert list(default_corpus._docstrings(path)) == [
        "Module doc.", "Class doc.\n\ndetail\n    more indented", "Method doc.", "Nested function doc.", "Async doc.",
    ]
    assert list(default_corpus._docstrings(write(tmp_path / "bad.py", "def (:\n"))) == []
