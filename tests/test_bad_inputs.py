"""Bad and damaged inputs through the real CLI (issue 18): every case is exit status 1, ONE `mlm ...: error:` line
on stderr naming the file (and line, key or flag), no traceback, and an earlier run's output folder (or an
earlier predictions file) left exactly as it was. Unusual but valid inputs train, and repairs are warned about.

One tiny backbone and one fine-tuned classifier serve every case; the errors come before any training.
"""
import gzip
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from mlm.cli import main as cli_main
from test_finetune_e2e import NEGATIVE, POSITIVE

GOOD_CSV = "text,label\n" + "".join(f"{t},pos\n" for t in POSITIVE) + "".join(f"{t},neg\n" for t in NEGATIVE)
GOOD_ROWS = [{"text": t, "label": "pos"} for t in POSITIVE] + [{"text": t, "label": "neg"} for t in NEGATIVE]
INTEGER_ROWS = "".join(f"{t},{i % 2}\n" for i, t in enumerate(POSITIVE + NEGATIVE))
CONLL = "john B-PER\nsmith I-PER\nvisited O\nparis B-LOC\n\nangela B-PER\nlives O\n"
QA_ROW = {"id": "q1", "question": "who ?", "context": "john smith lives in london .",
          "answers": {"text": ["john smith"], "answer_start": [0]}}
TRAIN_FLAGS = ["--max_steps", "1", "--per_device_train_batch_size", "4", "--disable_tqdm", "true"]


def jsonl(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def cut_gzip(header: str, row: str) -> bytes:
    """The first half of a gzip file of varied rows (`row` formatted with a number): cut mid-stream."""
    data = gzip.compress((header + "".join(row.format(i * 7919 % 10007, i) for i in range(3000))).encode())
    return data[: len(data) // 2]


def squad(paragraphs) -> str:
    return json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]})


# -------------------------------------------------------------------------------------------- fixtures


def run(capsys, *argv) -> tuple[int, str]:
    code = cli_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, tiny_bert_dir):
    """A finished classification run (with a checkpoint): the folder every refused run must leave alone, and the
    model `mlm predict` cases load."""
    folder = tmp_path_factory.mktemp("earlier")
    (folder / "train.csv").write_text(GOOD_CSV)
    code = cli_main([str(a) for a in ["finetune", "--task", "cls", "--model_name_or_path", tiny_bert_dir, "--train_file",
                                      folder / "train.csv", "--output_dir", folder / "run", "--save_steps", "2",
                                      "--max_steps", "2", "--per_device_train_batch_size", "4", "--disable_tqdm", "true"]])
    assert code == 0
    return folder / "run"


@pytest.fixture(scope="module")
def task_models(tmp_path_factory, tiny_bert_dir, earlier):
    """{task: a fine-tuned model folder} for cls (the earlier run), ner and qa (one training step each)."""
    folder = tmp_path_factory.mktemp("models")
    models = {"cls": earlier}
    for task, name, content, flags in (
            ("ner", "t.conll", CONLL, []),
            ("qa", "t.jsonl", jsonl(QA_ROW), ["--max_seq_length", "64", "--doc_stride", "16", "--max_query_length", "16"])):
        (folder / name).write_text(content)
        models[task] = folder / task
        code = cli_main([str(a) for a in ["finetune", "--task", task, "--model_name_or_path", tiny_bert_dir,
                                          "--train_file", folder / name, "--output_dir", models[task], *TRAIN_FLAGS,
                                          *flags]])
        assert code == 0
    return models


def snapshot(*paths) -> dict:
    """Every file under `paths` with its size, time and bytes' hash, and any moved-aside `.old-*` sibling."""
    state = {}
    for path in map(str, paths):
        state["siblings " + path] = sorted(n for n in os.listdir(os.path.dirname(path))
                                           if n.startswith(os.path.basename(path) + ".old-"))
        files = [path] if os.path.isfile(path) else [os.path.join(d, n) for d, _, ns in os.walk(path) for n in ns]
        for file in files:
            stat = os.stat(file)
            with open(file, "rb") as f:
                state[file] = (stat.st_size, stat.st_mtime_ns, hash(f.read()))
    return state


def refused(capsys, argv, message: str, *untouched) -> str:
    """Run the CLI; assert the one-line error matching `message` and that `untouched` did not change."""
    before = snapshot(*untouched)
    code, err = run(capsys, *argv)
    errors = [line for line in err.splitlines() if line.startswith("mlm ")]
    assert code == 1 and len(errors) == 1 and ": error: " in errors[0], err
    assert re.search(message, errors[0]), (message, errors[0])
    assert snapshot(*untouched) == before
    return errors[0]


