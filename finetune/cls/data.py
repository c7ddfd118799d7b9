"""Reading classification data: csv / tsv / JSON lines / parquet tables and hub datasets, with their text,
text-pair and label columns resolved (by name, position, or the usual layouts such as sentence1/sentence2)."""
from __future__ import annotations

import json

from finetune.cls.columns import column_name, column_spec, detect_header, is_index, joined_text
from finetune.config import is_test_split
from finetune.cls.label_names import resolve_label_names
from mlm.errors import ConfigError, DataError
from mlm.core.records import file_format, first_row, iter_records, require_columns
from finetune.cls.config import Config, NO_PAIR, PAIR_COLUMNS, TEXT_COLUMN_CANDIDATES, logger
from finetune.cls.labels import _class_names, _normalise_labels, label_name, problem_type, resolve_problem_type, sort_labels


# The settings that reading the data resolves when the config leaves them "auto" / unset; load_splits returns them.
FOUND = ("problem_type", "text_column", "text_pair_column", "label_names")


def load_splits(cfg: Config) -> tuple[dict[str, list[dict]], dict]:
    """(raw examples of train / validation / test, labels normalised for the resolved problem type; the settings
    the data resolved: {name: value} of the FOUND fields that differ from cfg). cfg is not changed."""
    work = cfg.with_values({})  # a copy: the columns chosen for the first file are the ones read in the others
    splits = _load_hub(work) if work.dataset_name else _load_files(work)
    if not splits.get("train"):
        raise DataError(f"{work.dataset_name or work.train_file}: no training split")
    resolved = resolve_problem_type(splits["train"], work)
    if work.problem_type == "auto":
        logger.info("problem_type auto -> %s (from the training labels)", resolved)
    work.problem_type = resolved
    for examples in splits.values():
        _normalise_labels(examples, work)
    if work.label_names is not None:
        name_classes(splits, work)
    return splits, {name: getattr(work, name) for name in FOUND if getattr(work, name) != getattr(cfg, name)}


def name_classes(splits: dict[str, list[dict]], cfg: Config) -> None:
    """--label_names: every split's labels renamed; cfg.label_names becomes the {class: name} JSON the run saves."""
    if cfg.problem_type == "regression":
        raise ConfigError("label_names: a regression model predicts scores, not classes")
    classes = sort_labels(_class_names(splits["train"], cfg.problem_type, cfg.label_separator))
    mapping = resolve_label_names(cfg.label_names, classes, key=label_name)
    cfg.label_names = json.dumps(mapping, ensure_ascii=False)
    logger.info("label names: %s", ", ".join(f"{c} = {n}" for c, n in mapping.items()))
    for examples in splits.values():
        _rename_labels(examples, mapping, cfg.problem_type)


def _rename_labels(examples: list[dict], mapping: dict[str, str], kind: str) -> None:
    """In place; a class without a name stays as it is (and fails as unseen in training, naming its line)."""
    for ex in examples:
        if "label" in ex:
            value = ex["label"]
            ex["label"] = [mapping.get(n, n) for n in value] if kind == "multi_label" else mapping.get(value, value)


def _load_files(cfg: Config) -> dict[str, list[dict]]:
    splits = {}
    for split, path in cfg.data_files():
        # Training and validation need gold labels; a test file may be unlabeled (predictions only).
        splits[split] = read_table(path, cfg, label_required=not is_test_split(split))
    return splits


def read_table(path: str, cfg: Config, label_required: bool) -> list[dict]:
    """Examples of one csv/tsv/jsonl/parquet file; raw labels (see `_normalise_labels`)."""
    delimited = file_format(path) in ("csv", "tsv")
    header = has_header(path, cfg) if delimited else True
    examples, columns = [], None
    for line, row in iter_records(path, cfg.delimiter, header):
        if columns is None:
            # For csv/tsv the columns come from the header, line 1; jsonl/parquet name the first row.
            where = f"{path}:1" if delimited else f"{path}:{line}"
            columns = resolve_columns(list(row), cfg, label_required, where, delimited and header)
        examples.append(_example(row, columns, f"{path}:{line}", path, line, label_required))
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty or holds only a header)")
    return examples


def has_header(path: str, cfg: Config) -> bool:
    """Whether line 1 of a csv/tsv file names the columns: --no_header, else detected (and logged when not)."""
    if cfg.no_header is not None:
        return not cfg.no_header
    pair = cfg.text_pair_column if cfg.text_pair_column != NO_PAIR else None
    specs = column_spec(cfg.text_column) + column_spec(pair) + column_spec(cfg.label_column)
    named = {spec for spec in specs if not is_index(spec)}
    by_position_only = any(is_index(spec) for spec in specs) and named <= {"label"}  # (the default label name)
    known = named | {"label", *TEXT_COLUMN_CANDIDATES, *sum(PAIR_COLUMNS, ())}
    header, why = detect_header(first_row(path, cfg.delimiter), known, by_position_only, path)
    if not header:
        logger.info("%s: no header line (%s): columns by position, 0 = first", path, why)
    return header


