"""Extractive QA task (finetune/qa/): reading, windows, labels, post-processing, loss, recipes, real data."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

from finetune.qa import task as qa
from finetune.qa import config as qa_config
from finetune.qa import data as qa_data
from finetune.qa import windows as qa_windows
from mlm.core.config import load_recipe, parse_config
from mlm.errors import ConfigError, DataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Every word is in the tiny vocabulary (tests/conftest.py), so one word = one token.
CONTEXT = (
    "the movie was good and the story was fun . john smith lives in london . he visited paris with apple . "
    "the plot of the film is boring but the acting is great . they love berlin and germany ."
)


def make_cfg(**kw) -> qa.Config:
    kw.setdefault("train_file", "unused.json")
    return qa.Config(**kw)


def write_json(path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def squad(articles: list[tuple[str, list[tuple[str, list[dict]]]]], version="1.1") -> dict:
    """[(title, [(context, [qa, ...]), ...]), ...] -> a SQuAD JSON document."""
    return {
        "version": version,
        "data": [
            {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs]}
            for title, paragraphs in articles
        ],
    }


def question(qid, text, answers, **extra) -> dict:
    return {"id": qid, "question": text, "answers": [{"text": t, "answer_start": s} for t, s in answers], **extra}


# ------------------------------------------------------------------------------------------- reading


def test_reads_squad_v1_json(tmp_path):
    doc = squad([
        ("Paris", [("john visited paris .", [question("q1", "who visited paris ?", [("john", 0), ("john", 0)])])]),
        ("Berlin", [("she lives in berlin .", [question("q2", "where does she live ?", [("berlin", 13)]),
                                               question("q3", "who lives in berlin ?", [("she", 0)])])]),
    ])
    path = write_json(tmp_path / "train.json", doc)
    splits = qa.load_splits(make_cfg(train_file=path, validation_file=path))[0]
    train = splits["train"]
    assert [ex["id"] for ex in train] == ["q1", "q2", "q3"]
    assert train[1] == {
        "id": "q2", "question": "where does she live ?", "context": "she lives in berlin .",
        "answers": {"text": ["berlin"], "answer_start": [13]}, "title": "Berlin",
        "_where": f"{path}: data[1].paragraphs[0].qas[0]",
    }
    assert train[0]["answers"] == {"text": ["john", "john"], "answer_start": [0, 0]}
    assert len(splits["validation"]) == 3 and "test" not in splits


def test_reads_squad_v2_json_and_resolves_version_2(tmp_path):
    doc = squad([("T", [("john visited paris in may .", [
        question("a", "who visited paris ?", [("john", 0)], is_impossible=False),
        # v2: no answers, and plausible_answers must NOT become answers
        {"id": "b", "question": "who visited rome ?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "john", "answer_start": 0}]},
        question("c", "when ?", [("", 0)]),  # an empty answer text also means "no answer"
    ])])], version="v2.0")
    path = write_json(tmp_path / "v2.json", doc)
    cfg = make_cfg(train_file=path)
    assert cfg.version_2_with_negative is None  # auto
    splits, found = qa.load_splits(cfg)
    assert [ex["answers"]["text"] for ex in splits["train"]] == [["john"], [], []]
    assert found == {"version_2_with_negative": True} and cfg.version_2_with_negative is None  # returned, not set
    with pytest.raises(ConfigError, match=r"version_2_with_negative: false.*2 questions without an answer.*id b"):
        qa.load_splits(make_cfg(train_file=path, version_2_with_negative=False))


def test_v1_data_resolves_version_2_false(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"id": "x", "question": "who ?", "context": "john .",
                                               "answers": {"text": ["john"], "answer_start": [0]}}])
    cfg = make_cfg(train_file=path)
    assert qa.load_splits(cfg)[1] == {"version_2_with_negative": False}


def test_reads_jsonl_with_both_answer_layouts(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "hf", "title": "T1", "question": "who ?", "context": "john smith .",
         "answers": {"text": ["john smith", "smith"], "answer_start": [0, 5]}},
        {"id": "list", "question": "who ?", "context": "he is john .", "answers": [{"text": "john", "answer_start": 6}]},
        {"question": "who ?", "context": "x y z", "answers": []},  # no id: the line number
    ])
    train = qa.load_splits(make_cfg(train_file=path))[0]["train"]
    assert [ex["id"] for ex in train] == ["hf", "list", "3"]
    assert train[0]["answers"] == {"text": ["john smith", "smith"], "answer_start": [0, 5]}
    assert train[0]["title"] == "T1" and "title" not in train[1]
    assert train[1]["answers"] == {"text": ["john"], "answer_start": [6]}
    assert train[1]["_where"] == f"{path}:2"
    assert train[2]["answers"] == {"text": [], "answer_start": []}


def test_reads_a_json_array_parquet_and_gzipped_squad(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": "a", "title": "T", "question": "who ?", "context": "john smith .",
             "answers": {"text": ["john"], "answer_start": [0]}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    doc = squad([("T", [("john smith .", [question("a", "who ?", [("john", 0)])])])])
    with gzip.open(tmp_path / "t.json.gz", "wt", encoding="utf-8") as f:
        json.dump(doc, f)
    for path in (write_json(tmp_path / "array.json", rows), str(tmp_path / "t.parquet"), str(tmp_path / "t.json.gz")):
        (ex,) = qa.read_file(path)
        assert (ex["id"], ex["answers"]) == ("a", {"text": ["john"], "answer_start": [0]}), path
    (tmp_path / "t.csv").write_text("id,question\n")
    with pytest.raises(DataError, match="QA reads SQuAD .json, .jsonl or .parquet"):
        qa.read_file(str(tmp_path / "t.csv"))


def test_hub_dataset_goes_through_the_same_checks(monkeypatch):
    import datasets

    rows = [{"id": "h1", "title": "T", "context": "john smith .", "question": "who ?",
             "answers": {"text": ["smith"], "answer_start": [5]}}]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: {"train": rows, "validation": rows})
    splits = qa.load_splits(qa.Config(dataset_name="squad"))[0]
    assert splits["train"][0]["answers"] == {"text": ["smith"], "answer_start": [5]}
    assert splits["validation"][0]["_where"] == "squad[validation]:1"


# -------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("row, message", [
    ({"id": "q7", "context": "john .", "answers": []}, r'id q7: missing field "question"'),
    ({"id": "q7", "question": "who ?", "answers": []}, r'id q7: missing field "context"'),
    ({"id": "q7", "question": "  ", "context": "john .", "answers": []}, r"id q7: empty question"),
    ({"id": "q7", "question": "who ?", "context": "", "answers": []}, r"id q7: empty context"),
    ({"id": "q7", "question": "who ?", "context": "john ."}, r'id q7: missing field "answers"'),
    ({"id": "q7", "question": "who ?", "context": "john .", "answers": [{"text": "john"}]},
     r'id q7: every answer needs "text" and "answer_start"'),
    ({"id": "q7", "question": "who ?", "context": "john .", "answers": {"text": ["a"], "answer_start": []}},
     r"id q7: .*equal length"),
    ({"id": "q7", "question": "who ?", "context": "john .", "answers": [{"text": "john", "answer_start": "0"}]},
     r"id q7: .*integer answer_start"),
])
def test_bad_jsonl_rows_name_file_line_and_id(tmp_path, row, message):
    good = {"id": "q1", "question": "who ?", "context": "john .", "answers": []}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError, match=rf"^{path}:2: {message}"):
        qa.load_splits(make_cfg(train_file=path))


def test_bad_squad_json_names_the_question(tmp_path):
    doc = squad([("T", [("john .", [question("q1", "who ?", [("john", 0)]), question("q2", "", [])])])])
    path = write_json(tmp_path / "bad.json", doc)
    with pytest.raises(DataError, match=rf"^{path}: data\[0\].paragraphs\[0\].qas\[1\]: id q2: empty question"):
        qa.load_splits(make_cfg(train_file=path))
    doc["data"][0]["paragraphs"][0]["qas"][1] = {"question": "who ?", "answers": []}
    write_json(tmp_path / "bad.json", doc)
    with pytest.raises(DataError, match=r'qas\[1\]: missing field "id"'):
        qa.load_splits(make_cfg(train_file=path))


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": [\n  {"title": "x",\n   "paragraphs": [}\n]}', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:3: invalid JSON"):
        qa.load_splits(make_cfg(train_file=str(path)))
    lines = tmp_path / "broken.jsonl"
    lines.write_text('{"id": "a", "question": "q", "context": "c", "answers": []}\n{"id": "b", oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{lines}:2: invalid JSON"):
        qa.load_splits(make_cfg(train_file=str(lines)))


def test_duplicate_ids_and_missing_file(tmp_path):
    row = {"id": "same", "question": "who ?", "context": "john .", "answers": []}
    path = write_jsonl(tmp_path / "dup.jsonl", [row, row])
    with pytest.raises(DataError, match=rf"{path}:2: duplicate id same \(first at {path}:1\)"):
        qa.load_splits(make_cfg(train_file=path))
    with pytest.raises(DataError, match="nope.json: file not found"):
        qa.load_splits(make_cfg(train_file=str(tmp_path / "nope.json")))


def test_config_checks():
    with pytest.raises(ConfigError, match="doc_stride: 40 must be < max_seq_length - max_query_length - 3 = 29"):
        make_cfg(max_seq_length=64, max_query_length=32, doc_stride=40)
    with pytest.raises(ConfigError, match="split_articles: expected TRAIN:VALID"):
        make_cfg(split_articles="2290")  # what YAML makes of an unquoted 38:10
    with pytest.raises(ConfigError, match="split_articles: set together with validation_file"):
        make_cfg(split_articles="38:10", validation_file="v.json")
    assert make_cfg(split_articles="none", validation_file="v.json").split_articles is None
    assert qa_config.parse_split_articles("38:10") == (38, 10) and qa_config.parse_split_articles("38:") == (38, None)
    assert make_cfg().max_seq_length == 384  # QA's own default, not the base class's 128


# --------------------------------------------------------------------------------- answer offsets


def test_locate_answer_keeps_fixes_or_gives_up():
    context = "paris is big . paris is old . london is big ."
    assert qa_data.locate_answer(context, "paris", 15) == 15  # correct offset kept
    assert qa_data.locate_answer(context, "paris", 13) == 15  # nearest occurrence (15 is 2 away, 0 is 13 away)
    assert qa_data.locate_answer(context, "paris", 3) == 0
    assert qa_data.locate_answer(context, "rome", 0) is None


def test_locate_answer_prefers_whole_words():
    context = "the art of starting a start-up ."
    assert qa_data.locate_answer(context, "art", 12) == 4  # 13 ("st-art-ing") is nearer but inside a word
    assert qa_data.locate_answer(context, "start", 10) == 22  # 11 (starting) inside a word, 22 ("start-up") a whole word
    assert qa_data.locate_answer("restart", "start", 0) == 2  # the only occurrence is still used


def test_answers_with_surrounding_spaces_are_trimmed_with_their_start(tmp_path):
    rows = [{"id": "a", "question": "where ?", "context": "he went to paris . she went to paris too .",
             "answers": [{"text": "paris ", "answer_start": 31}]},
            {"id": "b", "question": "who ?", "context": "alice ran .", "answers": [{"text": "\nalice", "answer_start": -1}]}]
    train = qa.load_splits(make_cfg(train_file=write_jsonl(tmp_path / "t.jsonl", rows)))[0]["train"]
    assert [ex["answers"] for ex in train] == [{"text": ["paris"], "answer_start": [31]},
                                               {"text": ["alice"], "answer_start": [0]}]


@pytest.mark.parametrize("flag,impossible", [("false", False), ("False", False), (0, False), ("true", True), (True, True)])
def test_is_impossible_values(tmp_path, flag, impossible):
    row = {"id": "q", "question": "who ?", "context": "john .", "answers": [{"text": "john", "answer_start": 0}],
           "is_impossible": flag}
    for path in (write_jsonl(tmp_path / "t.jsonl", [row]),
                 write_json(tmp_path / "t.json", squad([("T", [("john .", [{k: v for k, v in row.items() if k != "context"}])])]))):
        cfg = make_cfg(train_file=path)
        splits, found = qa.load_splits(cfg)
        (ex,) = splits["train"]
        assert (ex["answers"]["text"] == []) is impossible and found["version_2_with_negative"] is impossible
    with pytest.raises(DataError, match=r'id q: "is_impossible" must be true or false, got \'maybe\''):
        qa.read_file(write_jsonl(tmp_path / "bad.jsonl", [{**row, "is_impossible": "maybe"}]))


def test_test_split_without_answers_is_predicted_not_scored(tmp_path, tiny_tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", [{"id": "t", "question": "who ?", "context": "john .",
                                                     "answers": [{"text": "john", "answer_start": 0}]}])
    test = write_jsonl(tmp_path / "test.jsonl", [{"id": "u", "question": "who ?", "context": "john smith ."}])
    cfg = make_cfg(train_file=train, test_file=test)
    splits, found = qa.load_splits(cfg)
    cfg = cfg.with_values(found)
    assert cfg.version_2_with_negative is False  # an unlabelled question is not an unanswerable one
    features = qa.encode(splits["test"], tiny_tokenizer, windows_cfg(), [], with_labels=False)
    records = qa.predictions(splits["test"], features, [(logits(len(f["input_ids"]), {}),) * 2 for f in features],
                             cfg, [])
    assert "gold_answers" not in records[0] and qa.metrics(splits["test"], records, cfg, []) == {}
    with pytest.raises(DataError, match=r'id u: missing field "answers"'):
        qa.load_splits(make_cfg(train_file=train, validation_file=test))


def test_answer_start_mismatch_is_fixed_or_skipped_and_logged(tmp_path, caplog):
    rows = [
        {"id": "ok", "question": "who ?", "context": "john smith .", "answers": [{"text": "smith", "answer_start": 5}]},
        {"id": "off", "question": "who ?", "context": "john smith .", "answers": [{"text": "smith", "answer_start": 3}]},
        {"id": "lost", "question": "who ?", "context": "john smith .", "answers": [{"text": "paris", "answer_start": 0}]},
        # one good answer is enough: the example stays, the bad answer is marked -1
        {"id": "half", "question": "who ?", "context": "john smith .",
         "answers": [{"text": "rome", "answer_start": 0}, {"text": "john", "answer_start": 0}]},
    ]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="mlm"):
        splits = qa.load_splits(make_cfg(train_file=path, validation_file=path))[0]
    assert [ex["id"] for ex in splits["train"]] == ["ok", "off", "half"]  # "lost" skipped for training
    assert splits["train"][1]["answers"]["answer_start"] == [5]
    assert splits["train"][2]["answers"]["answer_start"] == [-1, 0]
    assert [ex["id"] for ex in splits["validation"]] == ["ok", "off", "lost", "half"]  # kept for EM/F1
    text = caplog.text
    assert "train: moved 1 answer_start offsets" in text and "t.jsonl:2; ids: off)" in text
    assert "train: 2 answers whose text is not in the context, not used as labels (first: " in text
    assert "t.jsonl:3; ids: lost, half)" in text
    assert "train: skipped 1 examples none of whose answers is in the context (first: " in text
    assert "validation: 2 answers whose text is not in the context, left out of the evaluation loss" in text
    assert "validation: skipped" not in text


# ------------------------------------------------------------------------------------------ windows


def windows_cfg(**kw):
    kw = {"max_seq_length": 24, "doc_stride": 6, "max_query_length": 8, **kw}
    return make_cfg(**kw)


def test_long_context_makes_overlapping_windows_whose_labels_map_back_to_the_answer(tiny_tokenizer):
    answer = "john smith"
    example = {"id": "e", "question": "who lives in london ?", "context": CONTEXT,
               "answers": {"text": [answer], "answer_start": [CONTEXT.index(answer)]}}
    features = qa.encode([example], tiny_tokenizer, windows_cfg(), [], with_labels=True)
    assert len(features) >= 3
    n_question = len(tiny_tokenizer.tokenize(example["question"]))
    for f in features:
        assert f["example_index"] == 0 and len(f["input_ids"]) <= 24
        offsets = f["offset_mapping"]
        # [CLS] question [SEP] carry no offsets, nor does the final [SEP]
        assert offsets[: n_question + 2] == [None] * (n_question + 2) and offsets[-1] is None
        assert all(o is not None for o in offsets[n_question + 2: -1])
    # neighbours share exactly doc_stride context tokens
    for a, b in zip(features, features[1:]):
        ctx_a = [o for o in a["offset_mapping"] if o is not None]
        ctx_b = [o for o in b["offset_mapping"] if o is not None]
        assert ctx_a[-6:] == ctx_b[:6]
    # the whole context is covered, first window to last
    first = [o for o in features[0]["offset_mapping"] if o is not None][0]
    last = [o for o in features[-1]["offset_mapping"] if o is not None][-1]
    assert first[0] == 0 and last[1] == len(CONTEXT.rstrip())
    with_answer = [f for f in features if f["start_positions"] != 0]
    assert with_answer, "no window holds the answer"
    for f in with_answer:
        s, e = f["start_positions"], f["end_positions"]
        assert CONTEXT[f["offset_mapping"][s][0]: f["offset_mapping"][e][1]] == answer
        assert tiny_tokenizer.convert_ids_to_tokens(f["input_ids"][s: e + 1]) == ["john", "smith"]
    for f in features:
        if f not in with_answer:
            assert (f["start_positions"], f["end_positions"]) == (0, 0)
            span = [o for o in f["offset_mapping"] if o is not None]
            start = CONTEXT.index(answer)
            assert not (span[0][0] <= start and span[-1][1] >= start + len(answer))


def test_answer_cut_by_a_window_edge_points_to_cls(tiny_tokenizer):
    # Window 1 ends inside the answer: it must not be labelled with half an answer.
    answer = "the plot of the film is boring"
    example = {"id": "e", "question": "what ?", "context": CONTEXT,
               "answers": {"text": [answer], "answer_start": [CONTEXT.index(answer)]}}
    features = qa.encode([example], tiny_tokenizer, windows_cfg(), [], with_labels=True)
    start = CONTEXT.index(answer)
    for f in features:
        span = [o for o in f["offset_mapping"] if o is not None]
        holds = span[0][0] <= start and span[-1][1] >= start + len(answer)
        if holds:
            s, e = f["start_positions"], f["end_positions"]
            assert CONTEXT[f["offset_mapping"][s][0]: f["offset_mapping"][e][1]] == answer
        else:
            assert (f["start_positions"], f["end_positions"]) == (0, 0)
    partial = [f for f in features if any(o is not None and start <= o[0] < start + len(answer)
                                          for o in f["offset_mapping"])]
    assert any(f["start_positions"] == 0 for f in partial), "expected a window holding only part of the answer"


def test_no_answer_and_unlocatable_answer_labels(tiny_tokenizer):
    examples = [
        {"id": "none", "question": "who ?", "context": "john smith .", "answers": {"text": [], "answer_start": []}},
        {"id": "lost", "question": "who ?", "context": "john smith .", "answers": {"text": ["x"], "answer_start": [-1]}},
    ]
    features = qa.encode(examples, tiny_tokenizer, windows_cfg(), [], with_labels=True)
    assert [(f["start_positions"], f["end_positions"]) for f in features] == [(0, 0), (qa.IGNORE, qa.IGNORE)]
    unlabelled = qa.encode(examples, tiny_tokenizer, windows_cfg(), [], with_labels=False)
    assert "start_positions" not in unlabelled[0] and unlabelled[1]["example_index"] == 1


def test_characters_without_tokens_at_an_answer_edge_add_no_token(tiny_tokenizer):
    # the tokenizer drops the zero-width space: the label must be "paris", not "in \u200bparis"
    context = "john lives in \u200bparis ."
    example = {"id": "z", "question": "where ?", "context": context,
               "answers": {"text": ["\u200bparis"], "answer_start": [context.index("\u200b")]}}
    (feature,) = qa.encode([example], tiny_tokenizer, windows_cfg(), [], with_labels=True)
    start, end = feature["start_positions"], feature["end_positions"]
    assert start == end and context[slice(*feature["offset_mapping"][start])] == "paris"


def test_long_question_is_cut_to_max_query_length(tiny_tokenizer):
    long_q = "   who visited paris and london and berlin with john smith ?"
    (cut,) = qa_windows.truncate_questions([long_q], tiny_tokenizer, 4)
    assert cut == "who visited paris and"
    example = {"id": "e", "question": long_q, "context": "john smith visited paris .",
               "answers": {"text": ["john smith"], "answer_start": [0]}}
    (f,) = qa.encode([example], tiny_tokenizer, windows_cfg(max_query_length=4), [], with_labels=True)
    assert f["input_ids"][:6] == tiny_tokenizer("who visited paris and")["input_ids"][:6]
    assert f["offset_mapping"][:6] == [None] * 6 and f["offset_mapping"][6] == (0, 4)


def test_collate_pads_to_the_longest_with_the_tokenizer_pad_id():
    class OddPad:  # a pad id that cannot hide behind 0
        pad_token_id = -8

    features = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "token_type_ids": [0, 1, 1],
         "start_positions": 1, "end_positions": 2, "example_index": 0, "offset_mapping": [None, (0, 1), None]},
        {"input_ids": [5, 6], "attention_mask": [1, 1], "token_type_ids": [0, 1],
         "start_positions": 0, "end_positions": 0, "example_index": 1, "offset_mapping": [None, None]},
    ]
    batch = qa.collate(features, OddPad())
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 6, -8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 1, 1], [0, 1, 0]]
    assert batch["start_positions"].tolist() == [1, 0] and batch["end_positions"].tolist() == [2, 0]
    unlabelled = qa.collate([{k: v for k, v in f.items() if "positions" not in k} for f in features], OddPad())
    assert "start_positions" not in unlabelled


# --------------------------------------------------------------------------------- post-processing

#            token:  0     1     2     3     4       5        6         7         8
# hand-made windows: [CLS] who   ?     [SEP] ctx...                              [SEP]
PP_CONTEXT = "aaaa bbbb cccc dddd eeee ffff"
#             0    5    10   15   20   25


def window(example_index, spans):
    """A feature: [CLS] q q [SEP] <context tokens at these char spans> [SEP]."""
    return {"example_index": example_index, "offset_mapping": [None, None, None, None, *spans, None]}


def logits(n, peaks):
    """An array of -1 with {index: value} peaks."""
    out = np.full(n, -1.0, dtype=np.float32)
    for i, v in peaks.items():
        out[i] = v
    return out


W1 = [(0, 4), (5, 9), (10, 14), (15, 19)]  # aaaa bbbb cccc dddd
W2 = [(10, 14), (15, 19), (20, 24), (25, 29)]  # cccc dddd eeee ffff (2 tokens shared with W1)
PP_EXAMPLE = {"id": "p", "question": "who ?", "context": PP_CONTEXT, "answers": {"text": ["eeee"], "answer_start": [20]}}


def post(features, outs, **cfg):
    cfg = make_cfg(max_seq_length=64, max_query_length=8, doc_stride=8, **cfg)
    return qa.predictions([PP_EXAMPLE], features, outs, cfg, [])


def test_best_span_across_windows():
    features = [window(0, W1), window(0, W2)]
    outs = [(logits(9, {4: 5.0}), logits(9, {4: 5.0})),  # "aaaa": 10
            (logits(9, {6: 6.0}), logits(9, {7: 6.0}))]  # "eeee ffff": 12
    (rec,) = post(features, outs)
    assert rec["prediction_text"] == "eeee ffff" and (rec["start"], rec["end"]) == (20, 29)
    assert rec["score"] == pytest.approx(12.0) and rec["gold_answers"] == ["eeee"]
    assert "null_score" not in rec


def test_untrimmed_offsets_never_put_spaces_around_the_answer():
    untrimmed = [(0, 4), (4, 9), (9, 14), (14, 19)]  # byte-level BPE, trim_offsets off: " bbbb" starts at 4
    (rec,) = post([window(0, untrimmed)], [(logits(9, {5: 5.0}), logits(9, {6: 5.0}))])
    assert rec["prediction_text"] == "bbbb cccc" and (rec["start"], rec["end"]) == (5, 14)


def test_never_a_span_in_the_question_or_on_special_tokens():
    features = [window(0, W1)]
    # the highest logits sit on question tokens (1, 2), [CLS] and the final [SEP]
    outs = [(logits(9, {0: 50.0, 1: 40.0, 2: 30.0, 8: 20.0, 5: 3.0}), logits(9, {0: 50.0, 2: 40.0, 8: 20.0, 6: 3.0}))]
    (rec,) = post(features, outs)
    assert rec["prediction_text"] == "bbbb cccc"


def test_respects_max_answer_length_and_order():
    features = [window(0, W2)]
    # best pair 4..7 is 4 tokens long; the reversed pair (end 4 < start 6) is not a span
    outs = [(logits(9, {4: 9.0, 6: 8.0}), logits(9, {7: 9.0, 4: 8.5, 5: 1.0}))]
    assert post(features, outs, max_answer_length=4)[0]["prediction_text"] == "cccc dddd eeee ffff"
    # with 3 tokens at most: start 4 pairs with end 4 (17.5) rather than start 6 with end 7 (17.0)
    assert post(features, outs, max_answer_length=3)[0]["prediction_text"] == "cccc"
    assert post(features, outs, max_answer_length=1)[0]["prediction_text"] == "cccc"


def test_n_best_size_limits_the_candidates():
    features = [window(0, W1)]
    # start 5 is the 3rd-highest start logit: found with n_best_size=3, not with 2 (both higher are invalid)
    outs = [(logits(9, {0: 9.0, 1: 8.0, 5: 7.0}), logits(9, {6: 5.0}))]
    assert post(features, outs, n_best_size=3)[0]["prediction_text"] == "bbbb cccc"
    assert post(features, outs, n_best_size=2)[0]["prediction_text"] != "bbbb cccc"


def test_version_2_null_threshold_both_ways():
    features = [window(0, W1), window(0, W2)]
    # null scores: window 1 = 10 + 10 = 20, window 2 = 1.5 + 1.5 = 3 -> min 3; best span "eeee" = 1 + 1 = 2
    outs = [(logits(9, {0: 10.0}), logits(9, {0: 10.0})),
            (logits(9, {0: 1.5, 6: 1.0}), logits(9, {0: 1.5, 6: 1.0}))]
    no_answer = post(features, outs, version_2_with_negative=True, null_score_diff_threshold=0.0)[0]
    assert no_answer["prediction_text"] == "" and no_answer["start"] is None  # 3 - 2 = 1 > 0
    assert no_answer["null_score"] == pytest.approx(3.0) and no_answer["score"] == pytest.approx(3.0)
    answer = post(features, outs, version_2_with_negative=True, null_score_diff_threshold=1.5)[0]
    assert answer["prediction_text"] == "eeee" and answer["score"] == pytest.approx(2.0)  # 1 < 1.5 (max would give 18)
    # v1 ignores the null score altogether
    assert post(features, outs)[0]["prediction_text"] == "eeee"


def test_example_without_features_or_valid_span_predicts_empty():
    (rec,) = post([], [])
    assert rec["prediction_text"] == "" and rec["score"] is None
    with pytest.raises(ValueError, match="logits of length 5"):
        post([window(0, W1)], [(np.zeros(5), np.zeros(5))])


# -------------------------------------------------------------------------------------- end to end


E2E = [
    ("who lives in london ?", CONTEXT, "john smith"),
    ("what is great ?", CONTEXT, "the acting"),
    ("where did he go ?", "he visited paris with apple .", "paris"),
    ("what do they love ?", CONTEXT, "berlin and germany"),
]


def perfect_outputs(features):
    """Logits that put all the mass on each feature's label (the answer span, or [CLS])."""
    outs = []
    for f in features:
        n = len(f["input_ids"])
        outs.append((logits(n, {f["start_positions"]: 10.0}), logits(n, {f["end_positions"]: 10.0})))
    return outs