def write(folder, name: str, content) -> str:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------- data files

# (task, file name, content, extra flags, expected message after "<file>:"). Task "pretrain" runs `mlm pretrain`.
DATA_CASES = {
    # classification labels
    "cls-nan-label": ("cls", "t.csv", GOOD_CSV + "odd one,nan\n", [], r"22: column 'label': label 'nan' is NaN or inf"),
    "cls-json-NaN-label": ("cls", "t.jsonl", jsonl(*GOOD_ROWS, '{"text": "odd", "label": NaN}'), [],
                           r"21: column 'label': label 'nan' is NaN or inf"),
    "cls-inf-label": ("cls", "t.csv", GOOD_CSV + "odd,inf\n", [], r"22: .*label 'inf' is NaN or infinite"),
    "cls-one-list-label": ("cls", "t.jsonl", jsonl(*GOOD_ROWS, {"text": "odd", "label": ["pos"]}), [],
                           r"21: label \['pos'\] is a list, but 20 of 21 .*--problem_type multi_label"),
    "cls-one-half-label": ("cls", "t.csv", "text,label\n" + INTEGER_ROWS + "odd,0.5\n", [],
                           r"22: label '0.5' is fractional, but only 1 of 21 .*--problem_type regression"),
    "cls-fraction-among-stars": ("cls", "t.csv", "text,label\n" + "".join(f"{t},{1 + i % 5}\n" for i, t in
                                 enumerate(POSITIVE + NEGATIVE)) + "odd,2.5\n", [], r"22: label '2.5' is fractional"),
    "cls-fraction-among-names": ("cls", "t.csv", GOOD_CSV + "odd,0.5\n", [], r"22: label '0.5' is fractional"),
    "cls-duplicate-label-header": ("cls", "t.csv", "text,label,label\n" + "".join(f"{t},pos,neg\n" for t in POSITIVE),
                                   [], r"1: column 'label' appears twice in the header \(columns 1 and 2\)"),
    "cls-duplicate-json-key": ("cls", "t.jsonl", jsonl(*GOOD_ROWS, '{"text": "a", "label": "pos", "label": "neg"}'),
                               [], r"21: key 'label' appears twice"),
    "cls-one-class": ("cls", "t.csv", "text,label\n" + "".join(f"{t},pos\n" for t in POSITIVE), [],
                      r" every training label is 'pos': a classifier needs at least two classes"),
    "cls-empty-label": ("cls", "t.csv", GOOD_CSV + "odd,\n", [], r"22: column 'label': empty label"),
    "cls-list-label-single": ("cls", "t.jsonl", jsonl(*GOOD_ROWS, {"text": "odd", "label": ["pos"]}),
                              ["--problem_type", "single_label"], r"21: column 'label': label \['pos'\] is not one class"),
    "cls-regression-word": ("cls", "t.csv", "text,label\na,0.5\nb,high\n", ["--problem_type", "regression"],
                            r"3: column 'label': non-numeric regression target 'high'"),
    # malformed delimited files
    "cls-nul-byte": ("cls", "t.csv", GOOD_CSV.replace("great plot", "great\0plot"), [], r"6: a NUL byte at character 5"),
    "cls-unterminated-quote": ("cls", "t.csv", GOOD_CSV + '"never closed,pos\nmore,neg\n', [],
                               r"22: malformed csv line .*a quote opened here is never closed"),
    "cls-quote-then-text": ("cls", "t.csv", GOOD_CSV + '"closed" early,pos\n', [], r"22: malformed csv line"),
    "cls-wrong-field-count": ("cls", "t.csv", GOOD_CSV + "a,b,pos\n", [], r"22: expected 2 fields \(text, label\)"),
    "cls-tsv-as-csv": ("cls", "t.csv", GOOD_CSV.replace(",", "\t"), [], r"1: missing text column .*delimiter tab"),
    "cls-not-utf8": ("cls", "t.csv", GOOD_CSV.encode() + b"caf\xe9,pos\n", [], r"22: not valid UTF-8"),
    "cls-empty-file": ("cls", "t.csv", "", [], r" no examples"),
    "cls-header-only": ("cls", "t.csv", "text,label\n", [], r" no examples"),
    "cls-missing-label-column": ("cls", "t.csv", "text,stars\na,1\n", [], r"1: missing label column 'label'"),
    "cls-empty-text": ("cls", "t.csv", GOOD_CSV + " ,pos\n", [], r"22: empty text in column 'text'"),
    "cls-empty-pair-text": ("cls", "t.csv", "sentence1,sentence2,label\na,b,0\nc, ,1\n", [],
                            r"3: empty text in column 'sentence2'"),
    "cls-invalid-json": ("cls", "t.jsonl", jsonl(*GOOD_ROWS[:3], '{"text": "a", "label": }'), [], r"4: invalid JSON"),
    "cls-json-nested-too-deeply": ("cls", "t.jsonl", "[" * 100_000 + "\n", [], r"1: invalid JSON \(nested too deeply\)"),
    "cls-json-not-object": ("cls", "t.jsonl", jsonl(*GOOD_ROWS[:3], "[1, 2]"), [], r"4: expected a JSON object"),
    "cls-json-array-not-object": ("cls", "t.json", json.dumps([GOOD_ROWS[0], 3]), [], r" record 2: expected a JSON"),
    "cls-text-not-string": ("cls", "t.jsonl", jsonl(*GOOD_ROWS[:3], {"text": 3, "label": "pos"}), [],
                            r"4: column 'text' should hold text, got int"),
    "cls-gz-not-gzip": ("cls", "t.csv.gz", GOOD_CSV, [], r" not a gzip file, though named .gz"),
    "cls-gz-truncated": ("cls", "t.csv.gz", cut_gzip("text,label\n", "great {0} fun,pos\nbad {1},neg\n"), [],
                         r"\d+: damaged gzip data"),
    "cls-parquet-garbage": ("cls", "t.parquet", b"PAR1 not really", [], r" not a readable parquet file"),
    "cls-unknown-suffix": ("cls", "t.xlsx", "x", [], r" unknown file type"),
    # NER tokens and tags
    "ner-empty-token": ("ner", "t.jsonl", jsonl({"tokens": ["john", ""], "tags": ["B-PER", "O"]}), [],
                        r"1: 'tokens': word 1 is '', empty or only spaces"),
    "ner-space-token": ("ner", "t.jsonl", jsonl({"tokens": [" ", "john"], "tags": ["O", "B-PER"]}), [],
                        r"1: 'tokens': word 0 is ' '"),
    "ner-iob1-with-E-tag": ("ner", "t.conll", "john I-PER\nsmith I-PER\nvisited O\nparis E-LOC\n", [],
                            r"1: tag 'I-PER' after 'the sentence start' is not iobes \(detected from the file"),
    "ner-bio-forced-bilou": ("ner", "t.conll", CONLL, ["--tag_scheme", "bilou"],
                             r"3: 'O' after 'I-PER' is not bilou: expected I-PER or L-PER"),
    "ner-bilou-open-at-end": ("ner", "t.conll", "john U-PER\nparis B-LOC\n", [],
                              r"2: the sentence end after 'B-LOC' is not bilou"),
    "ner-bad-prefix": ("ner", "t.conll", "john X-PER\nsmith O\n", ["--tag_scheme", "iob2"], r"1: tag 'X-PER' is not iob2"),
    "ner-cls-csv": ("ner", "t.csv", GOOD_CSV, [], r" NER reads CoNLL column files .* not csv tables"),
    "ner-cls-tsv": ("ner", "t.tsv", "sentence\tlabel\ngreat fun\t1\n", [],
                    r"2: 3 columns, but line 1 has 2 .*not a CoNLL file"),
    "ner-one-column": ("ner", "t.conll", "john\nsmith\n", [], r"1: token_column and tag_column .*not a CoNLL file"),
    "ner-length-mismatch": ("ner", "t.jsonl", jsonl({"tokens": ["a", "b"], "tags": ["O"]}), [], r"1: 2 tokens but 1 tags"),
    "ner-integer-tags": ("ner", "t.jsonl", jsonl({"tokens": ["a"], "tags": [1]}), [], r"1: 'tags' must be a list of str"),
    "ner-all-O": ("ner", "t.conll", "a O\nb O\n", [], r" no entity tags \(every tag is O\)"),
    "ner-json-in-conll": ("ner", "t.conll", jsonl({"tokens": ["a"]}), [], r"1: looks like JSON, not CoNLL"),
    "ner-nul-byte": ("ner", "t.conll", CONLL.replace("smith", "sm\0ith"), [], r"2: a NUL byte"),
    "ner-gz-not-gzip": ("ner", "t.conll.gz", CONLL, [], r" not a gzip file"),
    "ner-tag-column-out-of-range": ("ner", "t.conll", CONLL, ["--tag_column", "5"], r"1: tag_column=5 is out of range"),
    # QA
    "qa-invalid-json": ("qa", "t.json", '{"data": [', [], r"1: invalid JSON"),
    "qa-missing-question": ("qa", "t.jsonl", jsonl({k: v for k, v in QA_ROW.items() if k != "question"}), [],
                            r'1: id q1: missing field "question"'),
    "qa-answers-type": ("qa", "t.jsonl", jsonl({**QA_ROW, "answers": "john"}), [], r'1: id q1: "answers" must be a list'),
    "qa-answer-start-type": ("qa", "t.jsonl", jsonl({**QA_ROW, "answers": [{"text": "john", "answer_start": "0"}]}),
                             [], r"1: id q1: an answer needs a string text and an integer answer_start"),
    "qa-duplicate-id": ("qa", "t.jsonl", jsonl(QA_ROW, QA_ROW), [], r"2: duplicate id q1 \(first at"),
    "qa-is-impossible": ("qa", "t.jsonl", jsonl({**QA_ROW, "is_impossible": "maybe"}), [],
                         r'1: id q1: "is_impossible" must be true or false'),
    "qa-gz-not-gzip": ("qa", "t.json.gz", squad([]), [], r" not a gzip file"),
    "qa-csv": ("qa", "t.csv", "question,context\n", [], r" QA reads SQuAD .json, .jsonl or .parquet"),
    "qa-data-not-list": ("qa", "t.json", json.dumps({"data": {}}), [], r' "data" must be a list of articles'),
    "qa-empty-context": ("qa", "t.jsonl", jsonl({**QA_ROW, "context": " "}), [], r"1: id q1: empty context"),
    "qa-duplicate-key": ("qa", "t.jsonl", jsonl('{"id": "a", "id": "b"}'), [], r"1: key 'id' appears twice"),
    "qa-not-utf8": ("qa", "t.json", b'{"data": ["caf\xe9"]}', [], r"1: not valid UTF-8"),
    # pretraining corpora
    "pretrain-gz-not-gzip": ("pretrain", "c.txt.gz", "some text\n", [], r" not a gzip file"),
    "pretrain-gz-truncated": ("pretrain", "c.txt.gz", cut_gzip("", "the cat {} sat\n"), [],
                              r"\d+: damaged gzip data"),
    "pretrain-not-utf8": ("pretrain", "c.txt", b"the cat\n\xff\xfe sat\n", [], r"2: not valid UTF-8"),
    "pretrain-csv-nul": ("pretrain", "c.csv", "text\nthe cat\nthe\0dog\n", [], r"3: a NUL byte"),
    "pretrain-csv-unterminated": ("pretrain", "c.csv", 'text\n"the cat\nsat\n', [], r"2: malformed csv line"),
    "pretrain-csv-duplicate-header": ("pretrain", "c.csv", "text,text\na,b\n", [], r"1: column 'text' appears twice"),
    "pretrain-missing-column": ("pretrain", "c.csv", "body\nthe cat\n", [], r"2: missing column 'text'"),
    "pretrain-empty": ("pretrain", "c.txt", "\n\n", [], r" no text found"),
    "pretrain-invalid-jsonl": ("pretrain", "c.jsonl", '{"text": "a"}\n{"text": \n', [], r"2: invalid JSON"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_is_one_line_and_leaves_the_earlier_run(case, tmp_path, tiny_bert_dir, earlier, capsys):
    task, name, content, flags, message = DATA_CASES[case]
    path = write(tmp_path, name, content)
    if task == "pretrain":
        argv = ["pretrain", "--train_file", path, "--tokenizer_name", tiny_bert_dir, "--cache_dir", tmp_path / "cache",
                "--model_preset", "tiny", "--max_seq_length", "32"]
    else:
        argv = ["finetune", "--task", task, "--model_name_or_path", tiny_bert_dir, "--train_file", path]
    argv += ["--output_dir", earlier, "--overwrite_output_dir", "true", *TRAIN_FLAGS, *flags]
    refused(capsys, argv, "^mlm [a-z]+: error: " + re.escape(path) + ":" + message, earlier)


def test_a_label_names_file_that_is_not_text_is_one_line(tmp_path, tiny_bert_dir, earlier, capsys):
    names = write(tmp_path, "names.txt", b"\xff\xfe0=neg")
    refused(capsys, ["finetune", "--task", "cls", "--model_name_or_path", tiny_bert_dir, "--train_file",
                     write(tmp_path, "t.csv", "text,label\n" + INTEGER_ROWS), "--label_names", names, "--output_dir",
                     earlier, "--overwrite_output_dir", "true", *TRAIN_FLAGS],
            re.escape(names) + r":1: not valid UTF-8", earlier)


# ------------------------------------------------------------------------------------ damaged models


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "weights-truncated": ("model.safetensors", truncate, r"model.safetensors: damaged weights \(\d+ bytes where its "
                          r"header describes \d+: truncated or padded\); re-download or re-export the model"),
    "weights-random": ("model.safetensors", lambda p: p.write_bytes(os.urandom(4096)),
                       r"model.safetensors: damaged weights \(no safetensors header"),
    "weights-empty": ("model.safetensors", lambda p: p.write_bytes(b""), r"damaged weights \(0 bytes, too short"),
    "tokenizer-invalid": ("tokenizer.json", lambda p: p.write_text('{"broken'),
                          r"cannot load the tokenizer \(.*\); re-download or re-export the model"),
    "config-invalid": ("config.json", lambda p: p.write_text('{"model_type": "bert",'),
                       r"config.json:1: not valid JSON .*re-download or re-export the model"),
}


def damaged_copy(source, tmp_path, damage: str):
    name, how, message = DAMAGE[damage]
    folder = tmp_path / "damaged"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("checkpoints"))
    how(folder / name)
    return folder, message


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_backbone_is_one_line(damage, tmp_path, tiny_bert_dir, earlier, capsys):
    backbone, message = damaged_copy(tiny_bert_dir, tmp_path, damage)
    train = write(tmp_path, "t.csv", GOOD_CSV)
    refused(capsys, ["finetune", "--task", "cls", "--model_name_or_path", backbone, "--train_file", train,
                     "--output_dir", earlier, "--overwrite_output_dir", "true", *TRAIN_FLAGS], message, earlier)
    corpus = write(tmp_path, "c.txt", "the cat sat on the mat\n" * 20)
    refused(capsys, ["pretrain", "--model_name_or_path", backbone, "--tokenizer_name", backbone, "--train_file",
                     corpus, "--document_separator", "line", "--cache_dir", tmp_path / "cache", "--output_dir", earlier,
                     "--overwrite_output_dir", "true", *TRAIN_FLAGS], message, earlier)


