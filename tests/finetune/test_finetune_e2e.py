"""Fine-tuning end to end through `mlm finetune` and `mlm predict`, on tiny hand-made data."""
import json

import pytest
import torch

from mlm.cli import main as cli_main

POSITIVE = ["great fun", "i love this movie", "good acting and a great story", "a fun film", "great plot",
            "love the acting", "good good film", "a great great movie", "fun story", "i love it"]
NEGATIVE = ["bad plot", "i hate this movie", "terrible acting and a boring story", "a boring film", "bad bad film",
            "hate the story", "terrible movie", "boring and bad", "a terrible plot", "i hate it"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_cli(capsys, *argv):
    code = cli_main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured


def common(tmp_path, backbone, name, **extra):
    args = {"--model_name_or_path": backbone, "--output_dir": tmp_path / name, "--per_device_train_batch_size": 4,
            "--per_device_eval_batch_size": 8, "--logging_steps": 5, "--disable_tqdm": "true", "--seed": 0,
            "--learning_rate": 3e-3, "--weight_decay": 0.0}
    args.update(extra)
    return [x for kv in args.items() for x in kv]


def saved_settings_round_trip(out, **resolved):
    """mlm_task.json holds the run's settings with what the data resolved, and `mlm predict` loads them back as
    the task's Config: the same settings, nothing lost or changed on the way."""
    from finetune.predict import load_task
    from finetune.saved import SavedTask
    from mlm.core.resume_settings import settings_of

    saved = SavedTask.from_json(str(out / "mlm_task.json"))
    task, cfg, labels = load_task(str(out))
    assert type(cfg) is task.Config and labels == list(saved.labels)
    assert {k: saved.settings[k] for k in resolved} == resolved and {k: getattr(cfg, k) for k in resolved} == resolved
    assert settings_of(cfg) == saved.settings


@pytest.fixture
def sentiment_files(tmp_path):
    train = tmp_path / "train.csv"
    rows = [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE]
    train.write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))
    return train


def test_classification_fits_separable_data_and_predicts(tmp_path, tiny_bert_dir, sentiment_files, capsys):
    code, _ = run_cli(capsys, "finetune", "--task", "cls", "--train_file", sentiment_files,
                      "--validation_file", sentiment_files, "--test_file", sentiment_files,
                      *common(tmp_path, tiny_bert_dir, "cls", **{"--num_train_epochs": 12, "--eval_steps": 20,
                                                                  "--metric_for_best_model": "accuracy"}))
    assert code == 0
    out = tmp_path / "cls"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_accuracy"] == 1.0 and metrics["test_accuracy"] == 1.0 and metrics["eval_macro_f1"] == 1.0
    assert set(metrics["eval_per_class"]) == {"neg", "pos"}
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    preds = [json.loads(l) for l in (out / "predictions" / "validation.jsonl").read_text().splitlines()]
    assert len(preds) == 20 and all(p["label"] == p["gold"] for p in preds)
    assert (out / "predictions" / "test.jsonl").exists()
    saved_settings_round_trip(out, problem_type="single_label", text_pair_column="none")

    code, captured = run_cli(capsys, "predict", "--model", out, "--text", "a great fun movie")
    assert code == 0
    record = json.loads(captured.out.strip())
    assert record["label"] == "pos" and 0.5 < record["score"] <= 1.0

    # --quantize: int8 Linear layers, same decision on this clear-cut input, a close score.
    code, captured = run_cli(capsys, "predict", "--model", out, "--text", "a great fun movie", "--quantize")
    assert code == 0
    quantized = json.loads(captured.out.strip())
    assert quantized["label"] == "pos" and abs(quantized["score"] - record["score"]) < 0.05
    from finetune.predict import load_model, load_task

    model = load_model(load_task(str(out))[0], str(out), quantize=True)
    query = model.bert.encoder.layer[0].attention.self.query
    assert query.weight().dtype == torch.qint8 and query.weight().qscheme() == torch.per_channel_affine

    reviews = tmp_path / "reviews.csv"  # another column name: --text_column says which
    reviews.write_text("id,review\n7,a boring bad film\n")
    code, captured = run_cli(capsys, "predict", "--model", out, "--input", reviews, "--text_column", "review")
    assert code == 0 and json.loads(captured.out)["source"] == f"{reviews}:2"
    code, captured = run_cli(capsys, "predict", "--model", out, "--text", "x", "--text_pair_column", "other")
    assert code == 1 and "this model classifies single texts" in captured.err

    from transformers import pipeline

    clf = pipeline("text-classification", model=str(out))
    assert clf("a boring bad film")[0]["label"] == "neg"


