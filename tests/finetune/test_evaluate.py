"""Data as it comes, end to end: headerless files, label names, several test files, `mlm evaluate`."""
import json

import pytest

from test_finetune_e2e import NEGATIVE, POSITIVE, common, run_cli


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def sentiment_model(tmp_path_factory, tiny_bert_dir):
    """A tiny cls model trained on a headerless TSV with 0/1 labels named negative/positive; two test files,
    each scored separately, and a quick dev loop (--max_eval_samples 2) that keeps the test files whole."""
    tmp_path = tmp_path_factory.mktemp("cls")
    train = tmp_path / "train.tsv"
    train.write_text("".join(f"{t}\t1\n" for t in POSITIVE) + "".join(f"{t}\t0\n" for t in NEGATIVE))
    mixed = tmp_path / "mixed.tsv"  # known answers: 3 clear positives, 2 clear negatives
    mixed.write_text("great fun\t1\ni love it\t1\na fun film\t1\nbad plot\t0\ni hate it\t0\n")
    positives = tmp_path / "positives.csv"  # a header line, and a class given by its name
    positives.write_text("sentence,label\ngreat plot,positive\nlove the acting,1\n")
    code = run_cli_plain("finetune", "--task", "cls", "--train_file", train, "--validation_file", train,
                         "--test_file", f"{mixed},{positives}", "--text_column", "0", "--label_column", "1",
                         "--label_names", "negative,positive", "--max_eval_samples", "2",
                         *common(tmp_path, tiny_bert_dir, "model", **{"--num_train_epochs": 12, "--eval_steps": 20}))
    assert code == 0
    return tmp_path, tmp_path / "model", mixed, positives


def run_cli_plain(*argv):
    from mlm.cli import main

    return main([str(a) for a in argv])


def test_label_names_reach_config_json_and_predict(sentiment_model, capsys):
    tmp_path, model, mixed, _ = sentiment_model
    config = json.loads((model / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    code, captured = run_cli(capsys, "predict", "--model", model, "--text", "a great fun movie")
    assert code == 0 and json.loads(captured.out)["label"] == "positive"
    # A headerless --input table: its 0/1 gold labels are shown under the names too.
    code, captured = run_cli(capsys, "predict", "--model", model, "--input", mixed)
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 0 and [r["gold"] for r in records] == ["positive"] * 3 + ["negative"] * 2
    # --label_names at prediction renames the classes again (in id order).
    code, captured = run_cli(capsys, "predict", "--model", model, "--input", mixed, "--label_names", "neg,pos")
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 0 and [r["gold"] for r in records] == ["pos"] * 3 + ["neg"] * 2
    assert {r["label"] for r in records} <= {"neg", "pos"} and set(records[0]["probabilities"]) == {"neg", "pos"}
    code, captured = run_cli(capsys, "predict", "--model", model, "--text", "x", "--label_names", "a,b,c")
    assert code == 1 and "label_names: 3 names for 2 classes (negative, positive)" in captured.err


def test_several_test_files_are_scored_separately_and_whole(sentiment_model):
    _, model, _, _ = sentiment_model
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["test_mixed_accuracy"] == 1.0 and metrics["test_positives_accuracy"] == 1.0
    assert len(read_jsonl(model / "predictions" / "test_mixed.jsonl")) == 5  # --max_eval_samples left it whole
    assert len(read_jsonl(model / "predictions" / "validation.jsonl")) == 2
    assert [r["label"] for r in read_jsonl(model / "predictions" / "test_positives.jsonl")] == ["positive"] * 2


def test_evaluate_scores_two_files_as_fine_tuning_does(sentiment_model, capsys, mlm_log):
    tmp_path, model, mixed, _ = sentiment_model
    flipped = tmp_path / "flipped.jsonl"  # another layout; gold labels wrong on purpose for 1 of 4 rows
    flipped.write_text("".join(json.dumps({"review": t, "stars": l}) + "\n" for t, l in
                               [("great fun", "positive"), ("i hate it", "negative"), ("bad plot", "positive"),
                                ("i love it", "1")]))
    out = tmp_path / "eval"
    out.mkdir()
    code, captured = run_cli(capsys, "evaluate", "--model", model, "--input", mixed, "--input", flipped,
                             "--text_column", "review", "--label_column", "stars", "--output_dir", out)
    assert code == 1 and "mixed.tsv:1: missing text column 'review'" in captured.err  # flags apply to every input
    code, _ = run_cli(capsys, "evaluate", "--model", model, "--input", mixed, "--output_dir", out, "--num_threads", 1)
    assert code == 0 and "threads: 1 (--num_threads;" in mlm_log.text
    mixed_scores = json.loads((out / "eval_mixed.json").read_text())
    trained = json.loads((model / "metrics.json").read_text())
    assert mixed_scores["examples"] == 5 and mixed_scores["accuracy"] == 1.0
    assert {k: v for k, v in mixed_scores.items() if k not in ("input", "examples")} == {
        k.removeprefix("test_mixed_"): v for k, v in trained.items() if k.startswith("test_mixed_")}
    assert read_jsonl(out / "predictions" / "mixed.jsonl") == read_jsonl(model / "predictions" / "test_mixed.jsonl")
    code, _ = run_cli(capsys, "evaluate", "--model", model, "--input", flipped, mixed.with_name("positives.csv"),
                      "--text_column", "review", "--label_column", "stars", "--output_dir", out)
    assert code == 1  # positives.csv has no column review: one line, naming it
    code, _ = run_cli(capsys, "evaluate", "--model", model, "--input", flipped, "--text_column", "review",
                      "--label_column", "stars", "--output_dir", out)
    flipped_scores = json.loads((out / "eval_flipped.json").read_text())
    assert code == 0 and flipped_scores["accuracy"] == 0.75 and flipped_scores["per_class"]["positive"]["support"] == 3


def test_evaluate_refuses_unlabelled_rows_and_name_clashes(sentiment_model, tmp_path, capsys):
    _, model, mixed, _ = sentiment_model
    unlabelled = tmp_path / "u.tsv"
    unlabelled.write_text("great fun\t1\nbad plot\t\n")
    (tmp_path / "b").mkdir()
    code, captured = run_cli(capsys, "evaluate", "--model", model, "--input", unlabelled, "--output_dir", tmp_path)
    assert code == 1 and "u.tsv:2" in captured.err
    code, captured = run_cli(capsys, "evaluate", "--model", model, "--input", mixed, tmp_path / "b" / "mixed.tsv")
    assert code == 1 and "are both named 'mixed'" in captured.err


def test_a_headerless_file_with_class_names_needs_no_header_at_evaluate(sentiment_model, tmp_path, capsys):
    _, model, _, _ = sentiment_model  # trained by position: nothing in line 1 tells data from a header
    named = tmp_path / "named.tsv"
    named.write_text("great fun\tpositive\nbad plot\tnegative\n")
    code, captured = run_cli(capsys, "evaluate", "--model", model, "--input", named, "--output_dir", tmp_path)
    assert code == 1 and "named.tsv:1: cannot tell whether line 1 (great fun | positive) is a header" in captured.err
    code, _ = run_cli(capsys, "evaluate", "--model", model, "--input", named, "--output_dir", tmp_path, "--no_header")
    scores = json.loads((tmp_path / "eval_named.json").read_text())
    assert code == 0 and (scores["examples"], scores["accuracy"]) == (2, 1.0)