def test_the_installed_command_exits_1_with_the_one_line(tmp_path, tiny_bert_dir):
    """The same contract from `python -m mlm` in a process of its own (stderr as a user sees it)."""
    backbone, message = damaged_copy(tiny_bert_dir, tmp_path, "weights-random")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "mlm", "finetune", "--task", "cls", "--model_name_or_path", backbone,
                             "--train_file", write(tmp_path, "t.csv", GOOD_CSV), "--output_dir", tmp_path / "run",
                             *TRAIN_FLAGS], capture_output=True, text=True, env=env, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("mlm ")]
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(errors) == 1, result.stderr
    assert re.search(message, errors[0]) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_fine_tuned_model_is_one_line_for_predict(damage, tmp_path, earlier, capsys):
    model, message = damaged_copy(earlier, tmp_path, damage)
    kept = write(tmp_path, "kept.jsonl", "earlier predictions\n")
    refused(capsys, ["predict", "--model", model, "--text", "great fun", "--output", kept], message, kept)


TASK_FILE_EDITS = {
    "invalid-json": ('{"task": "cls", ', r"mlm_task.json:1: not valid JSON \(.*\); re-export the model with mlm finetune"),
    "unknown-task": (json.dumps({"task": "summarise", "labels": [], "config": {}}),
                     r"mlm_task.json: key 'task': unknown task 'summarise' \(choose from cls, ner, qa\)"),
    "missing-labels": (json.dumps({"task": "cls", "config": {}}), r"mlm_task.json: key 'labels': missing"),
    "config-not-object": (json.dumps({"task": "cls", "labels": [], "config": []}),
                          r"mlm_task.json: key 'config': a list, expected a dict"),
    "not-an-object": ("[]", r"mlm_task.json: expected a JSON object with task, labels and config"),
    "labels-edited": (json.dumps({"task": "cls", "labels": ["only"], "config": {}}),
                      r"mlm_task.json: key 'labels': 1 names, but the model has 2 classes"),
    "not-utf8": (b"\xff\xfe{}", r"mlm_task.json:1: not valid UTF-8"),
    "missing-task": (json.dumps({"labels": ["neg", "pos"], "config": {}}), r"mlm_task.json: key 'task': missing"),
    "setting-of-another-type": (json.dumps({"task": "cls", "labels": ["neg", "pos"], "config": {"max_seq_length": "64"}}),
                                r"mlm_task.json: key 'config.max_seq_length': '64', expected int; re-export"),
    "setting-not-a-choice": (json.dumps({"task": "cls", "labels": ["neg", "pos"], "config": {"problem_type": "ordinal"}}),
                             r"mlm_task.json: key 'config.problem_type': 'ordinal', expected one of 'auto', "),
    "setting-out-of-range": (json.dumps({"task": "cls", "labels": ["neg", "pos"], "config": {"max_seq_length": 4}}),
                             r"mlm_task.json: key 'config': max_seq_length: must be >= 8, got 4; re-export"),
    "labels-not-names": (json.dumps({"task": "cls", "labels": [0, 1], "config": {}}),
                         r"mlm_task.json: key 'labels': expected a list of names"),
}