def test_classification_bad_input_is_one_line(tmp_path, tiny_bert_dir, sentiment_files, capsys):
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\ngreat fun,pos\nso so,neutral\n")
    code, captured = run_cli(capsys, "finetune", "--task", "cls", "--train_file", sentiment_files,
                             "--validation_file", dev, *common(tmp_path, tiny_bert_dir, "bad"))
    errors = [l for l in captured.err.splitlines() if l.startswith("mlm ")]
    assert code == 1 and len(errors) == 1 and "dev.csv:3" in errors[0] and "neutral" in errors[0]
    code, captured = run_cli(capsys, "finetune", "--task", "cls", *common(tmp_path, tiny_bert_dir, "nodata"))
    assert code == 1 and "--train_file" in captured.err
    code, captured = run_cli(capsys, "finetune", "--task", "cls", "--data_dir", tmp_path / "nowhere",
                             "--train_file", "train.tsv", *common(tmp_path, tiny_bert_dir, "nodir"))
    assert code == 1 and "DATA=" in captured.err


def test_dropout_flags_override_the_backbones_and_bad_ones_are_one_line(tmp_path, tiny_bert_dir, sentiment_files,
                                                                         capsys):
    """A backbone pretrained without dropout fine-tunes with the dropout the flags ask for (the fine-tuning recipes
    set 0.1); without the flags it keeps its own; a value out of [0, 1) is refused naming the key."""
    import shutil

    from transformers import AutoConfig

    no_dropout = tmp_path / "no-dropout"
    shutil.copytree(tiny_bert_dir, no_dropout)
    config = AutoConfig.from_pretrained(no_dropout)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(no_dropout)
    flags = ("finetune", "--task", "cls", "--train_file", sentiment_files, "--max_steps", 2)
    code, _ = run_cli(capsys, *flags, *common(tmp_path, no_dropout, "kept"))
    assert code == 0 and AutoConfig.from_pretrained(tmp_path / "kept").hidden_dropout_prob == 0.0
    code, _ = run_cli(capsys, *flags, "--hidden_dropout_prob", 0.1, "--attention_probs_dropout_prob", 0.2,
                      *common(tmp_path, no_dropout, "set"))
    config = AutoConfig.from_pretrained(tmp_path / "set")
    assert code == 0 and (config.hidden_dropout_prob, config.attention_probs_dropout_prob) == (0.1, 0.2)
    code, captured = run_cli(capsys, *flags, "--hidden_dropout_prob", 1.5, *common(tmp_path, no_dropout, "bad"))
    assert code != 0 and "hidden_dropout_prob" in captured.err and "[0, 1)" in captured.err


