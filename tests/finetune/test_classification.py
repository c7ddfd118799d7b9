"""Sequence classification (finetune/cls/) on hand-made files, tokens and batches."""
from __future__ import annotations

import json
import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from finetune.cls import task as cls
from finetune.cls import config as cls_config
from finetune.cls import inputs as cls_inputs
from finetune.cls import labels as cls_labels
from mlm.core.config import load_recipe, parse_config
from mlm.errors import ConfigError, DataError

RECIPES = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "finetune")


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def config(train_file: str = "train.tsv", **fields) -> cls.Config:
    return cls.Config(train_file=train_file, **fields)


def tokens(tokenizer, ids) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


@pytest.fixture(scope="module")
def tiny_model(tiny_bert_dir):
    """The tiny backbone with a fresh 2-class head, in eval mode so outputs are deterministic."""
    torch.manual_seed(0)
    kwargs = cls.model_kwargs(config(), ["neg", "pos"])
    model = cls.AutoModel.from_pretrained(tiny_bert_dir, **kwargs).eval()
    return model


# ------------------------------------------------------------------------------------------------ labels


def test_string_labels_are_sorted_and_named_in_the_model_kwargs(tmp_path):
    train = write(tmp_path, "train.tsv", "sentence\tlabel\ngood fun\tpos\nboring\tneg\ngreat\tpos\n")
    cfg = config(train)
    splits, found = cls.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert cfg.problem_type == "single_label"  # auto, resolved by load_splits, recorded by the runner
    labels = cls.label_list(splits["train"], cfg)
    assert labels == ["neg", "pos"]
    assert cls.model_kwargs(cfg, labels) == {
        "num_labels": 2,
        "id2label": {0: "neg", 1: "pos"},
        "label2id": {"neg": 0, "pos": 1},
        "problem_type": "single_label_classification",
    }
    assert splits["train"][1] == {"text": "boring", "label": "neg", "_where": f"{train}:3"}


