"""Knowledge distillation: the soft-target term on known logits, the mix, the frozen teacher, refusals, and
tiny end-to-end distillation runs per task (and pretraining) through the real entry points, with exact resume."""
import json
import math

import pytest
import torch

from finetune.distill import distillation_loss, soft_loss_sum
from mlm.core.distill import keep_layers, layer_indices, mix, soft_target_kl
from mlm.errors import ConfigError
from test_finetune_e2e import NEGATIVE, POSITIVE, common, read_jsonl, run_cli


# ------------------------------------------------------------------------------------------- the loss


def test_kl_with_temperature_value_and_gradient():
    # T = 2: teacher logits (2 ln 3, 0) -> p_t = (3/4, 1/4); student (0, 0) -> p_s = (1/2, 1/2).
    student = torch.zeros(2, requires_grad=True)
    teacher = torch.tensor([2 * math.log(3), 0.0])
    kl = soft_target_kl(student, teacher, temperature=2.0)
    expected = 4 * (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5))  # T^2 * KL(p_t || p_s)
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    kl.backward()
    assert student.grad.tolist() == pytest.approx([2 * (0.5 - 0.75), 2 * (0.5 - 0.25)])  # T * (p_s - p_t)
    assert soft_target_kl(teacher, teacher, 0.5).item() == pytest.approx(0.0, abs=1e-6)  # equal logits: nothing


def test_alpha_mix_and_the_hard_loss_count():
    assert mix(torch.tensor(2.0), torch.tensor(6.0), 0.25).item() == 0.75 * 2 + 0.25 * 6

    class Task:  # a cls-like task: (B, C) logits, sum of per-example cross-entropy, count = examples
        TARGETS = ("labels",)

        @staticmethod
        def forward(model, batch):
            return model(batch["input_ids"].float())

        @staticmethod
        def loss_of(logits, batch):
            return torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"), torch.tensor(3)

    student, teacher = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    teacher.requires_grad_(False)
    batch = {"input_ids": torch.tensor([[1, 0], [0, 1], [1, 1]]), "attention_mask": torch.ones(3, 2),
             "labels": torch.tensor([0, 1, 1])}
    hard, _ = Task.loss_of(Task.forward(student, batch), batch)
    soft = soft_target_kl(Task.forward(student, batch), Task.forward(teacher, batch), 3.0).sum()
    total, count = distillation_loss(Task, teacher, 0.3, 3.0)(student, batch)
    assert count.item() == 3 and total.item() == pytest.approx(0.7 * hard.item() + 0.3 * soft.item(), rel=1e-6)
    assert distillation_loss(Task, teacher, 0.0, 3.0)(student, batch)[0].item() == pytest.approx(hard.item())
    # A teacher with the same labels in another order: its logits are read in the student's class order.
    swapped = soft_target_kl(Task.forward(student, batch), Task.forward(teacher, batch)[:, [1, 0]], 3.0).sum()
    total, _ = distillation_loss(Task, teacher, 1.0, 3.0, label_order=[1, 0])(student, batch)
    assert total.item() == pytest.approx(swapped.item(), rel=1e-6) and swapped.item() != pytest.approx(soft.item())


def test_soft_term_counts_only_what_the_hard_loss_counts():
    t = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]]])  # (1, 3, 2): NER logits, the last position unlabelled
    s = t.clone()
    s[0, 2] = torch.tensor([-5.0, 5.0])  # differs only where the label is -100
    labels = torch.tensor([[0, 1, -100]])
    assert soft_loss_sum(s, t, labels, torch.ones(1, 3), 1.0).item() == pytest.approx(0.0, abs=1e-6)
    s[0, 0] = torch.tensor([0.0, 0.0])
    one = soft_target_kl(s[0, 0], t[0, 0], 1.0)
    assert soft_loss_sum(s, t, labels, torch.ones(1, 3), 1.0).item() == pytest.approx(one.item())

    # QA: (start, end) over positions; padding left out of both distributions, unknown answers (-100) count 0.
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    low = torch.finfo(torch.float32).min
    start_t = torch.tensor([[1.0, 0.0, low], [0.0, 0.0, 0.0]])
    start_s = torch.tensor([[0.0, 0.0, low], [9.0, 0.0, 0.0]])
    kl_start = soft_target_kl(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), 0.5)  # row 0 without padding
    total = soft_loss_sum((start_s, start_t), (start_t, start_t), torch.tensor([1, -100]), mask, 0.5)
    assert total.item() == pytest.approx(kl_start.item() / 2)  # the end logits agree; row 1 has no known answer

    # Multi-label: the binary KL per class at T, the mean over classes; regression: the squared distance.
    z_t, z_s = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    p = torch.sigmoid(torch.tensor(1.0)).item()  # class 2 of the teacher at T = 2
    binary = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert soft_loss_sum(z_s, z_t, torch.zeros(1, 2), None, 2.0).item() == pytest.approx(binary / 2, rel=1e-5)
    assert soft_loss_sum(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [1.0]]), torch.zeros(2), None, 2.0) == 5.0