def test_perfect_logits_score_100_and_write_the_official_format(tiny_tokenizer, tmp_path):
    examples = [{"id": f"e{i}", "question": q, "context": c, "answers": {"text": [a], "answer_start": [c.index(a)]}}
                for i, (q, c, a) in enumerate(E2E)]
    cfg = windows_cfg(max_answer_length=5)
    features = qa.encode(examples, tiny_tokenizer, cfg, [], with_labels=True)
    assert len(features) > len(examples)  # long contexts were windowed
    records = qa.predictions(examples, features, perfect_outputs(features), cfg, [])
    assert [r["prediction_text"] for r in records] == [a for _, _, a in E2E]
    scores = qa.metrics(examples, records, cfg, [])
    assert scores["exact_match"] == 100.0 and scores["f1"] == 100.0 and scores["total"] == 4
    out = tmp_path / "preds" / "predictions.json"
    qa.write_squad_predictions(records, str(out))
    assert json.loads(out.read_text()) == {f"e{i}": a for i, (_, _, a) in enumerate(E2E)}


def test_perfect_logits_version_2(tiny_tokenizer):
    examples = [
        {"id": "has", "question": "who lives in london ?", "context": CONTEXT,
         "answers": {"text": ["john smith"], "answer_start": [CONTEXT.index("john smith")]}},
        {"id": "not", "question": "who lives in rome ?", "context": CONTEXT, "answers": {"text": [], "answer_start": []}},
    ]
    cfg = windows_cfg(version_2_with_negative=True)
    features = qa.encode(examples, tiny_tokenizer, cfg, [], with_labels=True)
    records = qa.predictions(examples, features, perfect_outputs(features), cfg, [])
    assert [r["prediction_text"] for r in records] == ["john smith", ""]
    assert records[1]["gold_answers"] == []
    scores = qa.metrics(examples, records, cfg, [])
    assert scores["exact_match"] == 100.0 and scores["HasAns_f1"] == 100.0 and scores["NoAns_exact"] == 100.0
    # a wrong "no answer" for the answerable question costs half the score
    records[0]["prediction_text"] = ""
    assert qa.metrics(examples, records, cfg, [])["exact_match"] == 50.0