def test_integer_labels_sort_numerically_and_ints_equal_their_strings(tmp_path):
    rows = [{"text": "a", "label": 10}, {"text": "b", "label": 2}, {"text": "c", "label": 1.0}, {"text": "d", "label": 0}]
    train = write(tmp_path, "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(train)
    splits, found = cls.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert cfg.problem_type == "single_label"  # integer-valued numbers are classes, not scores
    assert cls.label_list(splits["train"], cfg) == ["0", "1", "2", "10"]  # not "10" before "2"
    assert [ex["label"] for ex in splits["train"]] == ["10", "2", "1", "0"]
    assert cls_labels.sort_labels(["-1", "1", "0"]) == ["-1", "0", "1"]
    assert cls_labels.sort_labels(["b", "10", "a"]) == ["10", "a", "b"]


def test_integral_float_strings_are_their_integer_class(tmp_path):
    # pandas writes an integer label column with a NaN in it as 1.0, 0.0: the same classes as 1 and 0
    train = write(tmp_path, "train.csv", "text,label\na,1.0\nb,0.0\nc,1\nd,0\ne,-1.00\n")
    cfg = config(train)
    splits, found = cls.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert cls.label_list(splits["train"], cfg) == ["-1", "0", "1"]
    assert [cls.label_name(v) for v in ("2.5", "1e3", "v1.0", " 3. ")] == ["2.5", "1e3", "v1.0", "3"]


def test_label_unseen_in_training_names_file_and_line(tmp_path, tiny_tokenizer):
    train = write(tmp_path, "train.tsv", "sentence\tlabel\ngood\tpos\nbad\tneg\n")
    dev = write(tmp_path, "dev.tsv", "sentence\tlabel\ngreat\tpos\nit is ok\tneutral\n")
    cfg = config(train, validation_file=dev)
    splits, found = cls.load_splits(cfg)
    cfg = cfg.with_values(found)
    labels = cls.label_list(splits["train"], cfg)
    # run.py encodes evaluation splits without labels: the check must still fire there.
    with pytest.raises(DataError, match=rf"^{dev}:3: label 'neutral' does not occur in the training data"):
        cls.encode(splits["validation"], tiny_tokenizer, cfg, labels, with_labels=False)


def test_regression_is_detected_from_fractional_targets(tmp_path, tiny_tokenizer):
    train = write(tmp_path, "train.csv", "sentence1,sentence2,label\na,b,3.8\nc,d,0\ne,f,5\n")
    cfg = config(train)
    splits, found = cls.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert cfg.problem_type == "regression"
    assert splits["train"][0]["text_pair"] == "b"  # sentence1 + sentence2 read as a pair
    labels = cls.label_list(splits["train"], cfg)
    assert labels == ["score"]
    assert cls.model_kwargs(cfg, labels)["problem_type"] == "regression"
    assert cls.model_kwargs(cfg, labels)["num_labels"] == 1
    features = cls.encode(splits["train"], tiny_tokenizer, cfg, labels, with_labels=True)
    assert [f["labels"] for f in features] == [3.8, 0.0, 5.0]
    batch = cls.collate(features, tiny_tokenizer)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (3,)


def test_integer_scores_need_an_explicit_regression_problem_type(tmp_path):
    train = write(tmp_path, "train.tsv", "text\tlabel\na\t1\nb\t5\n")
    cfg = config(train, problem_type="regression")
    splits, found = cls.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert [ex["label"] for ex in splits["train"]] == [1.0, 5.0]
    assert cls.label_list(splits["train"], cfg) == ["score"]


def test_multi_label_from_json_lists_and_from_separated_strings(tmp_path, tiny_tokenizer):
    rows = [{"text": "a", "label": ["sports", "politics"]}, {"text": "b", "label": []}, {"text": "c", "label": ["arts"]}]
    train = write(tmp_path, "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(train)
    splits, found = cls.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert cfg.problem_type == "multi_label"
    labels = cls.label_list(splits["train"], cfg)
    assert labels == ["arts", "politics", "sports"]
    assert cls.model_kwargs(cfg, labels)["problem_type"] == "multi_label_classification"
    features = cls.encode(splits["train"], tiny_tokenizer, cfg, labels, with_labels=True)
    assert [f["labels"] for f in features] == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    batch = cls.collate(features, tiny_tokenizer)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (3, 3)

    csv_train = write(tmp_path, "tags.csv", "text,label\na,sports|politics\nb,arts| sports |arts\n")
    cfg = config(csv_train, label_separator="|")
    splits, found = cls.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert cfg.problem_type == "multi_label"
    assert [ex["label"] for ex in splits["train"]] == [["sports", "politics"], ["arts", "sports"]]


# ------------------------------------------------------------------------------------------------ errors


def test_missing_text_column_names_file_line_and_columns(tmp_path):
    train = write(tmp_path, "train.csv", "review,label\ngood,1\n")
    with pytest.raises(DataError, match=rf"^{train}:1: missing text column 'text / sentence / sentence1' "
                                        r"\(columns: review, label\); set --text_column"):
        cls.load_splits(config(train))
    with pytest.raises(DataError, match=rf"^{train}:1: missing text column 'body' \(columns: review, label\)"):
        cls.load_splits(config(train, text_column="body"))
    assert cls.load_splits(config(train, text_column="review"))[0]["train"][0]["text"] == "good"


@pytest.mark.parametrize("content, error, settings", [
    ('{"text": "good", "stars": 1}\n', r":1: missing label column 'label' \(columns: text, stars\)", {}),
    ('{"text": "good", "label": 1}\n\n{"text": "bad"}\n', r":3: missing column 'label' \(columns: text\)", {}),
    ('{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n', r":2: column 'label': missing label", {}),
    ('{"text": "a", "label": "x"}\n{"text": "b", "label": ["x"]}\n', r":2: column 'label': .*multi_label",
     {"problem_type": "single_label"}),
], ids=["no label column", "a row without the label", "null label", "list label in single-label data"])
def test_a_bad_label_in_training_data_names_its_line(tmp_path, content, error, settings):
    train = write(tmp_path, "train.jsonl", content)
    with pytest.raises(DataError, match=rf"^{train}" + error):
        cls.load_splits(config(train, **settings))


def test_test_split_without_labels_is_allowed(tmp_path, tiny_tokenizer, tiny_model):
    train = write(tmp_path, "train.tsv", "sentence\tlabel\ngood\tpos\nbad\tneg\n")
    test = write(tmp_path, "test.tsv", "index\tsentence\n0\tthe plot\n1\tthe acting\n")
    cfg = config(train, test_file=test)
    splits, found = cls.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert splits["test"] == [{"text": "the plot", "_where": f"{test}:2"}, {"text": "the acting", "_where": f"{test}:3"}]
    labels = cls.label_list(splits["train"], cfg)
    features = cls.encode(splits["test"], tiny_tokenizer, cfg, labels, with_labels=True)
    assert all("labels" not in f for f in features)
    out = cls.outputs(tiny_model, cls.collate(features, tiny_tokenizer))
    records = cls.predictions(splits["test"], features, out, cfg, labels)
    assert all("gold" not in r for r in records)
    assert cls.metrics(splits["test"], records, cfg, labels) == {}  # predictions only
    # a test file with a blank label column (a Kaggle-style template) is unlabelled too
    blank = write(tmp_path, "blank.csv", "sentence,label\nthe plot,\nthe acting,pos\n")
    rows = cls.load_splits(config(train, test_file=blank))[0]["test"]
    assert "label" not in rows[0] and rows[1]["label"] == "pos"


def test_validation_split_needs_labels(tmp_path):
    train = write(tmp_path, "train.tsv", "sentence\tlabel\ngood\tpos\n")
    dev = write(tmp_path, "dev.tsv", "sentence\nfine\n")
    with pytest.raises(DataError, match=rf"^{dev}:1: missing label column 'label'"):
        cls.load_splits(config(train, validation_file=dev))


@pytest.mark.parametrize("content", ["", "sentence\tlabel\n", "sentence\tlabel\n\n\n"])
def test_empty_file(tmp_path, content):
    train = write(tmp_path, "train.tsv", content)
    with pytest.raises(DataError, match=rf"^{train}: no examples"):
        cls.load_splits(config(train))


def test_tab_separated_file_read_as_csv_suggests_the_delimiter(tmp_path):
    train = write(tmp_path, "train.csv", "sentence\tlabel\ngood fun\t1\n")
    with pytest.raises(DataError, match=rf"^{train}:1: .*one column containing a tab: wrong delimiter\? "
                                        r"set --delimiter tab"):
        cls.load_splits(config(train))
    # ... and the suggested flag reads it.
    assert cls.load_splits(config(train, delimiter="tab"))[0]["train"][0] == {
        "text": "good fun", "label": "1", "_where": f"{train}:2"}


def test_comma_separated_file_read_as_tsv_suggests_the_delimiter(tmp_path):
    train = write(tmp_path, "train.tsv", "text,label\ngood,1\n")
    with pytest.raises(DataError, match=rf"^{train}:1: .*containing a comma: wrong delimiter\? set --delimiter comma"):
        cls.load_splits(config(train))


def test_field_count_mismatch_is_reported_by_the_reader(tmp_path):
    train = write(tmp_path, "train.csv", "sentence\tlabel\nfun , smart\t1\n")  # row splits on its comma
    with pytest.raises(DataError, match=rf"^{train}:2: expected 1 fields .*wrong delimiter\?"):
        cls.load_splits(config(train))


def test_non_numeric_regression_target_names_file_line_and_column(tmp_path):
    train = write(tmp_path, "train.tsv", "text\tscore\na\t0.5\nb\t1.25\nc\thigh\n")
    with pytest.raises(DataError, match=rf"^{train}:4: column 'score': non-numeric regression target 'high'"):
        cls.load_splits(config(train, label_column="score"))


@pytest.mark.parametrize("first, row, column", [
    ('{"text": "ok", "label": 0}', '{"text": "  ", "label": 1}', "text"),
    ('{"text": "ok", "label": 0}', '{"text": null, "label": 1}', "text"),
    ('{"sentence1": "ok", "sentence2": "ok", "label": 0}', '{"sentence1": "a", "sentence2": "", "label": 1}', "sentence2"),
])
def test_empty_text_names_file_line_and_column(tmp_path, first, row, column):
    train = write(tmp_path, "train.jsonl", first + "\n" + row + "\n")
    with pytest.raises(DataError, match=rf"^{train}:2: empty text in column '{column}'"):
        cls.load_splits(config(train))




def test_config_contradictions():
    with pytest.raises(ConfigError, match="label_separator"):
        config(label_separator="|", problem_type="single_label")
    with pytest.raises(ConfigError, match="delimiter"):
        config(delimiter="::")
    with pytest.raises(ConfigError, match="text_pair_column"):
        config(text_column="a", text_pair_column="a")
    assert config(delimiter="tab").delimiter == "\t"


# -------------------------------------------------------------------------------------------- features


def test_pair_encoding_segments_and_separators(tiny_tokenizer):
    examples = [{"text": "the movie", "text_pair": "is good", "label": "pos", "_where": "x:2"}]
    features = cls.encode(examples, tiny_tokenizer, config(), ["neg", "pos"], with_labels=True)
    (f,) = features
    assert tokens(tiny_tokenizer, f["input_ids"]) == ["[CLS]", "the", "movie", "[SEP]", "is", "good", "[SEP]"]
    assert f["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    assert f["attention_mask"] == [1] * 7
    assert f["labels"] == 1 and f["example_index"] == 0


def test_truncation_is_counted_and_pairs_truncate_longest_first(tiny_tokenizer, caplog):
    long_text = "the movie was good and the plot was fun and the acting was great"  # 14 words
    examples = [
        {"text": "good", "_where": "x:2"},
        {"text": long_text, "_where": "x:3"},
        {"text": "the film", "text_pair": long_text, "_where": "x:4"},
    ]
    cfg = config(max_seq_length=8)
    logger = logging.getLogger("mlm")
    logger.addHandler(caplog.handler)  # run.py's console setup may stop propagation to the root logger
    try:
        with caplog.at_level(logging.INFO, logger="mlm"):
            single = cls.encode(examples[:2], tiny_tokenizer, cfg, ["0"], with_labels=False)
            pair = cls.encode(examples[2:], tiny_tokenizer, cfg, ["0"], with_labels=False)
    finally:
        logger.removeHandler(caplog.handler)
    assert "1 of 2 examples truncated to max_seq_length=8" in caplog.text
    assert "1 of 1 examples truncated to max_seq_length=8" in caplog.text
    assert tokens(tiny_tokenizer, single[0]["input_ids"]) == ["[CLS]", "good", "[SEP]"]  # short ones untouched
    assert tokens(tiny_tokenizer, single[1]["input_ids"]) == ["[CLS]", "the", "movie", "was", "good", "and", "the", "[SEP]"]
    # longest_first takes tokens from the longer text only: the short first text keeps both words.
    assert tokens(tiny_tokenizer, pair[0]["input_ids"]) == ["[CLS]", "the", "film", "[SEP]", "the", "movie", "was", "[SEP]"]
    assert pair[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_collate_pads_to_the_longest_with_the_tokenizer_pad_id():
    # An odd pad id (7) so that padding cannot hide behind 0; left padding is honoured too.
    features = [
        {"input_ids": [2, 11, 3], "attention_mask": [1, 1, 1], "token_type_ids": [0, 0, 0], "labels": 1, "example_index": 0},
        {"input_ids": [2, 11, 12, 13, 3], "attention_mask": [1] * 5, "token_type_ids": [0, 0, 0, 1, 1], "labels": 0,
         "example_index": 1},
    ]
    right = cls.collate(features, SimpleNamespace(pad_token_id=7, padding_side="right", pad_token_type_id=0))
    assert set(right) == {"input_ids", "attention_mask", "token_type_ids", "labels"}  # no bookkeeping keys
    assert right["input_ids"].tolist() == [[2, 11, 3, 7, 7], [2, 11, 12, 13, 3]]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert right["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert right["labels"].dtype == torch.long and right["labels"].tolist() == [1, 0]
    left = cls.collate(features, SimpleNamespace(pad_token_id=7, padding_side="left", pad_token_type_id=0))
    assert left["input_ids"].tolist()[0] == [7, 7, 2, 11, 3]
    assert left["attention_mask"].tolist()[0] == [0, 0, 1, 1, 1]


def test_collate_of_encoded_text_uses_the_real_pad_token(tiny_tokenizer):
    examples = [{"text": "good", "_where": "x:1"}, {"text": "the movie was fun", "_where": "x:2"}]
    features = cls.encode(examples, tiny_tokenizer, config(), ["0"], with_labels=False)
    batch = cls.collate(features, tiny_tokenizer)
    assert batch["input_ids"].shape == (2, 6) and "labels" not in batch
    assert batch["input_ids"][0, 3:].tolist() == [tiny_tokenizer.pad_token_id] * 3
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]


# ---------------------------------------------------------------------------------- loss and outputs


def _batch(tiny_tokenizer, texts, labels):
    examples = [{"text": t, "label": y, "_where": f"x:{i}"} for i, (t, y) in enumerate(zip(texts, labels))]
    return examples, cls.encode(examples, tiny_tokenizer, config(), ["neg", "pos"], with_labels=True)


def test_loss_is_the_sum_of_cross_entropies_and_the_example_count(tiny_tokenizer, tiny_model):
    _, features = _batch(tiny_tokenizer, ["good fun", "a boring plot", "bad"], ["pos", "neg", "neg"])
    batch = cls.collate(features, tiny_tokenizer)
    total, count = cls.loss(tiny_model, batch)
    assert int(count) == 3 and torch.is_tensor(count)
    logits = tiny_model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    mean = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0, 0]))
    assert torch.allclose(total, 3 * mean, atol=1e-5)


def test_regression_and_multi_label_losses(tiny_bert_dir):
    torch.manual_seed(0)
    batch = {"input_ids": torch.tensor([[2, 5, 3], [2, 6, 3]]), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    reg = cls.AutoModel.from_pretrained(tiny_bert_dir, **cls.model_kwargs(config(problem_type="regression"), ["score"])).eval()
    targets = torch.tensor([0.5, 2.0])
    total, count = cls.loss(reg, {**batch, "labels": targets})
    pred = reg(**batch).logits.squeeze(-1)
    assert int(count) == 2 and torch.allclose(total, ((pred - targets) ** 2).sum(), atol=1e-6)

    multi = cls.AutoModel.from_pretrained(
        tiny_bert_dir, **cls.model_kwargs(config(problem_type="multi_label"), ["a", "b", "c"])).eval()
    hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    total, count = cls.loss(multi, {**batch, "labels": hot})
    mean = torch.nn.functional.binary_cross_entropy_with_logits(multi(**batch).logits, hot)  # over B x C
    assert int(count) == 2 and torch.allclose(total, 2 * mean, atol=1e-6)  # = per-example class means, summed


def test_outputs_predictions_and_metrics(tiny_tokenizer, tiny_model):
    examples, features = _batch(tiny_tokenizer, ["good fun", "a boring plot", "bad"], ["pos", "neg", "neg"])
    cfg = config(problem_type="single_label")
    out = cls.outputs(tiny_model, cls.collate(features, tiny_tokenizer))
    assert len(out) == 3 and all(isinstance(o, np.ndarray) and o.shape == (2,) for o in out)
    records = cls.predictions(examples, features, out, cfg, ["neg", "pos"])
    assert [r["text"] for r in records] == ["good fun", "a boring plot", "bad"]
    for record, logits in zip(records, out):
        assert set(record) == {"text", "label", "score", "probabilities", "gold", "source"}
        assert record["label"] == ["neg", "pos"][int(np.argmax(logits))]
        assert record["score"] == pytest.approx(max(record["probabilities"].values()))
        assert sum(record["probabilities"].values()) == pytest.approx(1.0)
    json.dumps(records)  # JSON-able
    scores = cls.metrics(examples, records, cfg, ["neg", "pos"])
    correct = sum(r["label"] == r["gold"] for r in records)
    assert scores["accuracy"] == pytest.approx(correct / 3)
    assert {"macro_f1", "mcc", "per_class"} <= set(scores)


def test_predictions_from_hand_made_logits_for_each_problem_type():
    examples = [{"text": "a", "text_pair": "b", "label": "y", "_where": "x:1"}, {"text": "c", "_where": "x:2"}]
    features = [{"example_index": 1}, {"example_index": 0}]  # any order in, example order out
    out = [np.array([0.0, 0.0]), np.array([0.0, np.log(3.0)])]
    cfg = config(problem_type="single_label")
    first, second = cls.predictions(examples, features, out, cfg, ["x", "y"])
    assert first == {"text": "a", "text_pair": "b", "label": "y", "score": pytest.approx(0.75),
                     "probabilities": {"x": pytest.approx(0.25), "y": pytest.approx(0.75)}, "gold": "y", "source": "x:1"}
    assert second["label"] == "x" and second["score"] == pytest.approx(0.5) and "gold" not in second

    reg = cls.predictions([{"text": "a", "label": 2.5, "_where": "x:1"}], [{"example_index": 0}], [np.array([1.5])],
                          config(problem_type="regression"), ["score"])
    assert reg == [{"text": "a", "score": 1.5, "gold": 2.5, "source": "x:1"}]
    assert cls.metrics([], reg, config(problem_type="regression"), ["score"])["mse"] == pytest.approx(1.0)

    multi_cfg = config(problem_type="multi_label")
    (rec,) = cls.predictions([{"text": "a", "label": ["p"], "_where": "x:1"}], [{"example_index": 0}],
                             [np.array([2.0, -1.0, 0.5])], multi_cfg, ["p", "q", "r"])
    assert rec["labels"] == ["p", "r"] and rec["gold"] == ["p"]
    assert rec["scores"] == [pytest.approx(1 / (1 + np.exp(-2.0))), pytest.approx(1 / (1 + np.exp(-0.5)))]
    assert cls.metrics([], [rec], multi_cfg, ["p", "q", "r"])["accuracy"] == 0.0  # subset accuracy: {p, r} != {p}


# ----------------------------------------------------------------------------------- hub and predict


def test_hub_dataset_class_label_ids_become_names(monkeypatch):
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    data = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 0]}, features=features),
        "validation": datasets.Dataset.from_dict({"sentence": ["fun"], "label": [1]}, features=features),
        "test": datasets.Dataset.from_dict({"sentence": ["plot"], "label": [-1]}, features=features),  # GLUE style
    })
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: data)
    cfg = cls.Config(dataset_name="glue", dataset_config_name="sst2")
    splits, found = cls.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert splits["train"] == [{"text": "good", "label": "positive", "_where": "glue[train]:1"},
                               {"text": "bad", "label": "negative", "_where": "glue[train]:2"}]
    assert splits["test"] == [{"text": "plot", "_where": "glue[test]:1"}]
    assert cls.label_list(splits["train"], cfg) == ["negative", "positive"]