def test_a_task_file_of_an_older_version_still_loads(tmp_path, earlier):
    """Keys this version does not know are dropped, and so are training-loop values it no longer offers (prediction
    never reads them); the settings prediction uses come back as written."""
    from finetune.predict import load_task

    model = tmp_path / "model"
    shutil.copytree(earlier, model, ignore=shutil.ignore_patterns("checkpoints"))
    saved = json.loads((model / "mlm_task.json").read_text())
    saved["config"].update(report_to="comet_ml", an_old_setting=1, max_seq_length=32)
    write(model, "mlm_task.json", json.dumps(saved))
    _, cfg, labels = load_task(str(model))
    assert cfg.report_to == "none" and not hasattr(cfg, "an_old_setting") and cfg.max_seq_length == 32
    assert labels == saved["labels"] and cfg.problem_type == saved["config"]["problem_type"]


@pytest.mark.parametrize("edit", list(TASK_FILE_EDITS))
def test_a_damaged_task_file_is_one_line(edit, tmp_path, earlier, capsys):
    content, message = TASK_FILE_EDITS[edit]
    model = tmp_path / "model"
    shutil.copytree(earlier, model, ignore=shutil.ignore_patterns("checkpoints"))
    write(model, "mlm_task.json", content)
    refused(capsys, ["predict", "--model", model, "--text", "great fun"], message)


