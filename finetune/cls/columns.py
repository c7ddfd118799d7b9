"""Columns of csv/tsv tables as they come: with or without a header line, named or by position, several joined.

    --text_column review                 # a header name
    --text_column 2 --label_column 0     # positions (0 = first), with or without a header
    --text_column title,description      # several columns, joined with a space into one text

A file without a header line is read with columns named by position ("0", "1", ...). Whether line 1 is a
header is detected when that is unambiguous (see `detect_header`), else set with --no_header [true|false].
"""
from __future__ import annotations

import re
from typing import Optional

from mlm.errors import DataError

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def column_spec(value: Optional[str]) -> list[str]:
    """'title, description' -> ['title', 'description']; None -> []."""
    return [] if value is None else [part.strip() for part in str(value).split(",") if part.strip()]


def is_index(spec: str) -> bool:
    return re.fullmatch(r"-?\d+", spec) is not None


def column_name(spec: str, names: list[str]) -> Optional[str]:
    """A header name as given, or a position (0 = first, -1 = last) -> the column's name; None if neither."""
    if spec in names:
        return spec
    if is_index(spec) and -len(names) <= int(spec) < len(names):
        return names[int(spec)]
    return None


def detect_header(cells: list[str], known_names: set[str], by_index: bool, path: str) -> tuple[bool, str]:
    """(whether line 1 is a header, why) from its fields.

    A header when a field is a column name the run asks for (or a usual one: text, sentence, label, ...);
    data when a field is a number (no header names a column "3"); otherwise a header, as csv files usually
    have one, unless the columns are asked for by position only: then nothing tells, and guessing wrong
    would either drop an example or train on the header as one, so it is an error asking for --no_header."""
    cells = [c.strip() for c in cells]
    named = next((c for c in cells if c in known_names), None)
    if named is not None:
        return True, f"line 1 names column {named!r}"
    number = next((c for c in cells if _NUMBER.fullmatch(c)), None)
    if number is not None:
        return False, f"line 1 holds the number {number!r}, not a column name"
    if by_index:
        shown = " | ".join(c if len(c) <= 30 else c[:27] + "..." for c in cells)
        raise DataError(f"{path}:1: cannot tell whether line 1 ({shown}) is a header: pass --no_header if it is "
                        "data, --no_header false if it names the columns")
    return True, "line 1 taken as the header"


def joined_text(row: dict, columns: list[str], where: str) -> str:
    """The text of one or several columns, joined with a space (blank ones skipped); DataError if none has text."""
    parts = []
    for column in columns:
        value = row[column]
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: column {column!r} should hold text, got {type(value).__name__} {value!r}")
        if value is not None and value.strip():
            parts.append(value.strip() if len(columns) > 1 else value)
    if not parts:
        shown = " / ".join(repr(c) for c in columns)
        raise DataError(f"{where}: empty text in column{'s' if len(columns) > 1 else ''} {shown}")
    return " ".join(parts)
