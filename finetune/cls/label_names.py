"""Names for classes that the data gives as numbers (SST-2's 0/1, a topic set's 1-4): --label_names.

    --label_names negative,positive            # one name per class, in the classes' order (numbers ascending)
    --label_names 0=negative,1=positive        # class=name
    --label_names names.txt                    # a file: one name per line, or class<TAB>name / class=name lines

The names become the model's id2label (config.json), its predictions and its metrics' class keys. A run saves
them as a JSON object {class: name}, which is read back as a value too.
"""
from __future__ import annotations

import json
import os
from typing import Callable

from mlm.errors import ConfigError
from mlm.core.user_files import read_text


def resolve_label_names(value: str, classes: list[str], key: Callable[[str], str] = str) -> dict[str, str]:
    """{class as in the data: name} for every one of `classes` (in their id order); ConfigError naming what is wrong.

    `key` normalises a class given in the value the way the data's labels are (1, "1.0" -> "1")."""
    entries = _entries(value)
    if not entries:
        raise ConfigError(f"label_names: no names in {value!r}")
    if all(cls is None for cls, _ in entries):
        if len(entries) != len(classes):
            raise ConfigError(f"label_names: {len(entries)} names for {len(classes)} classes ({', '.join(classes)}); "
                              "give one name per class, in this order, or CLASS=NAME pairs")
        mapping = dict(zip(classes, (name for _, name in entries)))
    elif any(cls is None for cls, _ in entries):
        raise ConfigError("label_names: mixes CLASS=NAME pairs and bare names; use one form")
    else:
        mapping = {key(cls): name for cls, name in entries}
        unnamed = [c for c in classes if c not in mapping]
        if unnamed:
            raise ConfigError(f"label_names: no name for class {unnamed[0]!r} (classes: {', '.join(classes)})")
    names = list(mapping.values())
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated is not None:
        raise ConfigError(f"label_names: the name {repeated!r} is given to two classes")
    return mapping


def _entries(value: str) -> list[tuple[str | None, str]]:
    """(class or None, name) pairs of a JSON object, a file, or a comma-separated list."""
    text = value.strip()
    if text.startswith("{"):  # the form a run saves
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"label_names: invalid JSON ({e.msg})") from None
        return [(str(cls), str(name)) for cls, name in mapping.items()]
    if os.path.isfile(value):
        return [_entry(line, "\t" if "\t" in line else "=") for line in read_text(value).splitlines() if line.strip()]
    return [_entry(part, "=") for part in text.split(",") if part.strip()]


def _entry(text: str, separator: str) -> tuple[str | None, str]:
    cls, sep, name = text.partition(separator)
    if not sep:
        return None, text.strip()
    if not cls.strip() or not name.strip():
        raise ConfigError(f"label_names: {text.strip()!r}: expected CLASS{separator}NAME")
    return cls.strip(), name.strip()