# --------------------------------------------------------------------------------------- predict inputs

PREDICT_CASES = {  # (task of the model, input file name, content, message after "<file>:")
    "txt-gz-not-gzip": ("cls", "in.txt.gz", "great fun\n", r" not a gzip file"),
    "txt-not-utf8": ("cls", "in.txt", b"great fun\n\xff bad\n", r"2: not valid UTF-8"),
    "txt-nul": ("cls", "in.txt", "great fun\nbad\0film\n", r"2: a NUL byte"),
    "txt-empty": ("cls", "in.txt", "\n\n", r" no text \(the file is empty\)"),
    "csv-nul": ("cls", "in.csv", "text\ngreat\0fun\n", r"2: a NUL byte"),
    "csv-unterminated-quote": ("cls", "in.csv", 'text\n"great fun\nbad film\n', r"2: malformed csv line"),
    "csv-duplicate-header": ("cls", "in.csv", "text,text\na,b\n", r"1: column 'text' appears twice"),
    "csv-no-text-column": ("cls", "in.csv", "review\ngreat fun\n", r"1: missing text column"),
    "csv-unknown-gold-label": ("cls", "in.csv", "text,label\ngreat fun,meh\n", r"2: label 'meh' does not occur"),
    "jsonl-duplicate-key": ("cls", "in.jsonl", '{"text": "a", "text": "b"}\n', r"1: key 'text' appears twice"),
    "jsonl-invalid": ("cls", "in.jsonl", '{"text": \n', r"1: invalid JSON"),
    "missing-file": ("cls", None, None, r" file not found"),
    "ner-jsonl-blank-word": ("ner", "in.jsonl", jsonl({"tokens": ["john", " "]}), r"1: 'tokens': word 1 is ' '"),
    "ner-csv": ("ner", "in.csv", "text\njohn lives in paris\n", r" NER reads CoNLL column files"),
    "ner-conll-bad-gold-tag": ("ner", "in.conll", "john I-PER\nsmith E-PER\n",
                               r"1: tag 'I-PER' after 'the sentence start' is not iobes"),
    "ner-jsonl-text-not-string": ("ner", "in.jsonl", jsonl({"text": ["a"]}), r"1: 'text' must be a string"),
    "ner-not-utf8": ("ner", "in.txt", b"john\n\xff\n", r"2: not valid UTF-8"),
    "qa-missing-context": ("qa", "in.jsonl", jsonl({"question": "who ?"}), r'1: id 1: missing field "context"'),
    "qa-duplicate-id": ("qa", "in.jsonl", jsonl(QA_ROW, QA_ROW), r"2: duplicate id q1"),
    "qa-txt": ("qa", "in.txt", "who ?\n", r" QA reads SQuAD .json, .jsonl or .parquet"),
    "qa-gz-not-gzip": ("qa", "in.jsonl.gz", jsonl(QA_ROW), r" not a gzip file"),
    "qa-invalid-json": ("qa", "in.json", '{"data": [}', r"1: invalid JSON"),
}