def resolve_columns(names: list[str], cfg: Config, label_required: bool, where: str, header_line: bool = False):
    """([text columns], [text pair columns] or None, label column or None) among the data's columns `names`.

    What was chosen automatically is written to cfg (load_splits' working copy, whose changes it returns), so
    the other splits, the saved run config and `mlm predict` read the same kind of input: single texts as text_pair_column 'none' (the text column
    itself is still found per file: SST-2's "sentence" in one file, "text" in another), pairs as both columns.
    """
    available = ", ".join(map(str, names))

    def missing(what: str, column: str, flag: str) -> DataError:
        hint = f"; set --{flag} NAME or POSITION"
        if header_line and len(names) == 1:
            hint = _delimiter_hint(str(names[0])) or hint
        elif header_line:
            hint += " (line 1 was read as the header; --no_header if it is data)"
        return DataError(f"{where}: missing {what} column {column!r} (columns: {available}){hint}")

    def find(value: str, what: str, flag: str) -> list[str]:
        found = []
        for spec in column_spec(value):
            name = column_name(spec, names)
            if name is None:
                raise missing(what, spec, flag)
            found.append(name)
        return found

    text = find(cfg.text_column, "text", "text_column") or None
    pair = None if cfg.text_pair_column == NO_PAIR else find(cfg.text_pair_column, "text pair", "text_pair_column") or None
    if cfg.text_pair_column is None:  # a known pair layout: ignoring its second text would be silent garbage
        partner = dict(PAIR_COLUMNS)
        if text is None:
            layout = next(((a, b) for a, b in PAIR_COLUMNS if a in names and b in names), None)
            text, pair = ([layout[0]], [layout[1]]) if layout else (None, None)
        elif len(text) == 1 and partner.get(text[0]) in names:
            pair = [partner[text[0]]]
    if text is None:
        first = next((c for c in TEXT_COLUMN_CANDIDATES if c in names), None)
        if first is None:
            raise missing("text", " / ".join(TEXT_COLUMN_CANDIDATES), "text_column")
        text = [first]
    label = column_name(cfg.label_column, names)
    if label is None and label_required:
        raise missing("label", cfg.label_column, "label_column")
    shown = " + ".join(map(repr, text))
    if pair and cfg.text_pair_column is None:
        logger.info("%s: text pairs from columns %s and %r", where, shown, pair[0])
        cfg.text_column, cfg.text_pair_column = cfg.text_column or text[0], pair[0]
    elif not pair and cfg.text_pair_column is None:
        logger.info("%s: single texts from column%s %s", where, "s" if len(text) > 1 else "", shown)
        cfg.text_pair_column = NO_PAIR
    return text, pair, label


def _delimiter_hint(header: str) -> str:
    """A one-column header that contains another delimiter means the file was split on the wrong one."""
    for char, name in (("\t", "tab"), (",", "comma"), (";", "semicolon"), ("|", "pipe")):
        if char in header:
            return f"; the header is one column containing a {name}: wrong delimiter? set --delimiter {name}"
    return ""


def _example(row: dict, columns, where: str, path: str, line: int, label_required: bool) -> dict:
    """{"text", "text_pair"?, "label"?, "_where"}; jsonl rows may differ, so every row is checked."""
    text_cols, pair_cols, label_col = columns
    needed = [*text_cols, *(pair_cols or []), label_col if label_required else None]
    require_columns(path, line, row, [c for c in needed if c is not None])
    example = {"text": joined_text(row, text_cols, where), "_where": where}
    if pair_cols is not None:
        example["text_pair"] = joined_text(row, pair_cols, where)
    value = row.get(label_col) if label_col is not None else None
    if value is not None and not (not label_required and isinstance(value, str) and not value.strip()):
        example["label"] = value  # (a test file's blank label cell means "no gold", not an empty class)
    elif label_required:  # a null in jsonl / parquet
        raise DataError(f"{where}: column {label_col!r}: missing label (null)")
    return example


def _load_hub(cfg: Config) -> dict[str, list[dict]]:
    """A hub dataset through datasets.load_dataset; ClassLabel ids become their names."""
    from mlm.core.hub import load_hub_dataset

    data = load_hub_dataset(cfg.dataset_name, cfg.dataset_config_name)
    splits = {}
    # MNLI names its dev split validation_matched; a few community datasets use "dev".
    for split, candidates in (("train", ("train",)), ("validation", ("validation", "validation_matched", "dev")),
                              ("test", ("test",))):
        name = next((c for c in candidates if c in data), None)
        if name is not None:
            splits[split] = _hub_examples(data[name], cfg, f"{cfg.dataset_name}[{name}]", split != "test")
    return splits


def _hub_examples(dataset, cfg: Config, source: str, label_required: bool) -> list[dict]:
    columns = resolve_columns(dataset.column_names, cfg, label_required, source)
    to_names = _class_label_names(dataset.features.get(columns[2])) if columns[2] else None
    examples = []
    for i, row in enumerate(dataset, 1):
        if to_names is not None:
            row[columns[2]] = to_names(row[columns[2]])
        examples.append(_example(row, columns, f"{source}:{i}", source, i, label_required))
    if not examples:
        raise DataError(f"{source}: no examples")
    return examples


def _class_label_names(feature):
    """A function mapping ClassLabel ids (or lists of them) to names; None if the column is not ClassLabel.

    Negative ids mean "no label" in the datasets convention (GLUE test splits hold -1)."""
    inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) / List(ClassLabel) for multi-label
    if hasattr(feature, "int2str"):
        return lambda v: feature.int2str(v) if v is not None and v >= 0 else None
    if inner is not None and hasattr(inner, "int2str"):
        return lambda vs: None if vs is None else [inner.int2str(v) for v in vs]
    return None