@pytest.mark.parametrize("header,flags,text,pair", [
    ("question,sentence,label", {}, "question", "sentence"),                          # QNLI
    ("premise,hypothesis,label", {}, "premise", "hypothesis"),                        # MNLI / SNLI
    ("id,sentence1,sentence2,label", {"text_column": "sentence1"}, "sentence1", "sentence2"),
    ("sentence1,sentence2,label", {"text_pair_column": "none"}, "sentence1", None),   # explicitly single texts
    ("review,other,label", {"text_column": "review"}, "review", None),
])
def test_pair_layouts_are_read_as_pairs_and_the_choice_is_saved(tmp_path, header, flags, text, pair):
    values = ",".join("x" if c != "label" else "1" for c in header.split(","))
    cfg = config(write(tmp_path, "train.csv", f"{header}\n{values}\n"), **flags)
    splits, found = cls.load_splits(cfg)
    (example,) = splits["train"]
    assert example.get("text_pair") == ("x" if pair else None)
    # returned and recorded, so validation files, mlm_task.json and `mlm predict` read the same kind of input
    cfg = cfg.with_values(found)
    assert cfg.text_pair_column == (pair or cls_config.NO_PAIR) and cls_inputs.is_pair_model(cfg) is (pair is not None)
    assert cfg.text_column == (text if pair or "text_column" in flags else None)  # single: found per file


def test_single_text_files_may_name_their_text_column_differently(tmp_path):
    cfg = config(write(tmp_path, "train.csv", "text,label\ngood,pos\nbad,neg\n"),
                 validation_file=write(tmp_path, "dev.tsv", "sentence\tlabel\nfun\tpos\n"))
    splits, found = cls.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert splits["validation"][0]["text"] == "fun" and cfg.text_pair_column == cls_config.NO_PAIR
    (ex,) = cls.examples_from_file(write(tmp_path, "in.jsonl", '{"sentence": "x"}\n'), cfg)  # predict, too
    assert ex["text"] == "x"


def test_predict_inputs_must_match_the_model_pairing(tmp_path):
    pair_cfg = config(text_column="premise", text_pair_column="hypothesis")
    with pytest.raises(ConfigError, match="--text_pair: this model classifies text pairs"):
        cls.examples_from_text(pair_cfg, text="a")
    with pytest.raises(DataError, match="this model classifies text pairs"):
        cls.examples_from_file(write(tmp_path, "in.txt", "a\n"), pair_cfg)
    with pytest.raises(DataError, match="missing text pair column 'hypothesis'"):
        cls.examples_from_file(write(tmp_path, "in.csv", "premise\na\n"), pair_cfg)
    with pytest.raises(ConfigError, match="--text_pair: this model classifies single texts"):
        cls.examples_from_text(config(text_column="text", text_pair_column="none"), text="a", text_pair="b")


def test_examples_from_text_and_files(tmp_path):
    cfg = config()
    assert cls.examples_from_text(cfg, text="a film", text_pair=None) == [{"text": "a film", "_where": "--text"}]
    assert cls.examples_from_text(cfg, text="a", text_pair="b")[0]["text_pair"] == "b"
    with pytest.raises(ConfigError, match="--question"):
        cls.examples_from_text(cfg, text="a", question="who?")
    txt = write(tmp_path, "in.txt", "good fun\n\nbad plot\n")
    assert cls.examples_from_file(txt, cfg) == [{"text": "good fun", "_where": f"{txt}:1"},
                                                {"text": "bad plot", "_where": f"{txt}:3"}]
    tsv = write(tmp_path, "in.tsv", "index\tsentence\n0\tgood\n")
    assert cls.examples_from_file(tsv, cfg) == [{"text": "good", "_where": f"{tsv}:2"}]
    with pytest.raises(DataError, match="no text"):
        cls.examples_from_file(write(tmp_path, "empty.txt", "\n"), cfg)


def test_predict_with_a_saved_config_namespace(tmp_path, tiny_tokenizer, tiny_model):
    """`mlm predict` passes the saved run config as a SimpleNamespace and labeled files stay usable."""
    import dataclasses

    saved = SimpleNamespace(**dataclasses.asdict(config(problem_type="single_label")))
    path = write(tmp_path, "in.jsonl", '{"text": "good fun", "label": "pos"}\n{"text": "bad"}\n')
    examples = cls.examples_from_file(path, saved)
    features = cls.encode(examples, tiny_tokenizer, saved, ["neg", "pos"], with_labels=False)
    out = cls.outputs(tiny_model, cls.collate(features, tiny_tokenizer))
    records = cls.predictions(examples, features, out, saved, ["neg", "pos"])
    assert records[0]["gold"] == "pos" and "gold" not in records[1]