@pytest.mark.parametrize("case", list(PREDICT_CASES))
def test_bad_predict_input_is_one_line_and_keeps_the_earlier_output(case, tmp_path, task_models, capsys):
    task, name, content, message = PREDICT_CASES[case]
    path = write(tmp_path, name, content) if name else str(tmp_path / "absent.txt")
    kept = write(tmp_path, "kept.jsonl", "earlier predictions\n")
    refused(capsys, ["predict", "--model", task_models[task], "--input", path, "--output", kept],
            "^mlm predict: error: " + re.escape(path) + ":" + message, kept)


@pytest.mark.parametrize("flags, message", [
    (["--model", "no/such/folder", "--text", "a"], r"--model: no/such/folder: no such folder"),
    (["--text", "a"], r"the following arguments are required: --model"),
    (["--model", "{cls}", "--text", " "], r"--text: empty text"),
    (["--model", "{cls}", "--question", "who ?"], r"--question: not used by the cls task"),
    (["--model", "{qa}", "--question", "who ?"], r"--context: required \(and non-empty\) for the qa task"),
    (["--model", "{qa}", "--text", "who ?"], r"--text: the qa task takes --question and --context"),
    (["--model", "{ner}", "--question", "who ?"], r"NER prediction needs --text"),
    (["--model", "{cls}", "--input", "{cls}"], r"{cls}: a folder, not a file"),
])
def test_bad_predict_flags_name_the_flag(flags, message, task_models, capsys):
    names = {task: str(path) for task, path in task_models.items()}
    refused(capsys, ["predict", *[flag.format(**names) for flag in flags]],
            message.replace("{cls}", re.escape(names["cls"])))