def test_student_layers_are_copied_in_order(tiny_bert_dir):
    from transformers import BertForSequenceClassification

    teacher = BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    student = keep_layers(BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2), [1])
    assert student.config.num_hidden_layers == 1 and len(student.bert.encoder.layer) == 1
    assert torch.equal(student.bert.encoder.layer[0].output.dense.weight, teacher.bert.encoder.layer[1].output.dense.weight)
    assert "bert.encoder.layer.0.output.dense.weight" in student.state_dict()
    with pytest.raises(ConfigError, match="has 2 layers"):
        keep_layers(teacher, [0, 2])
    for bad in ("0,0", "2,1", "a"):
        with pytest.raises(ConfigError, match="student_layers"):
            layer_indices(bad)


# --------------------------------------------------------------------------------------- end to end


def write_sentiment(path):
    path.write_text("text,label\n" + "".join(f"{t},pos\n" for t in POSITIVE) + "".join(f"{t},neg\n" for t in NEGATIVE))
    return path


@pytest.fixture
def sentiment(tmp_path):
    return write_sentiment(tmp_path / "train.csv")


@pytest.fixture(scope="module")
def cls_teacher(tmp_path_factory, tiny_bert_dir):
    """A cls model fine-tuned on the sentiment rows (accuracy 1.0 on them), shared by the tests of this module.
    12 epochs: after 6 the loss is still ~0.68 and the accuracy depends on the dropout draws."""
    from mlm.cli import main as cli_main

    folder = tmp_path_factory.mktemp("teacher")
    train = write_sentiment(folder / "train.csv")
    argv = ["finetune", "--task", "cls", "--train_file", train, *common(folder, tiny_bert_dir, "teacher",
                                                                           **{"--num_train_epochs": 12})]
    assert cli_main([str(a) for a in argv]) == 0
    return folder / "teacher"


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_cls_distillation_end_to_end_with_a_frozen_teacher(tmp_path, tiny_bert_dir, sentiment, cls_teacher, capsys,
                                                           monkeypatch):
    import finetune.distill as distill

    seen = {}
    real_load = distill.load_teacher

    def spy(*args):
        teacher, order = real_load(*args)
        seen["teacher"], seen["before"] = teacher, {k: v.clone() for k, v in teacher.state_dict().items()}
        return teacher, order

    monkeypatch.setattr(distill, "load_teacher", spy)
    code, _ = run_cli(capsys, "finetune", "--task", "cls", "--train_file", sentiment, "--validation_file", sentiment,
                      "--teacher", cls_teacher, "--student_layers", "1", "--distill_alpha", "0.5", "--temperature", 2,
                      *common(tmp_path, tiny_bert_dir, "student", **{"--num_train_epochs": 12, "--eval_steps": 30}))
    assert code == 0
    teacher = seen["teacher"]
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, seen["before"][k]) for k, v in teacher.state_dict().items())
    out = tmp_path / "student"
    assert json.loads((out / "metrics.json").read_text())["eval_accuracy"] == 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["id2label"] == {"0": "neg", "1": "pos"}
    assert not any(k.startswith("teacher") for k in weights(out))  # the student's weights only
    step = sorted((out / "checkpoints").iterdir())[-1]
    assert set(weights(step)) == set(weights(out))
    settings = json.loads((step / "settings.json").read_text())
    assert (settings["teacher"], settings["distill_alpha"], settings["temperature"]) == (str(cls_teacher), 0.5, 2.0)
    code, captured = run_cli(capsys, "predict", "--model", out, "--text", "a great fun movie", "--quantize")
    assert code == 0 and json.loads(captured.out)["label"] == "pos"
    from transformers import pipeline

    assert pipeline("text-classification", model=str(out))("a boring bad film")[0]["label"] == "neg"