# ------------------------------------------------------------------------------------ model: loss/outputs


@pytest.fixture(scope="module")
def tiny_qa_model(tiny_bert_dir):
    torch.manual_seed(0)
    model = qa.AutoModel.from_pretrained(tiny_bert_dir)  # a QA head on the tiny MLM backbone
    return model.eval()


def test_loss_and_outputs_with_a_tiny_model(tiny_qa_model, tiny_tokenizer):
    examples = [{"id": f"e{i}", "question": q, "context": c, "answers": {"text": [a], "answer_start": [c.index(a)]}}
                for i, (q, c, a) in enumerate(E2E)]
    examples.append({"id": "lost", "question": "who ?", "context": "john .", "answers": {"text": ["x"], "answer_start": [-1]}})
    features = qa.encode(examples, tiny_tokenizer, windows_cfg(), [], with_labels=True)
    batch = qa.collate(features, tiny_tokenizer)
    loss_sum, count = qa.loss(tiny_qa_model, batch)
    loss_sum.backward()  # trainable: the QA head gets a gradient
    assert tiny_qa_model.qa_outputs.weight.grad.abs().sum() > 0
    tiny_qa_model.zero_grad()
    loss_sum = loss_sum.detach()
    assert loss_sum.dim() == 0 and torch.isfinite(loss_sum) and loss_sum > 0
    assert int(count) == len(features) - 1  # the unlocatable answer is left out
    # padding is masked, so the batch loss is the sum of the features' own losses
    with torch.no_grad():
        single = sum(float(qa.loss(tiny_qa_model, qa.collate([f], tiny_tokenizer))[0]) for f in features)
    assert float(loss_sum) == pytest.approx(single, rel=1e-5)
    # an untrained head is near uniform: mean loss close to log(sequence length)
    mean_len = np.mean([len(f["input_ids"]) for f in features])
    assert float(loss_sum) / int(count) == pytest.approx(np.log(mean_len), rel=0.3)

    outs = qa.outputs(tiny_qa_model, batch)
    assert len(outs) == len(features)
    for (start, end), f in zip(outs, features):
        assert start.shape == end.shape == (len(f["input_ids"]),) and start.dtype == np.float32
        assert np.isfinite(start).all() and np.isfinite(end).all()
    records = qa.predictions(examples, features, outs, windows_cfg(), [])
    assert [r["id"] for r in records] == [ex["id"] for ex in examples]
    for r, ex in zip(records, examples):
        assert r["prediction_text"] == ex["context"][r["start"]: r["end"]]


