"""`mlm export` and `mlm predict --backend onnxruntime`: the graph computes what the torch model computes, for
every task, through the same tokenisation, batching and decoding; its int8 copy keeps the labels; bad input is a
one-line error."""
import json
import sys

import numpy as np
import pytest
import torch

from test_finetune_e2e import NEGATIVE, POSITIVE, common, read_jsonl, run_cli

onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install mlm[onnx])")

HEADS = {"cls": ("AutoModelForSequenceClassification", {"num_labels": 3}),
         "ner": ("AutoModelForTokenClassification", {"num_labels": 5}),
         "qa": ("AutoModelForQuestionAnswering", {})}
CONTEXT = " ".join(["john smith visited paris in the morning and london when the river was new"] * 12)


def task_head(folder, tiny_bert_dir, task):
    """A random fine-tuned-shaped model of `task` (no mlm_task.json: the task comes from config.json)."""
    import transformers

    auto_class, config = HEADS[task]
    torch.manual_seed(0)
    getattr(transformers, auto_class).from_pretrained(tiny_bert_dir, **config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    return folder


def inputs_file(folder, task):
    """Seven inputs of unequal lengths (batches of 3 leave one of 1); QA's context takes several windows."""
    if task == "qa":
        path = folder / "questions.jsonl"
        questions = ["who visited paris ?", "when ?", "where did john smith go in the morning ?"]
        path.write_text("".join(json.dumps({"id": str(i), "question": q, "context": CONTEXT[: 200 * (i + 1)]}) + "\n"
                                for i, q in enumerate(questions * 2 + ["what ?"])))
    else:
        path = folder / "texts.txt"
        path.write_text("\n".join(["john smith visited paris", "a great film", "the plot", "i love this movie",
                                   "terrible acting and a boring story in london", "x", "good good film"]) + "\n")
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_bert_dir):
    """{task: (exported folder, inputs file)}: cls exported into its own folder, ner and qa into a separate one."""
    from mlm.cli import main

    folders = {}
    for task in HEADS:
        tmp = tmp_path_factory.mktemp(task)
        model = task_head(tmp / "model", tiny_bert_dir, task)
        out = model if task == "cls" else tmp / "onnx"
        assert main(["export", "--model", str(model), "--quantize", *([] if out == model else ["--onnx", str(out)])]) == 0
        folders[task] = (out, inputs_file(tmp, task))
    return folders


def model_outputs(folder, inputs, *flags, batch_size=3):
    """(per-feature outputs, features, model) as `mlm predict --model folder --input inputs FLAGS` computes them."""
    from finetune.inference import compute_outputs
    from finetune.predict import build_parser, load_checkpoint, load_settings

    args = build_parser().parse_args(["--model", str(folder), "--input", str(inputs), "--num_threads", "1", *flags])
    task, cfg, labels = load_settings(args)
    model, tokenizer = load_checkpoint(task, cfg, args)
    features = task.encode(task.examples_from_file(args.input, cfg), tokenizer, cfg, labels, with_labels=False)
    return compute_outputs(task, model, features, tokenizer, batch_size), features, (task, model, tokenizer)


def flat(outputs) -> np.ndarray:
    return np.concatenate([np.ravel(a) for out in outputs for a in (out if isinstance(out, tuple) else (out,))])


@pytest.mark.slow
@pytest.mark.parametrize("task", list(HEADS))
def test_exported_graph_gives_the_torch_logits_for_any_batch_and_length(exported, task):
    folder, inputs = exported[task]
    ort_outputs, features, (task_mod, model, tokenizer) = model_outputs(folder, inputs, "--backend", "onnxruntime")
    model_dir = folder if task == "cls" else folder.parent / "model"
    torch_outputs, torch_features, _ = model_outputs(model_dir, inputs)
    assert [f["input_ids"] for f in features] == [f["input_ids"] for f in torch_features]
    assert len({len(f["input_ids"]) for f in features}) > 2  # batches of several lengths went through one graph
    np.testing.assert_allclose(flat(ort_outputs), flat(torch_outputs), atol=1e-5, rtol=0)
    session = model.session
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(len(i.shape) == 2 and all(isinstance(d, str) for d in i.shape) for i in session.get_inputs())
    # token_type_ids is a live input, not a constant the sample batch left behind
    batch = task_mod.collate(features[:2], tokenizer)
    if task == "qa":
        assert batch["token_type_ids"].any()  # the context is segment 1
    types = batch["token_type_ids"].clone()
    types[:, 1] = 1
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    typed, untyped = model(**inputs, token_type_ids=types), model(**inputs, token_type_ids=torch.zeros_like(types))
    assert not torch.equal(next(iter(vars(typed).values())), next(iter(vars(untyped).values())))