def test_mismatched_teacher_is_refused_in_one_line(tmp_path, tiny_bert_dir, sentiment, cls_teacher, capsys):
    other = tmp_path / "stars.csv"
    other.write_text("text,label\n" + "".join(f"{t},good\n" for t in POSITIVE) + "".join(f"{t},bad\n" for t in NEGATIVE))
    cases = [
        (["--task", "cls", "--train_file", other], "mlm_task.json: labels [neg, pos] differ from the training data's "
                                                  "[bad, good]"),
        (["--task", "ner", "--train_file", tmp_path / "x.conll"], "a cls model; this run fine-tunes ner"),
        (["--task", "cls", "--train_file", sentiment, "--student_layers", "0,5"], "student_layers: the model has 2"),
    ]
    (tmp_path / "x.conll").write_text("John B-PER\n")
    for argv, message in cases:
        code, captured = run_cli(capsys, "finetune", *argv, "--teacher", cls_teacher,
                                 *common(tmp_path, tiny_bert_dir, "refused", **{"--max_steps": 1}))
        errors = [l for l in captured.err.splitlines() if l.startswith("mlm ")]
        assert code == 1 and len(errors) == 1 and message in errors[0], captured.err
    # Another vocabulary: the teacher's tokenizer maps two tokens to each other's ids.
    strange = tmp_path / "strange-teacher"
    swapped_tokenizer(strange)
    for name in ("config.json", "model.safetensors", "mlm_task.json"):
        (strange / name).write_bytes((cls_teacher / name).read_bytes())
    code, captured = run_cli(capsys, "finetune", "--task", "cls", "--train_file", sentiment, "--teacher", strange,
                             *common(tmp_path, tiny_bert_dir, "refused", **{"--max_steps": 1}))
    assert code == 1 and "another vocabulary than the student's tokenizer" in captured.err


def swapped_tokenizer(folder):
    from transformers import BertTokenizer

    from conftest import make_vocab

    vocab = make_vocab()
    vocab[10], vocab[11] = vocab[11], vocab[10]
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(folder)
    return folder


def hf_teacher(tmp_path, tiny_bert_dir, auto_class, **config):
    """A random AutoModelFor<Task> folder (no mlm_task.json): a teacher from elsewhere, labels in config.json."""
    import transformers

    torch.manual_seed(1)
    model = getattr(transformers, auto_class).from_pretrained(tiny_bert_dir, **config)
    path = tmp_path / f"hf-{auto_class}"
    model.save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(path)
    return path


def test_ner_and_qa_distillation_end_to_end(tmp_path, tiny_bert_dir, capsys):
    conll = tmp_path / "train.conll"
    conll.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in [
        [("John", "B-PER"), ("visited", "O"), ("Paris", "B-LOC")], [("Smith", "B-PER"), ("works", "O")]] * 4) + "\n")
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]  # the training data's order; the teacher's differs
    teacher_labels = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    teacher = hf_teacher(tmp_path, tiny_bert_dir, "AutoModelForTokenClassification", num_labels=5,
                         id2label=dict(enumerate(teacher_labels)), label2id={l: i for i, l in enumerate(teacher_labels)})
    code, captured = run_cli(capsys, "finetune", "--task", "ner", "--train_file", conll, "--validation_file", conll,
                      "--teacher", teacher, "--student_layers", "0",
                      *common(tmp_path, tiny_bert_dir, "ner", **{"--max_steps": 4}))
    assert code == 0, captured.err
    out = tmp_path / "ner"
    assert json.loads((out / "config.json").read_text())["id2label"] == {str(i): l for i, l in enumerate(labels)}
    assert "eval_f1" in json.loads((out / "metrics.json").read_text())
    code, captured = run_cli(capsys, "predict", "--model", out, "--text", "John visited Paris")
    assert code == 0 and len(json.loads(captured.out)["predicted_tags"]) == 3

    context = "john visited paris in 1999 ."
    rows = [{"id": str(i), "question": "who visited paris ?", "context": context,
             "answers": {"text": ["john"], "answer_start": [0]}} for i in range(8)]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = hf_teacher(tmp_path, tiny_bert_dir, "AutoModelForQuestionAnswering")
    code, _ = run_cli(capsys, "finetune", "--task", "qa", "--train_file", data, "--validation_file", data,
                      "--teacher", teacher, "--max_seq_length", 32, "--doc_stride", 8, "--max_query_length", 12,
                      *common(tmp_path, tiny_bert_dir, "qa", **{"--max_steps": 4}))
    assert code == 0
    code, captured = run_cli(capsys, "predict", "--model", tmp_path / "qa", "--question", "who visited paris ?",
                             "--context", context)
    assert code == 0 and "prediction_text" in json.loads(captured.out)


