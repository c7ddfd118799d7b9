"""What Trainer users expect: its flags with its meaning, its result files, a model card, a stated precision."""
import json
import os

import pytest
import torch

from finetune.cls.config import Config as ClsConfig
from mlm.cli import main as cli_main
from mlm.core.config import TrainingConfig, parse_config
from mlm.errors import ConfigError
from mlm.core.optim import build_optimizer, build_scheduler

ROWS = [("great fun", "pos"), ("i love this movie", "pos"), ("a fun film", "pos"), ("great plot", "pos"),
        ("bad plot", "neg"), ("i hate this movie", "neg"), ("a boring film", "neg"), ("terrible movie", "neg")]


@pytest.fixture
def train_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in ROWS))
    return path


def cls_args(tmp_path, backbone, train_csv, name, *extra):
    return ["finetune", "--task", "cls", "--train_file", str(train_csv), "--validation_file", str(train_csv),
            "--model_name_or_path", backbone, "--output_dir", str(tmp_path / name), "--per_device_train_batch_size",
            "4", "--logging_steps", "1", "--max_steps", "6", "--disable_tqdm", "true", "--seed", "0", *extra]


def cls_config(train_csv, *flags) -> ClsConfig:
    return parse_config(ClsConfig, ["--task", "cls", "--train_file", str(train_csv), "--validation_file",
                                    str(train_csv), "--test_file", str(train_csv), *flags])


# ------------------------------------------------------------------------------------------------ flags


def test_fp16_and_bf16_are_mixed_precision(train_csv):
    assert cls_config(train_csv, "--fp16").mixed_precision == "fp16"
    assert cls_config(train_csv, "--bf16", "true").mixed_precision == "bf16"
    assert cls_config(train_csv, "--bf16", "false").mixed_precision == "auto"
    with pytest.raises(ConfigError, match="fp16 and bf16 are both set"):
        cls_config(train_csv, "--fp16", "--bf16")
    with pytest.raises(ConfigError, match="fp16 contradicts mixed_precision no"):
        cls_config(train_csv, "--fp16", "--mixed_precision", "no")


def test_do_switches_have_trainers_meaning(train_csv):
    plain = cls_config(train_csv)
    assert plain.validation_file and plain.test_file  # no --do_* flag: every split given is used
    only_train = cls_config(train_csv, "--do_train")
    assert only_train.validation_file is None and only_train.test_file is None and not only_train.evaluates()
    both = cls_config(train_csv, "--do_train", "--do_eval")
    assert both.validation_file and both.test_file is None
    assert cls_config(train_csv, "--do_train", "--do_predict").test_file
    with pytest.raises(ConfigError, match="do_train: mlm always trains; .*mlm evaluate"):
        cls_config(train_csv, "--do_eval")


def test_strategies(train_csv):
    cfg = cls_config(train_csv, "--eval_strategy", "steps", "--logging_steps", "7")
    assert cfg.eval_steps == 7  # Trainer's default: eval_steps = logging_steps
    assert cls_config(train_csv, "--evaluation_strategy", "no").eval_strategy == "no"  # Trainer's older name
    with pytest.raises(ConfigError, match="save_strategy steps needs save_steps"):
        cls_config(train_csv, "--save_strategy", "steps")
    with pytest.raises(ConfigError, match="metric_for_best_model needs evaluations and checkpoints"):
        cls_config(train_csv, "--metric_for_best_model", "accuracy", "--eval_strategy", "no")


@pytest.mark.parametrize("optim, kind, fused", [("adamw_torch_fused", torch.optim.AdamW, True),
                                                 ("adamw_torch", torch.optim.AdamW, False),
                                                 ("sgd", torch.optim.SGD, None)])
def test_optim_builds_the_named_optimizer(optim, kind, fused):
    cfg = TrainingConfig(optim=optim, learning_rate=0.1)
    optimizer = build_optimizer(torch.nn.Linear(3, 2), cfg)
    assert type(optimizer) is kind and optimizer.param_groups[0]["lr"] == 0.1
    if fused is not None:
        assert optimizer.defaults["fused"] is fused
    assert [g["weight_decay"] for g in optimizer.param_groups] == [cfg.weight_decay, 0.0]