def test_a_model_folder_without_its_tokenizer_is_named_with_its_flag(tmp_path, earlier, capsys):
    model = tmp_path / "model"
    shutil.copytree(earlier, model, ignore=shutil.ignore_patterns("checkpoints", "tokenizer*", "vocab.txt",
                                                                   "special_tokens_map.json"))
    refused(capsys, ["predict", "--model", model, "--text", "a"], r"--model: .*model: no tokenizer files here")


# ------------------------------------------------------------------ unusual but valid, and repairs warned


def test_long_cells_boms_and_crlf_are_read(tmp_path, tiny_bert_dir, capsys):
    """A 200 KB cell (above csv's default 128 KB field limit), a byte-order mark and CRLF line ends: all valid."""
    long_text = "great fun " * 20_000
    train = tmp_path / "t.csv"
    train.write_bytes(b"\xef\xbb\xbf" + (GOOD_CSV + f'"{long_text}",pos\n').replace("\n", "\r\n").encode())
    code, err = run(capsys, "finetune", "--task", "cls", "--model_name_or_path", tiny_bert_dir, "--train_file", train,
                    "--output_dir", tmp_path / "run", *TRAIN_FLAGS)
    assert code == 0, err
    assert "1 of 21 examples truncated to max_seq_length=128" in err


def test_a_huge_text_is_tokenised_only_as_far_as_the_window_needs(tiny_tokenizer):
    """The same ids as truncating the whole text, from its first pieces only (a 10 MB line predicts in 0.1 s)."""
    from finetune.cls.features import _tokenize

    text = " ".join(f"word{i % 7} the movie" for i in range(20_000))  # ~330 K characters
    pair = "a short second text"
    ids, truncated = _tokenize([{"text": text, "text_pair": pair}], tiny_tokenizer, 64)
    whole = tiny_tokenizer(text, pair, truncation="longest_first", max_length=64)
    assert truncated == 1 and ids["input_ids"][0] == whole["input_ids"]