def test_label_list_and_model_kwargs():
    assert qa.label_list([], make_cfg()) == [] and qa.model_kwargs(make_cfg(), []) == {}


# --------------------------------------------------------------------------------------- mlm predict


def test_examples_from_text():
    (ex,) = qa.examples_from_text(make_cfg(), question="who ?", context="john .", text=None)
    assert ex["question"] == "who ?" and ex["context"] == "john ." and ex["answers"]["text"] == []
    with pytest.raises(ConfigError, match="--context: required"):
        qa.examples_from_text(make_cfg(), question="who ?", context=None)
    with pytest.raises(ConfigError, match="--text"):
        qa.examples_from_text(make_cfg(), text="hello")


def test_examples_from_file_jsonl_and_squad(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "in.jsonl", [{"question": "who ?", "context": "john smith ."},
                                                {"id": "x", "question": "what ?", "context": "a movie ."}])
    examples = qa.examples_from_file(path, make_cfg())
    assert [ex["id"] for ex in examples] == ["1", "x"]
    features = qa.encode(examples, tiny_tokenizer, windows_cfg(), [], with_labels=False)
    records = qa.predictions(examples, features, [(logits(len(f["input_ids"]), {}),) * 2 for f in features],
                             windows_cfg(), [])
    assert all("gold_answers" not in r for r in records)
    doc = squad([("T", [("john .", [question("q", "who ?", [("john", 0)])])])])
    assert qa.examples_from_file(write_json(tmp_path / "in.json", doc), make_cfg())[0]["id"] == "q"
    with pytest.raises(DataError, match=r"in2.jsonl:1: id 1: missing field \"context\""):
        qa.examples_from_file(write_jsonl(tmp_path / "in2.jsonl", [{"question": "who ?"}]), make_cfg())