def test_ner_learns_entities_and_predicts_char_spans(tmp_path, tiny_bert_dir, capsys):
    sentences = [
        [("John", "I-PER"), ("visited", "O"), ("Paris", "I-LOC")],
        [("Smith", "I-PER"), ("works", "O"), ("in", "O"), ("London", "I-LOC")],
        [("Google", "I-ORG"), ("visited", "O"), ("Berlin", "I-LOC")],
        [("Apple", "I-ORG"), ("works", "O"), ("in", "O"), ("Paris", "I-LOC")],
        [("John", "I-PER"), ("Smith", "I-PER"), ("lives", "O"), ("in", "O"), ("London", "I-LOC")],
    ] * 4
    conll = tmp_path / "train.conll"
    conll.write_text("-DOCSTART- -X- O O\n\n" + "\n\n".join("\n".join(f"{w} NNP O {t}" for w, t in s) for s in sentences) + "\n")
    code, _ = run_cli(capsys, "finetune", "--task", "ner", "--train_file", conll, "--validation_file", conll,
                      *common(tmp_path, tiny_bert_dir, "ner", **{"--num_train_epochs": 15, "--eval_steps": 25}))
    assert code == 0
    out = tmp_path / "ner"
    saved_settings_round_trip(out, stride=32)  # the default, derived from max_seq_length 128 when parsed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_f1"] == 1.0 and set(metrics["eval_per_type"]) == {"LOC", "ORG", "PER"}
    code, captured = run_cli(capsys, "predict", "--model", out, "--text", "John  visited Paris")
    entities = json.loads(captured.out)["entities"]
    assert [(e["type"], e["start"], e["end"], e["text"]) for e in entities] == [("PER", 0, 4, "John"), ("LOC", 14, 19, "Paris")]

    from finetune.ner.tags import to_iob2

    # mlm evaluate on two files of other layouts, with known scores: the training sentences in IOB2 JSON lines
    # (all right), and a CoNLL file whose gold misses Paris (2 entities predicted, 1 gold: P 0.5, R 1, F1 2/3).
    tagged = tmp_path / "tagged.jsonl"
    tagged.write_text("".join(json.dumps({"tokens": [w for w, _ in s], "tags": to_iob2([t for _, t in s])}) + "\n"
                              for s in sentences[:5]))
    missed = tmp_path / "missed.conll"
    missed.write_text("John B-PER\nvisited O\nParis O\n")
    code, captured = run_cli(capsys, "evaluate", "--model", out, "--input", tagged, missed)
    assert code == 0
    tagged_scores = json.loads((out / "eval_tagged.json").read_text())
    assert tagged_scores["examples"] == 5 and tagged_scores["f1"] == 1.0
    missed_scores = json.loads((out / "eval_missed.json").read_text())
    assert (missed_scores["precision"], missed_scores["recall"]) == (0.5, 1.0)
    assert missed_scores["f1"] == pytest.approx(2 / 3)
    assert read_jsonl(out / "predictions" / "missed.jsonl")[0]["predicted_tags"] == ["B-PER", "O", "B-LOC"]


def test_qa_learns_spans_and_answers(tmp_path, tiny_bert_dir, capsys, mlm_log):
    context = "john visited paris in 1999 . smith works in london ."
    questions = [("who visited paris ?", "john"), ("where does smith work ?", "london"), ("when did john visit ?", "1999")]
    rows = []
    for i in range(6):
        for q, a in questions:
            rows.append({"id": f"{i}-{q}", "question": q, "context": context,
                         "answers": {"text": [a], "answer_start": [context.index(a)]}})
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _ = run_cli(capsys, "finetune", "--task", "qa", "--train_file", data, "--validation_file", data,
                      "--max_seq_length", 32, "--doc_stride", 8, "--max_query_length", 12,
                      *common(tmp_path, tiny_bert_dir, "qa", **{"--num_train_epochs": 20, "--eval_steps": 30}))
    assert code == 0
    # The log counts questions and the windows they become (here one each: the context fits 32 tokens).
    assert "qa: 18 train questions, 18 validation questions" in mlm_log.text
    assert "encoded: train 18 questions -> 18 windows, validation 18 questions -> 18 windows" in mlm_log.text
    out = tmp_path / "qa"
    saved_settings_round_trip(out, version_2_with_negative=False, doc_stride=8)  # v2: auto, resolved from the data
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_exact_match"] == 100.0 and metrics["eval_f1"] == 100.0
    squad = json.loads((out / "predictions" / "validation_squad.json").read_text())
    assert squad["0-who visited paris ?"] == "john"
    code, captured = run_cli(capsys, "predict", "--model", out, "--question", "where does smith work ?", "--context", context)
    record = json.loads(captured.out)
    assert record["prediction_text"] == "london" and context[record["start"]:record["end"]] == "london"

    # mlm evaluate on two files with known scores: the training rows (all right) and SQuAD JSON whose second
    # gold answer is wrong on purpose (EM 50, F1 50); the {id: answer} file comes along as in fine-tuning.
    squad = tmp_path / "dev-squad.json"
    qas = [{"id": "a", "question": "who visited paris ?", "answers": [{"text": "john", "answer_start": 0}]},
           {"id": "b", "question": "where does smith work ?", "answers": [{"text": "paris", "answer_start": 13}]}]
    squad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}))
    code, _ = run_cli(capsys, "evaluate", "--model", out, "--input", data, squad, "--output_dir", tmp_path)
    assert code == 0
    assert json.loads((tmp_path / "eval_qa.json").read_text())["exact_match"] == 100.0
    scores = json.loads((tmp_path / "eval_dev-squad.json").read_text())
    assert (scores["examples"], scores["exact_match"], scores["f1"]) == (2, 50.0, 50.0)
    assert json.loads((tmp_path / "predictions" / "dev-squad_squad.json").read_text()) == {"a": "john", "b": "london"}


