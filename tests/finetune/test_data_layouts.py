"""Data as it comes: files given in full next to a recipe's data_dir, headerless tables, label names."""
import json
import os

import pytest

from finetune.run import parse_finetune_args
from mlm.errors import ConfigError, DataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("recipe", ["ner.yaml", "qa.yaml"])
def test_absolute_and_dot_relative_files_do_not_need_the_recipes_data_dir(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's ../shared/data/... does not exist from here
    recipe = os.path.join(ROOT, "recipes/finetune", recipe)
    train = str(tmp_path / "train.conll")
    extra = ["--split_articles", "none"] if recipe.endswith("qa.yaml") else []
    cfg = parse_finetune_args(["--recipe", recipe, "--train_file", train, "--validation_file", "./dev.conll",
                               "--test_file", f"{train},../test.conll", *extra])
    assert (cfg.train_file, cfg.validation_file, cfg.test_file) == (train, "./dev.conll", f"{train},../test.conll")
    # A plain name is still resolved in data_dir, which must then exist; the message names the file needing it.
    with pytest.raises(ConfigError, match=r"data_dir: \.\./shared/data/\S+ not found \(needed for validation_file "
                                          r"dev.conll\).*full paths"):
        parse_finetune_args(["--recipe", recipe, "--train_file", train, "--validation_file", "dev.conll", *extra])
    folder = tmp_path / "data"
    folder.mkdir()
    cfg = parse_finetune_args(["--recipe", recipe, "--data_dir", str(folder), "--train_file", train,
                               "--validation_file", "dev.conll", "--test_file", "a.conll, ./b.conll", *extra])
    assert (cfg.train_file, cfg.validation_file) == (train, str(folder / "dev.conll"))
    assert cfg.test_file == f"{folder / 'a.conll'},./b.conll"
    with pytest.raises(ConfigError, match="empty file name"):
        parse_finetune_args(["--recipe", recipe, "--train_file", train, "--test_file", f"{train},", *extra])


def test_max_test_samples_and_its_hf_alias(tmp_path):
    train = str(tmp_path / "train.csv")
    cfg = parse_finetune_args(["--task", "cls", "--train_file", train, "--max_eval_samples", "5"])
    assert (cfg.max_eval_samples, cfg.max_test_samples) == (5, None)  # a quick dev loop keeps the whole test split
    cfg = parse_finetune_args(["--task", "cls", "--train_file", train, "--max_predict_samples", "7"])
    assert cfg.max_test_samples == 7
    with pytest.raises(ConfigError, match="max_test_samples: must be >= 1, got 0"):
        parse_finetune_args(["--task", "cls", "--train_file", train, "--max_test_samples", "0"])


# ------------------------------------------------------------------------------------ headerless tables

def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def cls_splits(train: str, **fields):
    from finetune.cls import task as cls

    cfg = cls.Config(train_file=train, **fields)
    splits, found = cls.load_splits(cfg)
    return splits, cfg.with_values(found)


def test_headerless_tsv_by_position_the_number_in_line_1_tells(tmp_path, mlm_log):
    train = write(tmp_path / "train.tsv", "a charming movie\t1\nso boring\t0\n")
    splits, cfg = cls_splits(train, text_column="0", label_column="1")
    assert [(ex["text"], ex["label"], ex["_where"]) for ex in splits["train"]] == [
        ("a charming movie", "1", f"{train}:1"), ("so boring", "0", f"{train}:2")]
    assert f"{train}: no header line (line 1 holds the number '1', not a column name)" in mlm_log.text
    # Without column flags the columns are named by position, and the error says how to pick them.
    with pytest.raises(DataError, match=r"train.tsv:1: missing text column .* \(columns: 0, 1\); set --text_column "
                                        r"NAME or POSITION$"):
        cls_splits(train)


def test_headerless_csv_joins_title_and_description(tmp_path):
    train = write(tmp_path / "train.csv", '"3","Wall St. Bears","Short-sellers are back, again."\n'
                                          '"1","Mars Rover","It landed."\n')
    splits, cfg = cls_splits(train, text_column="1,2", label_column="0")
    assert [(ex["text"], ex["label"]) for ex in splits["train"]] == [
        ("Wall St. Bears Short-sellers are back, again.", "3"), ("Mars Rover It landed.", "1")]
    assert cfg.text_pair_column == "none" and cfg.text_column == "1,2"  # saved as given, for mlm predict


def test_headers_stay_headers_and_positions_also_work_with_them(tmp_path):
    train = write(tmp_path / "train.tsv", "id\tsentence\tlabel\n7\tgood\tpos\n8\tbad\tneg\n")
    splits, _ = cls_splits(train, text_column="1")  # line 1 names the label column: a header
    assert [(ex["text"], ex["label"], ex["_where"]) for ex in splits["train"]] == [
        ("good", "pos", f"{train}:2"), ("bad", "neg", f"{train}:3")]
    pairs = write(tmp_path / "pairs.csv", "p,q,y\nthe cat,a cat,yes\nthe dog,no dog,no\n")
    splits, cfg = cls_splits(pairs, text_column="0", text_pair_column="-2", label_column="y")
    assert splits["train"][0] == {"text": "the cat", "text_pair": "a cat", "label": "yes", "_where": f"{pairs}:2"}


def test_an_undecidable_line_1_asks_for_no_header(tmp_path):
    train = write(tmp_path / "train.tsv", "a charming movie\tpos\nso boring\tneg\n")
    with pytest.raises(DataError, match=r"train.tsv:1: cannot tell whether line 1 \(a charming movie \| pos\) is a "
                                        r"header: pass --no_header"):
        cls_splits(train, text_column="0", label_column="1")
    splits, _ = cls_splits(train, text_column="0", label_column="1", no_header=True)
    assert [ex["label"] for ex in splits["train"]] == ["pos", "neg"]
    splits, _ = cls_splits(train, text_column="0", label_column="1", no_header=False)
    assert [ex["label"] for ex in splits["train"]] == ["neg"]  # line 1 named the columns
    # Named columns: line 1 is taken as the header, and a miss says --no_header might be the fix.
    with pytest.raises(DataError, match=r"missing text column .* \(columns: a charming movie, pos\); set "
                                        r"--text_column NAME or POSITION \(line 1 was read as the header; --no_header"):
        cls_splits(train)


# ------------------------------------------------------------------------------------------ label names

@pytest.mark.parametrize("value", ["World,Sports,Business", "1=World,2=Sports,10=Business",
                                   '{"1": "World", "2.0": "Sports", "10": "Business"}', "FILE"])
def test_label_names_name_numeric_classes_in_their_order(tmp_path, value):
    from finetune.cls.labels import label_name
    from finetune.cls.label_names import resolve_label_names

    if value == "FILE":
        value = write(tmp_path / "names.txt", "1\tWorld\n2\tSports\n\n10\tBusiness\n")
    classes = ["1", "2", "10"]  # numeric order, as label_list sorts them
    assert resolve_label_names(value, classes, key=label_name) == {"1": "World", "2": "Sports", "10": "Business"}


@pytest.mark.parametrize("value,message", [
    ("a,b", r"2 names for 3 classes \(1, 2, 10\)"),
    ("1=a,2=b", "no name for class '10'"),
    ("1=a,b,c", "mixes CLASS=NAME pairs and bare names"),
    ("a,b,a", "the name 'a' is given to two classes"),
    ("1=,2=b,10=c", "expected CLASS=NAME"),
])
def test_bad_label_names_are_one_line_errors(value, message):
    from finetune.cls.label_names import resolve_label_names

    with pytest.raises(ConfigError, match=f"label_names: .*{message}"):
        resolve_label_names(value, ["1", "2", "10"])


def test_label_names_rename_every_split_and_keep_the_class_order(tmp_path):
    train = write(tmp_path / "train.csv", '"2","b"\n"1","a"\n"10","c"\n')
    dev = write(tmp_path / "dev.csv", '"10","c"\n')
    from finetune.cls import task as cls

    splits, cfg = cls_splits(train, validation_file=dev, text_column="1", label_column="0",
                             label_names="World,Sports,Business")
    assert [ex["label"] for ex in splits["train"]] == ["Sports", "World", "Business"]
    assert splits["validation"][0]["label"] == "Business"
    assert cls.label_list(splits["train"], cfg) == ["World", "Sports", "Business"]  # ids in the classes' order
    assert json.loads(cfg.label_names) == {"1": "World", "2": "Sports", "10": "Business"}  # what the run saves
    with pytest.raises(ConfigError, match="label_names: a regression model"):
        cls_splits(train, text_column="1", label_column="0", label_names="a,b,c", problem_type="regression")


def test_no_header_flag_forms(tmp_path):
    argv = ["--task", "cls", "--train_file", str(tmp_path / "t.tsv")]
    assert parse_finetune_args(argv).no_header is None  # detected per file
    assert parse_finetune_args(argv + ["--no_header"]).no_header is True
    assert parse_finetune_args(argv + ["--no_header", "false"]).no_header is False


def test_the_ner_recipe_runs_on_absolute_files_end_to_end(tmp_path, monkeypatch, tiny_bert_dir):
    from mlm.cli import main

    monkeypatch.chdir(tmp_path)  # the recipe's data_dir does not exist from here
    conll = write(tmp_path / "train.conll", "John B-PER\nvisited O\nParis B-LOC\n\nSmith B-PER\nworks O\n")
    code = main(["finetune", "--recipe", os.path.join(ROOT, "recipes/finetune/ner.yaml"), "--train_file", conll,
                 "--validation_file", conll, "--test_file", conll, "--model_name_or_path", tiny_bert_dir,
                 "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--disable_tqdm", "true"])
    assert code == 0
    assert {"eval_f1", "test_f1"} <= set(json.loads((tmp_path / "out" / "metrics.json").read_text()))