def test_adafactor_and_trainer_scheduler_names(mlm_log):
    from transformers.optimization import Adafactor

    cfg = TrainingConfig(optim="adafactor", learning_rate=0.1, warmup_steps=5, lr_scheduler_type="constant")
    optimizer = build_optimizer(torch.nn.Linear(3, 2), cfg)
    assert type(optimizer) is Adafactor
    scheduler = build_scheduler(optimizer, cfg, total_steps=20)
    assert scheduler.get_last_lr()[0] == 0.1  # Trainer's constant: no warmup
    assert "ignores the 5 warmup steps" in mlm_log.text
    cfg = TrainingConfig(learning_rate=0.1, warmup_steps=5, lr_scheduler_type="inverse_sqrt")
    scheduler = build_scheduler(torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1), cfg, total_steps=20)
    assert scheduler.get_last_lr()[0] < 0.1


def test_precision_that_cannot_run_is_refused_before_anything_is_written(tmp_path, tiny_bert_dir, train_csv, capsys,
                                                                         monkeypatch):
    code = cli_main(cls_args(tmp_path, tiny_bert_dir, train_csv, "fp16", "--fp16"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].endswith("mixed_precision: fp16 (from --mixed_precision) needs a CUDA GPU and this run has none; "
                           "pass --mixed_precision no for fp32" + (" or bf16" if _native_bf16() else ""))
    assert not (tmp_path / "fp16").exists()
    from mlm.core import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what a GPU launch config passes on
    code = cli_main(cls_args(tmp_path, tiny_bert_dir, train_csv, "bf16"))
    err = capsys.readouterr().err
    assert code == 1 and "mixed_precision: bf16 (from the launch config (ACCELERATE_MIXED_PRECISION)) on a CPU " \
                         "without bf16 instructions" in err
    assert not (tmp_path / "bf16").exists()


def _native_bf16() -> bool:
    from mlm.core.precision import cpu_has_native_bf16

    return cpu_has_native_bf16()


# ------------------------------------------------------------------------------------------------ a run's files


def test_a_run_leaves_trainers_files_and_a_model_card(tmp_path, tiny_bert_dir, train_csv, capsys):
    code = cli_main(cls_args(tmp_path, tiny_bert_dir, train_csv, "run", "--run_name", "tiny-sentiment",
                             "--eval_strategy", "no", "--optim", "adamw_torch", "--dataloader_num_workers", "1",
                             "--gradient_checkpointing"))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "precision: fp32 on cpu (auto: CPU)" in err
    out = tmp_path / "run"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["loss"] for r in log if "loss" in r]
    assert [r["step"] for r in log if "eval_accuracy" in r] == [6]  # eval_strategy no: only the final evaluation
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_loss"] == pytest.approx(sum(steps) / len(steps))  # the run's average, as Trainer's
    assert results["epoch"] == 3.0 and results["train_steps_per_second"] > 0 and results["train_samples_per_second"] > 0
    assert "eval_accuracy" in results and "train_examples_per_second" not in results
    train = json.loads((out / "train_results.json").read_text())
    evals = json.loads((out / "eval_results.json").read_text())
    assert set(train) == {k for k in results if k.startswith("train_")} | {"epoch"}
    assert set(evals) == {k for k in results if k.startswith("eval_")} | {"epoch"}
    args = json.loads((out / "training_args.json").read_text())
    assert args["settings"]["optim"] == "adamw_torch" and args["settings"]["gradient_checkpointing"] is True
    assert args["command"].startswith("mlm finetune --task cls --train_file ") and "--run_name tiny-sentiment" in \
        args["command"]
    assert args["versions"]["transformers"] and args["versions"]["torch"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-classification\n")
    assert "# tiny-sentiment" in card and "| eval_accuracy |" in card and args["command"] in card
    assert f"6 steps in {results['train_runtime']} s, average train loss {results['train_loss']:.4f}." in card
    assert "eval_runtime" not in card
    assert f"| train | `{train_csv}` |" in card


def test_pretraining_writes_them_too(tmp_path, sentence_corpus, capsys):
    out = tmp_path / "pre"
    code = cli_main(["pretrain", "--train_file", sentence_corpus, "--cache_dir", str(tmp_path / "cache"),
                     "--output_dir", str(out), "--vocab_size", "120", "--max_seq_length", "32", "--hidden_size", "32",
                     "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "64",
                     "--per_device_train_batch_size", "4", "--max_steps", "3", "--logging_steps", "1",
                     "--disable_tqdm", "true", "--do_train"])
    err = capsys.readouterr().err
    assert code == 0, err
    results = json.loads((out / "all_results.json").read_text())
    assert "eval_loss" not in results  # --do_train alone: no evaluation, as Trainer
    assert (out / "README.md").read_text().startswith("---\nlibrary_name: transformers\npipeline_tag: fill-mask\n")


def test_eval_loss_is_reported_selectable_and_a_bad_metric_is_refused_before_training(tmp_path, tiny_bert_dir,
                                                                                       train_csv, capsys):
    code = cli_main(cls_args(tmp_path, tiny_bert_dir, train_csv, "typo", "--metric_for_best_model", "acuracy"))
    err = capsys.readouterr().err
    assert code == 1 and "metric_for_best_model: 'acuracy' is not among this task's metrics (accuracy, " in err
    assert "loss" in err.split("(", 1)[1] and not (tmp_path / "typo").exists()  # refused before anything ran

    code = cli_main(cls_args(tmp_path, tiny_bert_dir, train_csv, "best", "--metric_for_best_model", "eval_loss",
                             "--eval_steps", "2", "--learning_rate", "3e-3"))
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "best"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in log if "eval_loss" in r}
    assert sorted(evals) == [2, 4, 6] and all(v > 0 for v in evals.values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert evals[metrics["best_step"]] == pytest.approx(min(evals.values()), abs=1e-6)  # lower is better
    assert metrics["eval_loss"] == pytest.approx(evals[metrics["best_step"]], abs=1e-6)  # (log.jsonl rounds)


def test_eval_loss_equals_the_training_loss_function_on_the_same_rows(tmp_path, tiny_bert_dir, train_csv):
    """eval_loss is the task's own loss, averaged as in training (here: over the 8 examples)."""
    from finetune.cls import task as task
    from finetune.inference import score
    from mlm.core.hf import load_tokenizer

    cfg = cls_config(train_csv, "--model_name_or_path", tiny_bert_dir)
    tokenizer = load_tokenizer(tiny_bert_dir)
    examples = [{"text": t, "label": l} for t, l in ROWS]
    model = task.AutoModel.from_pretrained(tiny_bert_dir, **task.model_kwargs(cfg, ["neg", "pos"])).eval()
    features = task.encode(examples, tokenizer, cfg, ["neg", "pos"], with_labels=True)
    metrics, _ = score(task, model, examples, features, tokenizer, cfg, ["neg", "pos"], batch_size=3)
    with torch.no_grad():
        total, count = task.loss(model, task.collate(features, tokenizer))
    assert metrics["loss"] == pytest.approx((total / count).item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------ trackers


def test_a_tracker_that_is_not_installed_is_refused_before_any_work(tmp_path, tiny_bert_dir, train_csv, capsys):
    from mlm.core.trackers import installed

    if installed("mlflow"):
        pytest.skip("mlflow is installed here")
    code = cli_main(cls_args(tmp_path, tiny_bert_dir, train_csv, "tracked", "--report_to", "mlflow"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["mlm finetune: error: report_to: mlflow is not installed here; pip install mlflow, "
                                 "or pass --report_to none"]
    assert not (tmp_path / "tracked").exists()


def test_trackers_get_grouped_names(tmp_path):
    from mlm.core.runlog import RunLog

    class Tracked:  # the part of an Accelerator that RunLog talks to
        trackers, calls = ["stub"], []

        def log(self, values, step):
            self.calls.append((step, values))

    accelerator = Tracked()
    run_log = RunLog(str(tmp_path), True, accelerator)
    run_log.log({"step": 3, "loss": 0.5, "learning_rate": 1e-4})
    run_log.log({"step": 4, "eval_accuracy": 0.75, "eval_loss": 0.25, "eval_per_class": {"a": 1}})
    assert accelerator.calls == [(3, {"train/loss": 0.5, "train/learning_rate": 1e-4}),
                                 (4, {"eval/accuracy": 0.75, "eval/loss": 0.25})]


# ------------------------------------------------------------------------------------------------ the hub


def test_push_to_hub_uploads_the_output_folder_through_a_stand_in(tmp_path, tiny_bert_dir, train_csv, capsys,
                                                                  monkeypatch):
    """The hub is unreachable here: everything up to the upload call runs, with a stand-in for huggingface_hub."""
    import huggingface_hub

    from mlm.core import hub

    calls = []

    class StandInApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, exist_ok):
            calls.append(("create", repo_id, exist_ok))

        def upload_folder(self, repo_id, folder_path, ignore_patterns, commit_message):
            calls.append(("upload", repo_id, sorted(os.listdir(folder_path)), ignore_patterns))

    monkeypatch.setattr(huggingface_hub, "HfApi", StandInApi)
    code = cli_main(cls_args(tmp_path, tiny_bert_dir, train_csv, "pushed", "--push_to_hub", "--hub_model_id",
                             "me/tiny", "--hub_token", "hf_secret"))
    assert code == 1 and "push_to_hub: the Hugging Face hub cannot be reached from here" in capsys.readouterr().err
    assert not calls and not (tmp_path / "pushed").exists()  # refused at the start, not after training

    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    code = cli_main(cls_args(tmp_path, tiny_bert_dir, train_csv, "pushed", "--push_to_hub", "--hub_model_id",
                             "me/tiny", "--hub_token", "hf_secret"))
    assert code == 0, capsys.readouterr().err
    assert calls[0] == ("token", "hf_secret") and calls[1] == ("create", "me/tiny", True)
    kind, repo, files, ignored = calls[2]
    assert (kind, repo) == ("upload", "me/tiny") and "checkpoints/*" in ignored
    assert {"config.json", "model.safetensors", "README.md", "all_results.json", "training_args.json"} <= set(files)
    written = "".join(p.read_text(errors="ignore") for p in (tmp_path / "pushed").rglob("*.json"))
    assert "hf_secret" not in written  # the token is never written to disk
    with pytest.raises(ConfigError, match="only used with --push_to_hub"):
        cls_config(train_csv, "--hub_model_id", "me/tiny")


# ------------------------------------------------------------------------------------------------ checkpoints


def test_checkpoints_are_model_folders_that_transformers_and_mlm_predict_load(tmp_path, tiny_bert_dir, train_csv,
                                                                               sentence_corpus, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "pre"
    code = cli_main(["pretrain", "--train_file", sentence_corpus, "--cache_dir", str(tmp_path / "cache"),
                     "--output_dir", str(out), "--vocab_size", "120", "--max_seq_length", "32", "--hidden_size", "32",
                     "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "64",
                     "--per_device_train_batch_size", "4", "--max_steps", "4", "--save_steps", "2",
                     "--eval_steps", "2", "--disable_tqdm", "true"])
    assert code == 0, capsys.readouterr().err
    step = out / "checkpoints" / "step-4"
    assert (step / "mlm_state.json").exists() and not (step / "trainer_state.json").exists()
    weights = load_file(step / "model.safetensors")
    assert not any(k.startswith("model.") for k in weights)  # the model's own names, not the training wrapper's
    final = load_file(out / "model.safetensors")
    assert weights.keys() == final.keys() and all(torch.equal(weights[k], final[k]) for k in final)
    model = AutoModelForMaskedLM.from_pretrained(step)
    assert AutoTokenizer.from_pretrained(step).mask_token == "[MASK]"
    assert torch.equal(model.cls.predictions.decoder.weight, model.bert.embeddings.word_embeddings.weight)

    code = cli_main(cls_args(tmp_path, tiny_bert_dir, train_csv, "cls", "--save_steps", "3", "--eval_steps", "3"))
    assert code == 0, capsys.readouterr().err
    step = tmp_path / "cls" / "checkpoints" / "step-3"
    assert AutoModelForSequenceClassification.from_pretrained(step).config.id2label == {0: "neg", 1: "pos"}
    capsys.readouterr()
    assert cli_main(["predict", "--model", str(step), "--text", "great fun"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("neg", "pos")
