"""The one place where files a user hands in are opened and checked: data files (plain or .gz), JSON files a
model folder carries (mlm_task.json, config.json) and safetensors weights. A damaged file is a one-line
DataError naming it and what is wrong, with a hint, never a library's traceback:

    for line_no, raw in raw_lines("train.csv.gz"): ...       # bytes, one line at a time
    text = read_text("dev.json")                             # a whole (small) file, decoded
    settings = read_json(folder + "/mlm_task.json", hint="re-export the model with mlm finetune")
    check_weights(folder, hint="re-download or re-export it")  # every *.safetensors: header and size
"""
from __future__ import annotations

import gzip
import json
import os
import struct
import zlib
from typing import Iterator

from mlm.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
# A safetensors file is an 8-byte little-endian header length, a JSON header, then the tensor bytes; real
# headers are at most a few MB, so a larger length means the first bytes are not a header at all.
MAX_SAFETENSORS_HEADER = 100 << 20
REEXPORT = "re-download or re-export the model"  # the hint for a damaged file of a model folder


def require_file(path: str) -> None:
    """DataError unless `path` is a file: missing, or a folder."""
    if os.path.isdir(path):
        raise DataError(f"{path}: a folder, not a file")
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")


def _open_binary(path: str):
    """`path` opened for bytes (.gz decompressed on the fly); DataError when missing, a folder or not gzip."""
    require_file(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied (cannot read it)") from None
    if not path.lower().endswith(".gz"):
        return f
    with f:
        head = f.read(2)
    if head and head != GZIP_MAGIC:  # (an empty .gz reads as an empty file)
        raise DataError(f"{path}: not a gzip file, though named .gz (rename it without .gz if it is plain text)")
    return gzip.open(path, "rb")


def raw_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, the line's bytes with its line end) of a plain or .gz file. A damaged .gz (cut
    short, bad data) is a DataError at the line where decompression failed."""
    f = _open_binary(path)
    line_no = 0
    with f:
        try:
            for line_no, raw in enumerate(f, 1):
                yield line_no, raw
        except (EOFError, zlib.error, OSError) as e:  # (gzip.BadGzipFile is an OSError)
            if not path.lower().endswith(".gz"):
                raise DataError(f"{path}:{line_no + 1}: cannot be read ({e})") from None
            raise DataError(f"{path}:{line_no + 1}: damaged gzip data ({e}); re-download or re-compress the "
                            "file") from None


def read_text(path: str) -> str:
    """The whole file decoded as UTF-8 (a byte-order mark dropped): for formats that are one JSON document."""
    data = b"".join(raw for _, raw in raw_lines(path))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None


def parse_json(text: str, **options):
    """json.loads, where a document nested too deeply for Python's parser ("[[[[..." thousands deep) is a
    JSONDecodeError like any other malformed one, not a RecursionError."""
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None


def read_json(path: str, hint: str):
    """A JSON document (config.json, mlm_task.json) that a program wrote; DataError with `hint` when damaged."""
    try:
        return parse_json(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); {hint}") from None
    except DataError as e:
        raise DataError(f"{e}; {hint}") from None


def check_weights(folder: str, hint: str) -> None:
    """Every *.safetensors file of `folder` whole: a readable header whose tensors end where the file ends.
    Reads the headers only (a few KB), so a truncated or overwritten file is refused before any loading."""
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            problem = safetensors_problem(os.path.join(folder, name))
            if problem:
                raise DataError(f"{os.path.join(folder, name)}: damaged weights ({problem}); {hint}")


def safetensors_problem(path: str) -> str | None:
    """Why `path` is not a whole safetensors file, or None."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 8:
            return f"{size} bytes, too short for a safetensors header"
        (length,) = struct.unpack("<Q", f.read(8))
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            return "no safetensors header: random or truncated bytes"
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "unreadable safetensors header"
    try:
        described = 8 + length + max([entry["data_offsets"][1] for key, entry in header.items()
                                      if key != "__metadata__"], default=0)
    except (AttributeError, KeyError, IndexError, TypeError):
        return "malformed safetensors header"
    if described != size:
        return f"{size} bytes where its header describes {described}: truncated or padded"
    return None