# ------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", ["qa.yaml", "qa-tiny.yaml"])
def test_recipes_load(name, tmp_path):
    path = os.path.join(ROOT, "recipes", "finetune", name)
    assert load_recipe(path, qa.Config)["task"] == "qa"  # unknown keys raise
    # qa.yaml reads its file from data_dir (the shared data folder, or DATA= with make): any folder parses
    extra = ["--data_dir", str(tmp_path)] if "data_dir" in load_recipe(path, qa.Config) else []
    cfg = parse_config(qa.Config, ["--recipe", path, *extra])
    assert cfg.task == "qa" and cfg.split_articles is not None
    assert cfg.train_file.endswith("dev-v1.1.json") and cfg.validation_file is None
    if name == "qa.yaml":
        assert cfg.train_file == os.path.join(str(tmp_path), "dev-v1.1.json")
        assert (cfg.max_seq_length, cfg.doc_stride, cfg.metric_for_best_model) == (384, 128, "f1")
        assert cfg.split_articles == "38:10" and cfg.accumulation_steps(1) == 2
    else:
        assert (cfg.max_seq_length, cfg.doc_stride) == (64, 16) and cfg.max_steps > 0


# ----------------------------------------------------------------------------------------- real data


@pytest.mark.data
def test_squad_dev_file_and_article_split(data_dir):
    path = os.path.join(data_dir, "squad", "dev-v1.1.json")
    everything = qa.load_splits(make_cfg(train_file=path))[0]["train"]
    assert len(everything) == 10570 and len({ex["title"] for ex in everything}) == 48
    assert len({ex["id"] for ex in everything}) == 10570
    assert all(ex["answers"]["text"] for ex in everything)

    cfg = make_cfg(train_file=path, split_articles="38:10")
    splits, found = qa.load_splits(cfg)
    cfg = cfg.with_values(found)
    train_titles = {ex["title"] for ex in splits["train"]}
    valid_titles = {ex["title"] for ex in splits["validation"]}
    assert len(train_titles) == 38 and len(valid_titles) == 10 and not train_titles & valid_titles
    assert len(splits["train"]) + len(splits["validation"]) == 10570
    assert len(splits["train"]) == 8582 and cfg.version_2_with_negative is False
    # whole articles: every question of a title lands on the same side as the title
    per_title = {}
    for ex in everything:
        per_title[ex["title"]] = per_title.get(ex["title"], 0) + 1
    assert sum(per_title[t] for t in valid_titles) == len(splits["validation"])
    with pytest.raises(DataError, match="needs at least 49 articles, the file has 48"):
        qa.load_splits(make_cfg(train_file=path, split_articles="40:9"))


@pytest.mark.parametrize("align, expected", [(True, "unbelievable"), (False, "believ"), (None, "unbelievable")])
def test_sub_word_spans_are_widened_to_whole_words(tiny_tokenizer, align, expected):
    """Logits on the middle piece of un ##believ ##able: the answer is the word, unless align_to_words is off."""
    context = "the film was unbelievable fun ."
    example = {"id": "w", "question": "what was it ?", "context": context,
               "answers": {"text": ["unbelievable"], "answer_start": [context.index("unbelievable")]}}
    cfg = make_cfg() if align is None else make_cfg(align_to_words=align)  # None: the default
    [feature] = qa.encode([example], tiny_tokenizer, cfg, [], with_labels=False)
    piece = tiny_tokenizer.convert_ids_to_tokens(feature["input_ids"]).index("##believ")
    n = len(feature["input_ids"])
    [record] = qa.predictions([example], [feature], [(logits(n, {piece: 10.0}), logits(n, {piece: 10.0}))], cfg, [])
    assert record["prediction_text"] == expected
    assert context[record["start"]:record["end"]] == expected
