"""Read tabular records (jsonl / csv / tsv / parquet) as plain dicts, with file:line in every error.

    for line, row in iter_records("train.csv"):   # line: 1-based physical line (parquet, JSON array: row number)
        ...
"""
from __future__ import annotations

import csv
import itertools
import json
import re
import sys
from typing import Iterator

from mlm.errors import DataError
from mlm.core.user_files import parse_json, raw_lines, require_file

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def file_format(path: str) -> str:
    """'jsonl' | 'csv' | 'tsv' | 'parquet' from the file name (`.json` is read as JSON lines); DataError when `path`
    is no file."""
    require_file(path)
    name = path.lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".tsv", "tsv"), (".parquet", "parquet")):
        if name.endswith(suffix) or name.endswith(suffix + ".gz"):
            return fmt
    raise DataError(f"{path}: unknown file type (expected one of {', '.join(TABLE_SUFFIXES)})")


NUL = "\0"
_BARE_CR = re.compile(r"(?<=\r)(?!\n)")


def decoded_lines(path: str) -> Iterator[str]:
    """The file's lines as text (.gz decompressed), decoded one by one so that a bad byte is reported with its
    line; a UTF-8 byte-order mark (as Excel and Notepad write) is dropped. Lines end at \n, \r\n or a bare \r
    (old Mac files). A NUL byte is refused: text never holds one, a binary or damaged file does."""
    for line_no, raw in raw_lines(path):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{line_no}: not valid UTF-8 ({e.reason} at byte {e.start} of the line)") from None
        if NUL in line:
            raise DataError(f"{path}:{line_no}: a NUL byte at character {line.index(NUL)} of the line: a binary "
                            "or damaged file, not text")
        if line_no == 1:
            line = line.removeprefix("\ufeff")
        if "\r" in line.rstrip("\r\n"):  # bare CR line ends (old Mac files): split like universal newlines
            yield from _BARE_CR.split(line)
        else:
            yield line


def iter_records(path: str, delimiter: str | None = None, header: bool = True) -> Iterator[tuple[int, dict]]:
    """Yield (line, record) for every row of `path`; raise DataError naming file and line on bad rows.

    csv/tsv: the columns are named by line 1, or with header=False by position, "0", "1", ... (line 1 is data)."""
    fmt = file_format(path)
    if fmt == "parquet":
        yield from _iter_parquet(path)
    elif fmt == "jsonl":
        yield from _iter_jsonl(path)
    else:
        yield from _iter_delimited(path, _delimiter(fmt, delimiter), header)


def first_row(path: str, delimiter: str | None = None) -> list[str]:
    """The fields of line 1 of a csv/tsv file ([] when it is empty): to tell a header from data."""
    return next((row for _, row in _delimited_rows(path, _delimiter(file_format(path), delimiter))), [])


def _delimiter(fmt: str, delimiter: str | None) -> str:
    return delimiter or ("\t" if fmt == "tsv" else ",")


# A cell may be as long as the file (a whole article in one cell is valid input); csv's default limit is 128 KB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _delimited_rows(path: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of every row of a csv/tsv file; a malformed row (an unterminated quote, ...) is a DataError
    at its line."""
    # QUOTE_NONE for TSV: GLUE-style files contain bare quotes inside sentences. strict: a quote left open runs
    # to the end of the file, which is an error, not one last cell holding the rest of the file.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(decoded_lines(path), delimiter=delimiter, quoting=quoting, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            hint = " (a quote opened here is never closed)" if "end of data" in str(e) else ""
            raise DataError(f"{path}:{start}: malformed {'csv' if delimiter == ',' else 'delimited'} line ({e}){hint}"
                            ) from None
        yield reader.line_num, row


def _iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    lines = decoded_lines(path)
    first = next(lines, "")
    if first.lstrip().startswith("["):  # a .json file holding one array of records: numbered from 1
        yield from _iter_json_array(path, first + "".join(lines))
        return
    for line_no, line in enumerate(itertools.chain([first], lines), 1):
        if not line.strip():
            continue
        try:
            row = parse_json(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None
        except _RepeatedKey as e:
            raise DataError(f"{path}:{line_no}: key {e.args[0]!r} appears twice in the object; remove one") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object per line, got {type(row).__name__}")
        yield line_no, row


class _RepeatedKey(Exception):
    pass


def _unique_keys(pairs: list[tuple]) -> dict:
    """json's object hook: a key given twice would otherwise keep its last value silently."""
    row = dict(pairs)
    if len(row) != len(pairs):
        keys = [key for key, _ in pairs]
        raise _RepeatedKey(next(key for i, key in enumerate(keys) if key in keys[:i]))
    return row


def _iter_json_array(path: str, text: str) -> Iterator[tuple[int, dict]]:
    try:
        rows = parse_json(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(rows, list):  # e.g. "[1] [2]": JSON lines of arrays
        raise DataError(f"{path}:1: expected a JSON object per line, or one array of objects")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def _iter_delimited(path: str, delimiter: str, has_header: bool = True) -> Iterator[tuple[int, dict]]:
    rows = _delimited_rows(path, delimiter)
    first = next(rows, None)
    if first is None:
        return
    if has_header:
        header = [h.strip() for h in first[1]]
        _check_unique(path, header)
    else:  # line 1 is data: columns by position
        rows, header = itertools.chain([first], rows), [str(i) for i in range(len(first[1]))]
    for line_no, row in rows:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            raise DataError(
                f"{path}:{line_no}: expected {len(header)} fields ({', '.join(header)}) separated by "
                f"{delimiter!r}, got {len(row)} (wrong delimiter?)"
            )
        yield line_no, dict(zip(header, row))


def _check_unique(path: str, header: list[str]) -> None:
    """Two columns of one name: a dict would keep the second silently."""
    for i, name in enumerate(header):
        if name in header[:i]:
            raise DataError(f"{path}:1: column {name!r} appears twice in the header (columns {header.index(name)} "
                            f"and {i}); rename one")


def _iter_parquet(path: str) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow ships with `datasets`
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    row_no = 0
    for batch in table.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, row


def require_columns(path: str, line: int, row: dict, columns: list[str]) -> None:
    """Raise a DataError naming the first missing column and the ones that exist."""
    for col in columns:
        if col not in row:
            raise DataError(f"{path}:{line}: missing column {col!r} (columns: {', '.join(map(str, row))})")



def first_line(exc: BaseException) -> str:
    """The first line of an exception's message for a one-line error, or its type's name when the message is
    empty."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# A longer text (one huge line) is tokenised in pieces of about this size: the tokenizer keeps ~100 bytes of
# alignment per character of a text it encodes.
PIECE_CHARS = 20_000


def text_pieces(text: str, size: int) -> list[str]:
    """`text` cut before a whitespace character about every `size` characters, so that tokenising the pieces one
    by one gives the tokens of the whole (pre-tokenizers split at whitespace; byte-level BPE and SentencePiece
    attach a space to the word after it, which keeps it). A piece without whitespace is cut where it must."""
    if len(text) <= size:
        return [text]
    pieces, start = [], 0
    while len(text) - start > size:
        cut = start + size
        while cut > start + size // 2 and not text[cut].isspace():
            cut -= 1
        if not text[cut].isspace():  # no whitespace in the second half: cut mid-word
            cut = start + size
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces
