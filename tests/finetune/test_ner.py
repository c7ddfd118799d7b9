"""finetune/ner/ on hand-made data: reading, tag schemes, sub-word alignment, windows, predictions."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from finetune.ner import task as ner
from finetune.ner import data as ner_data
from finetune.ner import tags as ner_tags
from finetune.ner import text as ner_text
from finetune.ner import windows as ner_windows
from mlm.core.config import parse_config
from mlm.errors import ConfigError, DataError

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-PER", "I-PER"]
ID = {label: i for i, label in enumerate(LABELS)}

# A real-looking CoNLL-2003 snippet: 4 columns, IOB1 tags, -DOCSTART-, a B- between two same-type entities,
# a tab-separated line and trailing whitespace, several blank lines in a row.
CONLL = """-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O  \t

Peter NNP I-NP I-PER
Blackburn\tNNP\tI-NP\tI-PER


-DOCSTART- -X- O O

Paris NNP I-NP I-LOC
Berlin NNP I-NP B-LOC
London NNP I-NP I-LOC
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def config(**kw):
    kw.setdefault("train_file", "unused.conll")
    return ner.Config(**kw)


def example(tokens, tags=None, where="t.conll:1"):
    ex = {"tokens": tokens, "_where": where}
    if tags is not None:
        ex["tags"] = tags
    return ex


def perfect_outputs(features, num_labels=len(LABELS)):
    """Logits that put all the mass on the gold label id at each labelled token (others: 'O')."""
    outs = []
    for f in features:
        logits = np.full((len(f["input_ids"]), num_labels), -10.0, dtype=np.float32)
        for t, label in enumerate(f["labels"]):
            logits[t, label if label >= 0 else 0] = 10.0
        outs.append(logits)
    return outs


def outputs_choosing(features, tag_of_word):
    """Logits choosing tag_of_word[w] at every token of word w."""
    outs = []
    for f in features:
        logits = np.zeros((len(f["input_ids"]), len(LABELS)), dtype=np.float32)
        for t, w in enumerate(f["word_ids"]):
            if w is not None:
                logits[t, ID[tag_of_word[w]]] = 10.0
        outs.append(logits)
    return outs


# ------------------------------------------------------------------------------------------- reading


def test_conll_sentences_skip_docstart_and_blank_lines_and_become_iob2(tmp_path):
    path = write(tmp_path, "eng.train", CONLL)
    sentences = ner_data.read_file(path, config())
    assert [s["tokens"] for s in sentences] == [
        ["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["Paris", "Berlin", "London"]
    ]
    # IOB1 -> IOB2: every entity starts with B-; IOB1's B-LOC (a LOC right after a LOC) stays a new entity.
    assert [s["tags"] for s in sentences] == [
        ["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"], ["B-LOC", "B-LOC", "I-LOC"]
    ]
    assert [s["_where"] for s in sentences] == [f"{path}:3", f"{path}:8", f"{path}:14"]


def test_conll_with_byte_order_mark_crlf_and_gzip(tmp_path):
    import gzip

    text = "\ufeffJohn\tB-PER\r\nruns\tO\r\n\r\n"
    with gzip.open(tmp_path / "t.conll.gz", "wt", encoding="utf-8", newline="") as f:
        f.write(text)
    for path in (write(tmp_path, "t.conll", text), str(tmp_path / "t.conll.gz")):
        assert [(s["tokens"], s["tags"]) for s in ner_data.read_file(path, config())] == [(["John", "runs"], ["B-PER", "O"])]
    nbsp = write(tmp_path, "n.conll", "10\u00a0000 O\nvoters O\n")  # a no-break space is part of the word
    assert ner_data.read_file(nbsp, config())[0]["tokens"] == ["10\u00a0000", "voters"]


def test_test_split_may_have_no_tags(tmp_path):
    train = write(tmp_path, "train.conll", "John B-PER\nruns O\n")
    for name, text in (("test.conll", "Paris\n\nJohn\nruns\n"), ("test.jsonl", '{"tokens": ["Paris"]}\n')):
        cfg = config(train_file=train, test_file=write(tmp_path, name, text))
        splits, found = ner.load_splits(cfg)
        cfg = cfg.with_values(found)
        assert splits["test"][0]["tokens"] == ["Paris"] and all("tags" not in ex for ex in splits["test"])
        assert ner.metrics(splits["test"], [{"predicted_tags": ["O"]}] * len(splits["test"]), cfg, LABELS) == {}
    with pytest.raises(DataError, match="name the same column"):  # validation still needs tags
        ner.load_splits(config(train_file=train, validation_file=write(tmp_path, "dev.conll", "Paris\n")))


def test_custom_token_and_tag_columns(tmp_path):
    path = write(tmp_path, "t.conll", "B-PER x John\nO y runs\n\nB-LOC z Paris\n")
    sentences = ner_data.read_file(path, config(token_column=2, tag_column=0))
    assert [s["tokens"] for s in sentences] == [["John", "runs"], ["Paris"]]
    assert [s["tags"] for s in sentences] == [["B-PER", "O"], ["B-LOC"]]
    # The CoNLL chunk column (2) read as the tag column: its IOB1 NP chunks become IOB2.
    chunks = ner_data.read_file(write(tmp_path, "c.conll", CONLL), config(tag_column=2))
    assert chunks[0]["tags"] == ["B-NP", "B-VP", "B-NP", "I-NP"]


def test_iobes_is_detected_and_converted(tmp_path):
    path = write(tmp_path, "t.conll", "John S-PER\nvisited O\nNew B-LOC\nYork I-LOC\nCity E-LOC\n")
    assert ner_tags.detect_scheme([["S-PER", "O"]]) == "iobes"
    assert ner_tags.detect_scheme([["O", "I-PER"]]) == "iob1"
    assert ner_tags.detect_scheme([["B-PER", "I-PER", "O"]]) == "iob2"
    assert ner_data.read_file(path, config())[0]["tags"] == ["B-PER", "O", "B-LOC", "I-LOC", "I-LOC"]


@pytest.mark.parametrize("tags,scheme,why", [
    (["O", "S-PER"], "iobes", "an E-/S- tag (S-PER)"),
    (["B-LOC", "L-LOC"], "bilou", "an L-/U- tag (L-LOC)"),
    (["PER", "O"], "io", "no tag has a B-/I- prefix (PER)"),
    (["B-PER", "I-PER", "O", "I-LOC"], "iob1", "an entity starts with I- (I-LOC after O)"),
    (["B-PER", "I-PER", "O"], "iob2", "every entity starts with B-"),
])
def test_the_detected_scheme_is_logged_with_the_tag_that_decided_it(tmp_path, tags, scheme, why, mlm_log):
    assert ner_tags.explain_scheme([tags]) == (scheme, why)
    path = write(tmp_path, "t.conll", "".join(f"w{i} {t}\n" for i, t in enumerate(tags)))
    ner_data.read_file(path, config())
    assert f"{path}: tag_scheme auto -> {scheme}: {why}" in mlm_log.text
    mlm_log.clear()
    ner_data.read_file(path, config(tag_scheme=scheme))  # a stated scheme is not "chosen": nothing to explain
    assert "tag_scheme auto" not in mlm_log.text


@pytest.mark.parametrize("tags,scheme,iob2", [
    (["U-PER", "O", "B-LOC", "I-LOC", "L-LOC", "U-LOC"], "bilou", ["B-PER", "O", "B-LOC", "I-LOC", "I-LOC", "B-LOC"]),
    # IO: bare labels; a run of one label is one entity (types may contain hyphens)
    (["PER", "PER", "O", "geo-loc", "ORG"], "io", ["B-PER", "I-PER", "O", "B-geo-loc", "B-ORG"]),
])
def test_bilou_and_io_tags_are_detected_and_converted(tmp_path, tags, scheme, iob2):
    words = [f"w{i}" for i in range(len(tags))]
    path = write(tmp_path, "t.conll", "".join(f"{w} {t}\n" for w, t in zip(words, tags)))
    assert ner_tags.detect_scheme([tags]) == scheme
    assert ner_data.read_file(path, config())[0]["tags"] == iob2
    assert ner_data.read_file(path, config(tag_scheme=scheme))[0]["tags"] == iob2
    with pytest.raises(DataError, match="is not iob2"):  # a stated scheme is enforced
        ner_data.read_file(path, config(tag_scheme="iob2"))


def test_jsonl_sentences_and_ner_tags_column(tmp_path):
    rows = [{"tokens": ["John", "Smith"], "tags": ["I-PER", "I-PER"]}, {"tokens": [], "tags": []},
            {"tokens": ["Paris"], "tags": ["B-LOC"]}]
    path = write(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    sentences = ner_data.read_file(path, config())
    assert [(s["tokens"], s["tags"], s["_where"]) for s in sentences] == [
        (["John", "Smith"], ["B-PER", "I-PER"], f"{path}:1"), (["Paris"], ["B-LOC"], f"{path}:3")
    ]
    hf_style = write(tmp_path, "hf.jsonl", json.dumps({"tokens": ["Paris"], "ner_tags": ["B-LOC"]}) + "\n")
    assert ner_data.read_file(hf_style, config())[0]["tags"] == ["B-LOC"]


def test_hub_dataset_with_class_label_tags(tmp_path):
    import datasets

    features = datasets.Features({
        "tokens": datasets.List(datasets.Value("string")),
        "ner_tags": datasets.List(datasets.ClassLabel(names=["O", "B-PER", "I-PER"])),
    })
    for split in ("train", "validation"):
        rows = {"tokens": [["John", "Smith", "ran"]], "ner_tags": [[1, 2, 0]]}
        data = datasets.Dataset.from_dict(rows, features=features)
        data.to_parquet(str(tmp_path / f"{split}.parquet"))
    splits = ner.load_splits(ner.Config(dataset_name=str(tmp_path)))[0]
    assert sorted(splits) == ["train", "validation"]
    assert splits["train"][0]["tokens"] == ["John", "Smith", "ran"]
    assert splits["train"][0]["tags"] == ["B-PER", "I-PER", "O"]


def test_load_splits_reads_each_configured_file(tmp_path):
    train = write(tmp_path, "train.conll", CONLL)
    dev = write(tmp_path, "dev.conll", "Paris I-LOC\n\nJohn I-PER\n")
    splits = ner.load_splits(config(train_file=train, validation_file=dev))[0]
    assert sorted(splits) == ["train", "validation"]
    assert len(splits["train"]) == 3 and len(splits["validation"]) == 2
    assert splits["validation"][1] == {"tokens": ["John"], "tags": ["B-PER"], "_where": f"{dev}:3", "_lines": [3]}


# -------------------------------------------------------------------------------------- data errors


@pytest.mark.parametrize(
    "name, text, kw, line, words",
    [
        ("cols.conll", "John NNP B-PER\nruns VBZ\n", {}, 2, "2 columns, but line 1 has 3"),
        ("range.conll", "-DOCSTART- -X- O O\n\nJohn B-PER\n", {"tag_column": 3}, 3, "tag_column=3 is out of range"),
        ("range2.conll", "John B-PER\n", {"token_column": -3}, 1, "token_column=-3 is out of range"),
        ("one.conll", "John\nruns\n", {}, 1, "name the same column"),
        ("data.txt", '{"tokens": ["John"], "tags": ["B-PER"]}\n', {}, 1, "looks like JSON"),
        ("bare.conll", "John B-PER\n\nParis LOC\n", {}, 3, "tag 'LOC' is not iob2 (detected"),
        ("iobes.conll", "John S-PER\n", {"tag_scheme": "iob2"}, 1, "tag 'S-PER' is not iob2"),
        ("empty-type.conll", "John O\nruns B-\n", {}, 2, "tag 'B-'"),
        ("mismatch.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n', {}, 2,
         "2 tokens but 1 tags"),
        ("ints.jsonl", '{"tokens": ["a"], "tags": [0]}\n', {}, 1, "must be a list of strings"),
        ("missing.jsonl", '{"words": ["a"], "tags": ["O"]}\n', {}, 1, "missing column 'tokens'"),
    ],
)
def test_bad_files_raise_data_error_with_file_and_line(tmp_path, name, text, kw, line, words):
    path = write(tmp_path, name, text)
    with pytest.raises(DataError) as err:
        ner_data.read_file(path, config(**kw))
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert words in str(err.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        ner_data.read_file(str(tmp_path / "nope.conll"), config())


def test_type_unseen_in_training_names_the_dev_line(tmp_path, tiny_tokenizer):
    train = ner_data.read_file(write(tmp_path, "train.conll", "John I-PER\n"), config())
    dev_path = write(tmp_path, "dev.conll", "John I-PER\n\nsaw O\nthe O\nApple I-ORG\n")
    dev = ner_data.read_file(dev_path, config())
    labels = ner.label_list(train, config())
    assert labels == ["O", "B-PER", "I-PER"]
    # run.py encodes evaluation splits without labels: the gold tags are still checked.
    for with_labels in (True, False):
        with pytest.raises(DataError) as err:
            ner.encode(dev, tiny_tokenizer, config(), labels, with_labels=with_labels)
        assert str(err.value).startswith(f"{dev_path}:5: tag 'B-ORG'")
    with pytest.raises(DataError, match="t.conll:1: no tags to train on"):
        ner.encode([example(["John"])], tiny_tokenizer, config(), labels, with_labels=True)


# ------------------------------------------------------------------------------------------ labels


def test_label_list_is_sorted_with_both_prefixes_for_every_type():
    train = [example(["a", "b"], ["B-PER", "O"]), example(["c", "d"], ["B-LOC", "I-LOC"]), example(["e"], ["B-MISC"])]
    assert ner.label_list(train, config()) == LABELS
    kwargs = ner.model_kwargs(config(), LABELS)
    assert kwargs["num_labels"] == 7 and kwargs["id2label"][5] == "B-PER" and kwargs["label2id"]["I-LOC"] == 2
    with pytest.raises(DataError, match="no entity tags"):
        ner.label_list([example(["a"], ["O"])], config())


# ------------------------------------------------------------------------------------------ features


def test_labels_on_first_sub_word_only(tiny_tokenizer):
    ex = example(["John", "visited", "unbelievable", "Paris"], ["B-PER", "O", "B-MISC", "B-LOC"])
    (f,) = ner.encode([ex], tiny_tokenizer, config(), LABELS, with_labels=True)
    assert tiny_tokenizer.convert_ids_to_tokens(f["input_ids"]) == [
        "[CLS]", "john", "visited", "un", "##believ", "##able", "paris", "[SEP]"
    ]
    assert f["word_ids"] == [None, 0, 1, 2, 2, 2, 3, None]
    assert f["labels"] == [-100, ID["B-PER"], ID["O"], ID["B-MISC"], -100, -100, ID["B-LOC"], -100]
    assert f["owned_words"] == [0, 1, 2, 3] and f["example_index"] == 0
    assert f["attention_mask"] == [1] * 8 and f["token_type_ids"] == [0] * 8


def test_label_all_tokens_puts_the_i_tag_on_later_sub_words(tiny_tokenizer):
    ex = example(["John", "visited", "unbelievable", "Paris"], ["B-PER", "O", "B-MISC", "I-MISC"])
    (f,) = ner.encode([ex], tiny_tokenizer, config(label_all_tokens=True), LABELS, with_labels=True)
    B, I = ID["B-MISC"], ID["I-MISC"]
    assert f["labels"] == [-100, ID["B-PER"], ID["O"], B, I, I, I, -100]


def test_make_windows_and_owner_rule_on_lengths():
    # Ten one-piece words, 6 per window, overlap up to 2: windows [0, 6) and [4, 10).
    assert ner_windows.make_windows([1] * 10, budget=6, stride=2) == [(0, 6), (4, 10)]
    # Words 4 and 5 are in both: 4 has 4 before / 1 after in window 0, 0 before in window 1 -> window 0;
    # 5 has 0 after in window 0 and 1 / 4 in window 1 -> window 1.
    assert ner_windows._owners([1] * 10, [(0, 6), (4, 10)]) == [0] * 5 + [1] * 5
    # Overlap is whole words of at most `stride` pieces: after [0, 2) the next window goes back one word
    # (1 piece), not two (4 pieces); after [1, 4) it goes back one word of 2 pieces.
    assert ner_windows.make_windows([3, 1, 2, 2, 2], budget=5, stride=2) == [(0, 2), (1, 4), (3, 5)]
    assert ner_windows.make_windows([2, 2], budget=4, stride=0) == [(0, 2)]
    assert ner_windows.make_windows([2, 2, 2], budget=2, stride=0) == [(0, 1), (1, 2), (2, 3)]


def test_long_sentence_is_windowed_and_every_word_predicted_once(tiny_tokenizer):
    words = ("John visited unbelievable Paris and London when the river was good the city of Berlin was "
             "great john's apple visited x y z new york city").split()
    tags = ["B-PER", "O", "O", "B-LOC", "O", "B-LOC"] + ["O"] * 8 + ["B-LOC"] + ["O", "O", "B-PER", "B-MISC", "O",
            "O", "O", "O", "B-LOC", "I-LOC", "I-LOC"]
    assert len(tags) == len(words)
    ex = example(words, tags)
    cfg = config(max_seq_length=12, stride=4)
    features = ner.encode([ex], tiny_tokenizer, cfg, LABELS, with_labels=True)
    assert len(features) > 3
    owned = [w for f in features for w in f["owned_words"]]
    assert sorted(owned) == list(range(len(words)))  # every word exactly once
    for f, g in zip(features, features[1:]):
        assert len(f["input_ids"]) <= 12
        window = {w for w in f["word_ids"] if w is not None}
        assert window & set(g["word_ids"]), "consecutive windows overlap"
        overlap_tokens = sum(1 for w in g["word_ids"] if w in window)
        assert overlap_tokens <= 4
    for f in features:  # only owned words are the window's to predict; labels still cover the whole window
        assert f["word_ids"][0] is None and f["word_ids"][-1] is None
        assert set(f["owned_words"]) <= set(f["word_ids"])
    records = ner.predictions([ex], features, perfect_outputs(features), cfg, LABELS)
    assert records[0]["predicted_tags"] == tags
    assert ner.metrics([ex], records, cfg, LABELS)["f1"] == 1.0


def test_window_choice_matters_predictions_come_from_the_owner(tiny_tokenizer):
    """Windows disagree on the overlap; the owning window's vote is the one that counts."""
    words = "a b c d e f g h i j".split()
    cfg = config(max_seq_length=8, stride=2)  # 6 word pieces per window: windows [0, 6) and [4, 10)
    features = ner.encode([example(words)], tiny_tokenizer, cfg, LABELS, with_labels=False)
    assert [f["owned_words"] for f in features] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    outs = []
    for k, f in enumerate(features):  # window 0 says PER everywhere, window 1 says LOC everywhere
        logits = np.zeros((len(f["input_ids"]), len(LABELS)), dtype=np.float32)
        logits[:, ID["B-PER" if k == 0 else "B-LOC"]] = 5.0
        outs.append(logits)
    (record,) = ner.predictions([example(words)], features, outs, cfg, LABELS)
    assert record["predicted_tags"] == ["B-PER"] * 5 + ["B-LOC"] * 5


def test_single_word_longer_than_a_window_is_cut_but_predicted(tiny_tokenizer):
    cfg = config(max_seq_length=8, stride=2)
    ex = example(["John", "abcdefghijklmnop", "Paris"], ["B-PER", "B-MISC", "B-LOC"])
    features = ner.encode([ex], tiny_tokenizer, cfg, LABELS, with_labels=True)
    assert all(len(f["input_ids"]) <= 8 for f in features)
    records = ner.predictions([ex], features, perfect_outputs(features), cfg, LABELS)
    assert records[0]["predicted_tags"] == ["B-PER", "B-MISC", "B-LOC"]


def test_word_that_tokenizes_to_nothing_is_tagged_o(tiny_tokenizer):
    ex = example(["John", "\u200b", "\x01", "Paris"], ["B-PER", "I-PER", "O", "B-LOC"])
    (f,) = ner.encode([ex], tiny_tokenizer, config(), LABELS, with_labels=True)
    assert f["word_ids"] == [None, 0, 3, None]
    assert f["owned_words"] == [0, 3]
    every_word_per = {0: "B-PER", 1: "B-PER", 2: "B-PER", 3: "B-PER"}
    (record,) = ner.predictions([ex], [f], outputs_choosing([f], every_word_per), config(), LABELS)
    assert record["predicted_tags"] == ["B-PER", "O", "O", "B-PER"]
    assert record["gold_tags"] == ["B-PER", "I-PER", "O", "B-LOC"]


def test_collate_pads_right_with_pad_id_and_ignored_labels(tiny_tokenizer):
    features = ner.encode(
        [example(["John"], ["B-PER"]), example(["unbelievable", "Paris"], ["O", "B-LOC"])],
        tiny_tokenizer, config(), LABELS, with_labels=True,
    )
    batch = ner.collate(features, tiny_tokenizer)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
    assert batch["input_ids"].shape == (2, 6) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0, 3:].tolist() == [tiny_tokenizer.pad_token_id] * 3
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert batch["labels"].tolist() == [[-100, ID["B-PER"], -100, -100, -100, -100],
                                         [-100, ID["O"], -100, -100, ID["B-LOC"], -100]]


# ---------------------------------------------------------------------------------------- predictions


def test_invalid_i_after_o_is_repaired_and_entities_scored(tiny_tokenizer):
    ex = example(["the", "John", "Smith", "Paris", "x"], ["O", "B-PER", "I-PER", "B-LOC", "O"])
    (f,) = ner.encode([ex], tiny_tokenizer, config(), LABELS, with_labels=False)
    logits = np.zeros((len(f["input_ids"]), len(LABELS)), dtype=np.float32)
    chosen = ["O", "I-PER", "I-PER", "I-LOC", "O"]  # argmax: I- after O, and I-LOC right after PER
    for t, w in enumerate(f["word_ids"]):
        if w is not None:
            logits[t, ID[chosen[w]]] = 2.0 if w == 2 else 4.0
    (record,) = ner.predictions([ex], [f], [logits], config(), LABELS)
    assert record["predicted_tags"] == ["O", "B-PER", "I-PER", "B-LOC", "O"]
    p_hi = np.exp(4.0) / (np.exp(4.0) + 6)  # softmax prob of the chosen label, the other 6 logits are 0
    p_lo = np.exp(2.0) / (np.exp(2.0) + 6)
    assert [(e["type"], e["start_word"], e["end_word"], e["text"]) for e in record["entities"]] == [
        ("PER", 1, 3, "John Smith"), ("LOC", 3, 4, "Paris")
    ]
    assert record["entities"][0]["score"] == pytest.approx((p_hi + p_lo) / 2, abs=1e-6)
    assert record["entities"][1]["score"] == pytest.approx(p_hi, abs=1e-6)
    json.dumps(record)  # JSON-able as written to predictions.jsonl


def test_metrics_are_conlleval_entity_scores():
    examples = [example(["a", "b", "c"], ["B-PER", "I-PER", "O"]), example(["d", "e"], ["B-LOC", "O"])]
    preds = [{"predicted_tags": ["B-PER", "I-PER", "O"]}, {"predicted_tags": ["B-ORG", "O"]}]
    scores = ner.metrics(examples, preds, config(), LABELS)
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5 and scores["f1"] == 0.5
    assert scores["accuracy"] == pytest.approx(4 / 5)
    assert scores["per_type"]["PER"]["f1"] == 1.0 and scores["per_type"]["LOC"]["support"] == 1
    assert ner.metrics([example(["a"])], [{"predicted_tags": ["O"]}], config(), LABELS) == {}


def test_word_without_pieces_inside_an_entity_continues_it(tiny_tokenizer):
    # the zero-width space is removed by BERT's normaliser: no sub-word, no logits of its own
    tokens = ["john", "\u200b", "smith", "visited", "\u200b", "paris"]
    ex = {"tokens": tokens, "_where": "x:1"}
    features = ner.encode([ex], tiny_tokenizer, config(), LABELS, with_labels=False)
    assert 1 not in features[0]["word_ids"] and 4 not in features[0]["word_ids"]
    chosen = {0: "B-PER", 2: "I-PER", 3: "O", 5: "B-LOC"}
    (record,) = ner.predictions([ex], features, outputs_choosing(features, chosen), config(), LABELS)
    assert record["predicted_tags"] == ["B-PER", "I-PER", "I-PER", "O", "O", "B-LOC"]
    assert [(e["type"], e["start_word"], e["end_word"]) for e in record["entities"]] == [("PER", 0, 3), ("LOC", 5, 6)]


def test_predict_reads_conll_files_with_or_without_tags(tmp_path):
    tagged = ner.examples_from_file(write(tmp_path, "dev.tsv", "John\tI-PER\nruns\tO\n\nParis\tI-LOC\n"), config())
    assert [(ex["tokens"], ex["gold_tags"]) for ex in tagged] == [(["John", "runs"], ["B-PER", "O"]),
                                                                   (["Paris"], ["B-LOC"])]
    blind = ner.examples_from_file(write(tmp_path, "test.conll", "-DOCSTART-\n\nJohn\nruns\n\nParis\n"), config())
    assert [ex["tokens"] for ex in blind] == [["John", "runs"], ["Paris"]] and all("gold_tags" not in ex for ex in blind)
    assert blind[1]["_where"] == f"{tmp_path / 'test.conll'}:6"
    # any name, when the lines end in tags (eng.testb) or a -DOCSTART- line opens the file
    named = ner.examples_from_file(write(tmp_path, "eng.testb", "-DOCSTART- -X- O\n\nJohn NNP I-PER\n"), config())
    assert [(ex["tokens"], ex["gold_tags"]) for ex in named] == [(["John"], ["B-PER"])]
    assert ner.examples_from_file(write(tmp_path, "notes", "Paris B-LOC\n"), config())[0]["tokens"] == ["Paris"]
    text = ner.examples_from_file(write(tmp_path, "plain.txt", "I like it O\nJohn ran .\n"), config())
    assert [ex["tokens"] for ex in text] == [["I", "like", "it", "O"], ["John", "ran", "."]]


def test_predict_shows_gold_tags_of_types_the_model_never_saw(tmp_path, tiny_tokenizer):
    (ex,) = ner.examples_from_file(write(tmp_path, "in.jsonl", '{"tokens": ["John", "runs"], "tags": ["B-ANIMAL", "O"]}\n'),
                                   config())
    features = ner.encode([ex], tiny_tokenizer, config(), LABELS, with_labels=False)  # no "never seen" error
    (record,) = ner.predictions([ex], features, outputs_choosing(features, ["B-PER", "O"]), config(), LABELS)
    assert record["gold_tags"] == ["B-ANIMAL", "O"] and record["predicted_tags"] == ["B-PER", "O"]


def test_byte_level_bpe_words_are_encoded_as_in_running_text(tiny_roberta_dir):
    # RoBERTa's tokens carry the space before a word ("ĠSmith"): split words must get it back, as in running text
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    ex = {"tokens": ["John", "Smith", "visited", "Paris"], "tags": ["B-PER", "I-PER", "O", "B-LOC"], "_where": "x:1"}
    (feature,) = ner.encode([ex], tok, config(), LABELS, with_labels=True)
    running = tok(" John Smith visited Paris", add_special_tokens=False)["input_ids"]
    assert feature["input_ids"][1:-1] == running and "token_type_ids" not in feature
    firsts = [t for t, w in enumerate(feature["word_ids"]) if w is not None and w != feature["word_ids"][t - 1]]
    assert [feature["labels"][t] for t in firsts] == [ID[tag] for tag in ex["tags"]]


def test_raw_text_words_keep_character_offsets(tiny_tokenizer):
    text = "  John   Smith visited Paris, (France)!"
    (ex,) = ner.examples_from_text(config(), text=text)
    assert ex["tokens"] == ["John", "Smith", "visited", "Paris", ",", "(", "France", ")", "!"]
    assert all(text[s:e] == w for w, (s, e) in zip(ex["tokens"], ex["offsets"]))
    features = ner.encode([ex], tiny_tokenizer, config(), LABELS, with_labels=False)
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "O", "B-LOC", "O", "O"]
    (record,) = ner.predictions([ex], features, outputs_choosing(features, tags), config(), LABELS)
    assert record["text"] == text and record["predicted_tags"] == tags
    assert [(e["type"], e["start"], e["end"], e["text"]) for e in record["entities"]] == [
        ("PER", 2, 14, "John   Smith"), ("LOC", 23, 28, "Paris"), ("LOC", 31, 37, "France")
    ]


@pytest.mark.parametrize("text,words", [
    ("Boutros-Ghali met U.S. officials, e.g. O'Neill.", ["Boutros-Ghali", "met", "U.S.", "officials", ",", "e.g.",
                                                        "O'Neill", "."]),
    ('"Hi," she said... $5 (50%)', ['"', "Hi", ",", '"', "she", "said", "...", "$", "5", "(", "50", "%", ")"]),
    ("St. Louis signed J. Smith of Clinton's team -- again, didn't he?",
     ["St.", "Louis", "signed", "J.", "Smith", "of", "Clinton", "'s", "team", "--", "again", ",", "did", "n't", "he",
      "?"]),
    # decomposed accents and Devanagari vowel signs / virama are combining marks: part of their word
    ("Mu\u0308ller met \u0928\u0930\u0947\u0902\u0926\u094d\u0930", ["Mu\u0308ller", "met", "\u0928\u0930\u0947\u0902\u0926\u094d\u0930"]),
    ("李明在北京", ["李", "明", "在", "北", "京"]),  # one CJK ideograph per word, as BERT splits them
])
def test_raw_text_is_split_like_ner_corpora(text, words):
    tokens, offsets = ner_text.split_words(text)
    assert tokens == words and [text[s:e] for s, e in offsets] == words


def test_examples_from_file_text_tokens_and_plain_lines(tmp_path):
    path = write(tmp_path, "in.jsonl", json.dumps({"text": "John ran."}) + "\n"
                 + json.dumps({"tokens": ["Paris"], "tags": ["I-LOC"]}) + "\n")
    a, b = ner.examples_from_file(path, config())
    assert a["tokens"] == ["John", "ran", "."] and a["offsets"][2] == [8, 9] and a["_where"] == f"{path}:1"
    assert b["tokens"] == ["Paris"] and b["gold_tags"] == ["B-LOC"]
    lines = ner.examples_from_file(write(tmp_path, "in.txt", "John ran.\n\nParis\n"), config())
    assert [ex["tokens"] for ex in lines] == [["John", "ran", "."], ["Paris"]]
    with pytest.raises(DataError, match=r"in2.jsonl:1: needs 'text'"):
        ner.examples_from_file(write(tmp_path, "in2.jsonl", '{"words": ["a"]}\n'), config())
    multi = ner.examples_from_text(config(), text=["a b", "c"])
    assert [ex["tokens"] for ex in multi] == [["a", "b"], ["c"]]


# --------------------------------------------------------------------------------------------- model


def test_loss_and_outputs_with_a_tiny_model(tiny_bert_dir, tiny_tokenizer):
    torch.manual_seed(0)
    model = ner.AutoModel.from_pretrained(tiny_bert_dir, **ner.model_kwargs(config(), LABELS))
    examples = [example(["John", "visited", "unbelievable", "Paris"], ["B-PER", "O", "O", "B-LOC"]),
                example(["the", "river"], ["O", "B-LOC"])]
    features = ner.encode(examples, tiny_tokenizer, config(), LABELS, with_labels=True)
    batch = ner.collate(features, tiny_tokenizer)
    total, count = ner.loss(model, batch)
    assert int(count) == 6 == sum(label != -100 for f in features for label in f["labels"])
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (B, T, C)
        expected = torch.nn.functional.cross_entropy(logits.view(-1, 7), batch["labels"].view(-1), reduction="mean")
    assert total.item() == pytest.approx(expected.item() * 6, rel=1e-5)
    total.backward()  # a training loss, with gradients
    outs = ner.outputs(model, batch)
    assert [o.shape for o in outs] == [(8, 7), (4, 7)] and outs[0].dtype == np.float32
    records = ner.predictions(examples, features, outs, config(), LABELS)
    assert [len(r["predicted_tags"]) for r in records] == [4, 2]


def test_tiny_model_learns_a_toy_task_through_encode_loss_and_predictions(tiny_bert_dir, tiny_tokenizer):
    torch.manual_seed(0)
    model = ner.AutoModel.from_pretrained(tiny_bert_dir, **ner.model_kwargs(config(), LABELS))
    examples = [example(["john", "visited", "paris"], ["B-PER", "O", "B-LOC"]),
                example(["smith", "lives", "in", "london"], ["B-PER", "O", "O", "B-LOC"]),
                example(["berlin", "and", "paris"], ["B-LOC", "O", "B-LOC"])]
    features = ner.encode(examples, tiny_tokenizer, config(), LABELS, with_labels=True)
    batch = ner.collate(features, tiny_tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(20):
        total, count = ner.loss(model, batch)
        (total / count).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    records = ner.predictions(examples, features, ner.outputs(model, batch), config(), LABELS)
    assert ner.metrics(examples, records, config(), LABELS)["f1"] == 1.0


# -------------------------------------------------------------------------------------------- config


def test_config_checks_stride():
    with pytest.raises(ConfigError, match="stride"):
        config(stride=-1)
    with pytest.raises(ConfigError, match="stride"):
        config(max_seq_length=16, stride=9)
    assert config().task == "ner" and config().max_seq_length == 128
    assert config().stride == 32 and config(max_seq_length=32).stride == 8  # the default fits short windows


@pytest.mark.parametrize("recipe", ["recipes/finetune/ner.yaml", "recipes/finetune/ner-tiny.yaml"])
def test_recipes_load(recipe, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # --data_dir as DATA= passes it (the recipe's own folder may be absent here).
    cfg = parse_config(ner.Config, ["--recipe", os.path.join(root, recipe), "--data_dir", str(tmp_path)])
    assert cfg.task == "ner" and cfg.train_file == os.path.join(str(tmp_path), "eng.train")
    assert cfg.validation_file == os.path.join(str(tmp_path), "eng.testa")
    assert cfg.metric_for_best_model == "f1" and cfg.greater_is_better
    assert 2 * cfg.stride <= cfg.max_seq_length


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.data
def test_conll2003_counts_and_labels(data_dir, tiny_tokenizer):
    folder = os.path.join(data_dir, "conll2003")
    cfg = config(train_file=os.path.join(folder, "eng.train"), validation_file=os.path.join(folder, "eng.testa"),
                 test_file=os.path.join(folder, "eng.testb"))
    splits, found = ner.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert {k: len(v) for k, v in splits.items()} == {"train": 14041, "validation": 3250, "test": 3453}
    assert sum(len(ex["tokens"]) for ex in splits["train"]) == 203621
    labels = ner.label_list(splits["train"], cfg)
    assert labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    # IOB1 -> IOB2: entity counts of the HF conll2003 (IOB2) train split.
    starts = {t: 0 for t in ("PER", "LOC", "ORG", "MISC")}
    for ex in splits["train"]:
        for tag in ex["tags"]:
            if tag.startswith("B-"):
                starts[tag[2:]] += 1
    assert starts == {"PER": 6600, "LOC": 7140, "ORG": 6321, "MISC": 3438}
    # Every word of the dev set is predicted exactly once, even with windows this small.
    small = config(train_file="x", max_seq_length=24, stride=8)
    dev = splits["validation"][:300]
    features = ner.encode(dev, tiny_tokenizer, small, labels, with_labels=True)
    records = ner.predictions(dev, features, perfect_outputs(features, len(labels)), small, labels)
    assert [r["predicted_tags"] for r in records] == [ex["tags"] for ex in dev]