def test_predict_checks_its_settings_before_any_work(tmp_path, tiny_bert_dir, capsys):
    """A plain HF QA checkpoint (128 positions, no mlm_task.json): the 384-token QA defaults are fitted to it;
    bad flags and outputs are one-line errors that leave an existing output file alone."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from finetune.predict import load_task

    model_dir = tmp_path / "hf-qa"
    AutoModelForQuestionAnswering.from_pretrained(tiny_bert_dir).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(model_dir)
    _, cfg, _ = load_task(str(model_dir))
    assert (cfg.max_seq_length, cfg.doc_stride, cfg.max_query_length) == (128, 42, 21)
    cfg.check_lengths(128)

    context = " ".join(["john smith lives in london ."] * 40)  # ~240 tokens: several windows
    code, captured = run_cli(capsys, "predict", "--model", model_dir, "--question", "who ?", "--context", context)
    assert code == 0 and json.loads(captured.out)["prediction_text"] in context

    questions = tmp_path / "in.jsonl"
    questions.write_text(json.dumps({"question": "who ?", "context": "john smith ."}) + "\n")
    kept = tmp_path / "kept.jsonl"
    kept.write_text("earlier predictions\n")
    for flags, message in [
        (["--max_seq_length", "300"], "--max_seq_length: 300 exceeds the model's 128 positions"),
        (["--max_seq_length", "4"], "--max_seq_length: must be >= 8"),
        (["--max_seq_length", "24"], "--max_seq_length: doc_stride: 42 must be < max_seq_length - max_query_length - 3"),
        (["--batch_size", "0"], "--batch_size: must be >= 1"),
        (["--output", tmp_path / "missing" / "out.jsonl"], "does not exist"),
        (["--output", tmp_path / "out.csv"], "name the file .jsonl"),
        (["--output", questions], "is the --input file"),
        (["--output", tmp_path], "is a folder"),
    ]:
        code, captured = run_cli(capsys, "predict", "--model", model_dir, "--input", questions, *flags)
        errors = [line for line in captured.err.splitlines() if line.startswith("mlm ")]
        assert code == 1 and len(errors) == 1 and message in errors[0], (flags, captured.err)
    code, _ = run_cli(capsys, "predict", "--model", model_dir, "--input", tmp_path / "nothing.jsonl", "--output", kept)
    assert code == 1 and kept.read_text() == "earlier predictions\n"
    code, _ = run_cli(capsys, "predict", "--model", model_dir, "--input", questions, "--output", kept)
    assert code == 0 and json.loads(kept.read_text())["id"] == "1" and not (tmp_path / "kept.jsonl.tmp").exists()


def test_roberta_backbone_and_a_bert_tokenizer_on_it(tmp_path, tiny_roberta_dir, tiny_bert_dir, capsys):
    """RoBERTa: 130 position embeddings hold 128 tokens, and one token type: a BERT tokenizer's segment ids
    for the pair (0/1) must not reach it."""
    context = "John Smith visited Paris . Angela lives in Berlin ."
    rows = [{"id": str(i), "question": "who visited Paris ?", "context": context,
             "answers": {"text": ["John Smith"], "answer_start": [0]}} for i in range(8)]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["finetune", "--task", "qa", "--train_file", data, "--max_query_length", 12, "--doc_stride", 16,
            "--max_steps", 2]
    code, captured = run_cli(capsys, *args, "--max_seq_length", 130, *common(tmp_path, tiny_roberta_dir, "long"))
    assert code == 1 and "max_seq_length: 130 exceeds the model's 128 positions" in captured.err
    code, _ = run_cli(capsys, *args, "--max_seq_length", 128, *common(tmp_path, tiny_roberta_dir, "qa"))
    assert code == 0
    code, captured = run_cli(capsys, "predict", "--model", tmp_path / "qa", "--question", "who ?", "--context", context)
    record = json.loads(captured.out)
    assert code == 0 and context[record["start"]:record["end"]] == record["prediction_text"]
    code, _ = run_cli(capsys, *args, "--max_seq_length", 64, "--tokenizer_name", tiny_bert_dir,
                      *common(tmp_path, tiny_roberta_dir, "mixed"))
    assert code == 0