# ------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", ["cls.yaml", "cls-tiny.yaml"])
def test_recipes_load_into_the_config(name, tmp_path):
    path = os.path.join(RECIPES, name)
    recipe = load_recipe(path, cls.Config)  # unknown keys raise
    assert recipe["task"] == "cls"
    # data_dir must exist; point it at an empty folder so the test does not need the shared data.
    cfg = parse_config(cls.Config, ["--recipe", path, "--data_dir", str(tmp_path)])
    assert cfg.metric_for_best_model == "accuracy" and cfg.greater_is_better is True
    if name == "cls.yaml":
        assert (cfg.learning_rate, cfg.per_device_train_batch_size, cfg.max_seq_length, cfg.warmup_ratio) == (
            5e-5, 32, 64, 0.1)
        assert cfg.train_file == os.path.join(str(tmp_path), "train.tsv")  # DATA=folder replaces the folder
    else:
        assert cfg.max_steps == 4


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.data
def test_sst2_counts_and_labels(data_dir, tiny_tokenizer):
    folder = os.path.join(data_dir, "sst2")
    cfg = config(os.path.join(folder, "train.tsv"), validation_file=os.path.join(folder, "dev.tsv"),
                 test_file=os.path.join(folder, "test.tsv"), max_seq_length=64)
    splits, found = cls.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert {k: len(v) for k, v in splits.items()} == {"train": 67_349, "validation": 872, "test": 1_821}
    labels = cls.label_list(splits["train"], cfg)
    assert labels == ["0", "1"] and cfg.problem_type == "single_label"
    assert sum(ex["label"] == "1" for ex in splits["train"]) == 37_569  # README: 1: 37,569, 0: 29,780
    assert sum(ex["label"] == "1" for ex in splits["validation"]) == 444
    assert all("label" not in ex for ex in splits["test"])
    features = cls.encode(splits["validation"], tiny_tokenizer, cfg, labels, with_labels=True)
    assert len(features) == 872 and max(len(f["input_ids"]) for f in features) <= 64