@pytest.mark.slow
def test_the_int8_graph_is_smaller_and_close(exported):
    folder, inputs = exported["cls"]
    fp32, _, _ = model_outputs(folder, inputs, "--backend", "onnxruntime")
    int8, _, _ = model_outputs(folder, inputs, "--backend", "onnxruntime", "--quantize")
    assert (folder / "model.int8.onnx").stat().st_size < (folder / "model.onnx").stat().st_size
    assert 0 < np.abs(flat(int8) - flat(fp32)).max() < 0.05  # quantised (not a copy), and near float32


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory, tiny_bert_dir):
    """A tiny cls model fine-tuned until its labels are confident, exported to a folder without torch weights."""
    from mlm.cli import main

    tmp = tmp_path_factory.mktemp("sentiment")
    train = tmp / "train.csv"
    train.write_text("text,label\n" + "".join(f"{t},pos\n" for t in POSITIVE) + "".join(f"{t},neg\n" for t in NEGATIVE))
    argv = ["finetune", "--task", "cls", "--train_file", train, "--validation_file", train,
            *common(tmp, tiny_bert_dir, "model", **{"--num_train_epochs": 12, "--eval_steps": 20})]
    assert main([str(a) for a in argv]) == 0
    assert main(["export", "--model", str(tmp / "model"), "--onnx", str(tmp / "onnx"), "--quantize"]) == 0
    texts = tmp / "texts.txt"
    texts.write_text("\n".join(POSITIVE + NEGATIVE) + "\n")
    return tmp, texts


@pytest.mark.slow
def test_predict_and_evaluate_with_onnxruntime_match_torch_labels_and_scores(sentiment, capsys):
    tmp, texts = sentiment
    assert {p.name for p in (tmp / "onnx").iterdir()} >= {"model.onnx", "model.int8.onnx", "config.json",
                                                          "mlm_task.json", "tokenizer.json"}
    assert not list((tmp / "onnx").glob("*.safetensors"))  # serves without the torch weights
    records = {}
    for name, model, flags in [("torch", tmp / "model", []), ("ort", tmp / "onnx", ["--backend", "onnxruntime"]),
                               ("ort_int8", tmp / "onnx", ["--backend", "onnxruntime", "--quantize"])]:
        out = tmp / f"{name}.jsonl"
        code, captured = run_cli(capsys, "predict", "--model", model, "--input", texts, "--output", out,
                                 "--num_threads", "1", *flags)
        assert code == 0, captured.err
        records[name] = read_jsonl(out)
    torch_labels = [r["label"] for r in records["torch"]]
    assert torch_labels.count("pos") >= 8 and torch_labels.count("neg") >= 8  # a model with something to lose
    assert [r["label"] for r in records["ort"]] == torch_labels
    assert [r["source"] for r in records["ort"]] == [r["source"] for r in records["torch"]]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(records["ort"], records["torch"])) < 1e-5
    agree = sum(a["label"] == b for a, b in zip(records["ort_int8"], torch_labels))
    assert agree >= 18, f"int8 labels agree on {agree} of 20"
    scores = {}
    for name, model, flags in [("torch", tmp / "model", []), ("ort", tmp / "onnx", ["--backend", "onnxruntime"])]:
        (tmp / f"eval-{name}").mkdir()
        code, captured = run_cli(capsys, "evaluate", "--model", model, "--input", tmp / "train.csv",
                                 "--output_dir", tmp / f"eval-{name}", *flags)
        assert code == 0, captured.err
        scores[name] = json.loads((tmp / f"eval-{name}" / "eval_train.json").read_text())
    assert scores["ort"] == scores["torch"]  # mlm evaluate scores the exported graph with the same metrics


def test_bad_input_is_one_line(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    model = task_head(tmp_path / "cls", tiny_bert_dir, "cls")
    capsys.readouterr()  # (transformers' loading report)

    def error(*argv):
        code, captured = run_cli(capsys, *argv)  # (no traceback)
        errors = [line for line in captured.err.splitlines() if line.startswith("mlm ")]
        assert code == 1 and len(errors) == 1, captured.err
        return errors[0]

    predict = ["predict", "--text", "a film", "--backend", "onnxruntime", "--model"]
    assert "has no model.onnx; write it with `mlm export --model" in error(*predict, model)
    (model / "model.onnx").write_bytes(b"not a graph")
    assert "has no model.int8.onnx; write it with `mlm export" in error(*predict, model, "--quantize")
    assert "model.onnx: cannot load the ONNX model" in error(*predict, model)
    assert "is not a task model folder (no config.json)" in error(*predict, tmp_path)
    assert "is not a fine-tuned task checkpoint" in error("export", "--model", tiny_bert_dir, "--onnx", tmp_path / "o")
    assert "--onnx: " in error("export", "--model", model, "--onnx", model / "config.json")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the onnx extra were not installed
    assert "pip install mlm[onnx]" in error(*predict, model)
    assert "pip install mlm[onnx]" in error("export", "--model", model)