def test_repairs_are_warned_with_file_and_line(tmp_path, tiny_bert_dir, capsys):
    """NER: an I-X right after another type (B-LOC I-PER), a row without words; QA: answer_start negative or past
    the context, an answer absent from its context, an empty answer list in a v1 file: trained on, and each named
    in a warning."""
    conll = write(tmp_path, "t.conll", CONLL + "\nparis B-LOC\njohn I-PER\n")
    rows = write(tmp_path, "v.jsonl", jsonl({"tokens": ["john"], "tags": ["B-PER"]}, {"tokens": [], "tags": []}))
    code, err = run(capsys, "finetune", "--task", "ner", "--model_name_or_path", tiny_bert_dir, "--train_file", conll,
                    "--validation_file", rows, "--output_dir", tmp_path / "ner", *TRAIN_FLAGS)
    assert code == 0, err
    assert f"{conll}: 1 tags I-X continue no X entity though the file starts entities with B- (first: {conll}:10, " \
           "B-LOC I-PER); each was read as the start of a new entity, B-X" in err
    assert f"{rows}: skipped 1 rows without a word (first: {rows}:2)" in err
    rows = [QA_ROW, {**QA_ROW, "id": "neg", "answers": {"text": ["london"], "answer_start": [-4]}},
            {**QA_ROW, "id": "past", "answers": {"text": ["london"], "answer_start": [900]}},
            {**QA_ROW, "id": "absent", "answers": {"text": ["paris"], "answer_start": [0]}},
            {**QA_ROW, "id": "empty", "answers": []}]
    qa = write(tmp_path, "t.jsonl", jsonl(*rows))
    code, err = run(capsys, "finetune", "--task", "qa", "--model_name_or_path", tiny_bert_dir, "--train_file", qa,
                    "--output_dir", tmp_path / "qa", "--max_seq_length", "64", "--doc_stride", "16",
                    "--max_query_length", "16", *TRAIN_FLAGS)
    assert code == 0, err
    assert f"train: moved 2 answer_start offsets (negative, past the context or off the text) to the nearest " \
           f"occurrence of the answer text (first: {qa}:2; ids: neg, past)" in err
    assert f"train: 1 answers whose text is not in the context, not used as labels (first: {qa}:4; ids: absent)" in err
    assert f"version_2_with_negative: on, 1 questions have no answer (first: {qa}:5 id empty)" in err


# ----------------------------------------------------------------------------------------- checkpoints


def test_a_damaged_checkpoint_and_a_leftover_partial_save(tmp_path, tiny_bert_dir, capsys):
    """Resuming from a checkpoint whose weights were cut is refused naming it; a `.tmp-step-N` folder left by a kill
    during a save is removed, with a warning, when the run resumes."""
    run_dir = tmp_path / "run"
    train = write(tmp_path, "t.csv", GOOD_CSV)
    argv = ["finetune", "--task", "cls", "--model_name_or_path", tiny_bert_dir, "--train_file", train, "--output_dir",
            run_dir, "--max_steps", "4", "--save_steps", "2", "--per_device_train_batch_size", "4", "--disable_tqdm",
            "true"]
    assert run(capsys, *argv)[0] == 0
    step = run_dir / "checkpoints" / "step-2"
    truncate(run_dir / "checkpoints" / "step-4" / "model.safetensors")
    refused(capsys, [*argv, "--resume_from_checkpoint", run_dir / "checkpoints" / "step-4"],
            r"resume_from_checkpoint: .*step-4 is damaged \(model.safetensors has \d+ bytes, \d+ were written\); "
            r"delete it and resume from step-2 \(--resume_from_checkpoint .*step-2\)", run_dir)
    good = (step / "model.safetensors").read_bytes()
    truncate(step / "model.safetensors")
    refused(capsys, [*argv, "--resume_from_checkpoint", step],
            r"step-2 is damaged \(.*\); delete it and start over, or resume from a checkpoint of another run", run_dir)
    (step / "model.safetensors").write_bytes(good)
    partial = run_dir / "checkpoints" / ".tmp-step-7"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    code, err = run(capsys, *argv, "--resume_from_checkpoint", step)
    assert code == 0, err
    assert not partial.exists() and "removed 1 unfinished checkpoint save of an interrupted run (.tmp-step-7)" in err