def test_distillation_resumes_exactly(tmp_path, tiny_bert_dir, sentiment, cls_teacher, capsys, monkeypatch):
    import finetune.distill as distill

    def run(name, **extra):
        flags = {"--max_steps": 6, "--save_steps": 3, "--logging_steps": 1, **extra}
        return run_cli(capsys, "finetune", "--task", "cls", "--train_file", sentiment, "--teacher", cls_teacher,
                       "--student_layers", "1", *common(tmp_path, tiny_bert_dir, name, **flags))[0]

    def losses(name):
        return [r["loss"] for r in read_jsonl(tmp_path / name / "log.jsonl") if "loss" in r]

    assert run("straight") == 0
    real_task_loss, calls = distill.task_loss, {"n": 0}

    def interrupted(*args):
        loss = real_task_loss(*args)

        def stop_after_three(model, batch):
            calls["n"] += 1
            if calls["n"] > 3:
                raise KeyboardInterrupt
            return loss(model, batch)

        return stop_after_three

    monkeypatch.setattr(distill, "task_loss", interrupted)
    assert run("resumed") == 130
    monkeypatch.setattr(distill, "task_loss", real_task_loss)
    assert run("resumed", **{"--resume_from_checkpoint": "latest"}) == 0
    assert losses("resumed") == losses("straight") and len(losses("straight")) == 6
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The teacher settings are part of what a resume must keep.
    code, captured = run_cli(capsys, "finetune", "--task", "cls", "--train_file", sentiment, "--teacher", cls_teacher,
                             "--student_layers", "1", "--temperature", 3, "--resume_from_checkpoint", "latest",
                             *common(tmp_path, tiny_bert_dir, "resumed", **{"--max_steps": 6, "--save_steps": 3}))
    assert code == 1 and "temperature 2.0 -> 3.0" in captured.err


# ------------------------------------------------------------------------------------------ pretraining


def test_pretraining_distillation_on_masked_positions(sentence_corpus, tmp_path, tiny_bert_dir, capsys):
    from mlm.core.config import parse_config
    from mlm.pretrain.run import PretrainConfig, main

    def args(name, **extra):
        flags = {"train_file": sentence_corpus, "output_dir": tmp_path / name, "cache_dir": tmp_path / "cache",
                 "max_seq_length": 32, "per_device_train_batch_size": 8, "max_steps": 6, "logging_steps": 1,
                 "eval_steps": 6, "save_steps": 6, "learning_rate": 3e-3, "disable_tqdm": True,
                 "model_name_or_path": tiny_bert_dir, "teacher": tiny_bert_dir, "student_layers": "1", **extra}
        return [x for k, v in flags.items() for x in (f"--{k}", str(v))]

    metrics = main(parse_config(PretrainConfig, args("student", cosine_weight=1.0, distill_alpha=0.5)))
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"])
    assert json.loads((tmp_path / "student" / "config.json").read_text())["num_hidden_layers"] == 1

    # The soft term on the student's own teacher is 0 (and the cosine term too): alpha 1 leaves nothing to learn.
    from mlm.pretrain.distill import mlm_distill_loss
    from mlm.pretrain.model import SparseMaskedLM
    from transformers import BertForMaskedLM

    hf = BertForMaskedLM.from_pretrained(tiny_bert_dir)
    model = SparseMaskedLM(hf).eval()
    batch = {"input_ids": torch.tensor([[2, 7, 4, 9, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long),
             "masked_positions": torch.tensor([[2, 0]]), "masked_labels": torch.tensor([[8, -100]])}
    total, count = mlm_distill_loss(model, 1.0, 2.0, cosine_weight=1.0)(model, batch)
    assert count.item() == 1 and total.item() == pytest.approx(0.0, abs=1e-5)
    total, _ = mlm_distill_loss(model, 0.0, 2.0)(model, batch)
    assert total.item() == pytest.approx(model(**batch)["loss_sum"].item())

    # A teacher without an MLM head, or with another vocabulary, is refused in one line.
    from transformers import AutoTokenizer, BertModel

    encoder_only = tmp_path / "encoder-only"
    BertModel.from_pretrained(tiny_bert_dir).save_pretrained(encoder_only)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(encoder_only)
    code, error = cli_errors(capsys, ["pretrain", *args("refused", teacher=encoder_only)])
    assert code == 1 and error.endswith("no MLM head weights (an encoder-only checkpoint?); the teacher must be a "
                                        "masked LM")
    swapped = swapped_tokenizer(tmp_path / "swapped")
    code, error = cli_errors(capsys, ["pretrain", *args("refused", tokenizer_name=swapped)])
    assert code == 1 and "another vocabulary than the student's tokenizer" in error


def cli_errors(capsys, argv):
    from mlm.cli import main as cli_main

    code = cli_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("mlm ")]
    assert len(lines) <= 1
    return code, " ".join(lines)
