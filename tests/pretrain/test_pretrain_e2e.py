"""Pretraining end to end on a tiny config: outputs, loss falls, exact resume, CLI errors."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from mlm.cli import main as cli_main
from mlm.core.config import parse_config
from mlm.pretrain.run import PretrainConfig, main


def tiny_args(corpus, output_dir, cache, **extra):
    args = dict(train_file=corpus, output_dir=str(output_dir), cache_dir=str(cache), vocab_size=200,
                max_seq_length=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                per_device_train_batch_size=8, per_device_eval_batch_size=16, max_steps=20, logging_steps=5,
                eval_steps=10, save_steps=10, learning_rate=3e-3, warmup_steps=2, disable_tqdm=True,
                validation_split_percentage=10)
    args.update(extra)
    argv = []
    for key, value in args.items():
        if value is not None:  # None: leave the field at its default
            argv += [f"--{key}", str(value)]
    return parse_config(PretrainConfig, argv)


def losses(output_dir):
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def test_pretrain_writes_a_standard_checkpoint_and_learns(sentence_corpus, tmp_path):
    metrics = main(tiny_args(sentence_corpus, tmp_path / "run", tmp_path / "cache", max_steps=60, logging_steps=10, eval_steps=30, save_steps=30))
    out = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "metrics.json", "log.jsonl", "loss.png"):
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-30", "step-60"]
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("eval_loss", "perplexity", "masked_accuracy", "train_tokens_per_second", "global_step"):
        assert key in saved
    assert saved["global_step"] == 60 and metrics["global_step"] == 60
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [10, 20, 30, 40, 50, 60]
    assert all({"step", "loss", "learning_rate"} <= set(r) for r in records if "loss" in r)
    train_losses = losses(out)
    assert train_losses[-1] < 0.8 * train_losses[0]  # a repetitive corpus: even 60 steps of a tiny model learn it
    assert saved["eval_loss"] < math.log(model_vocab(out)) - 1  # well below a uniform guess

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    # the vocabulary padded to a multiple of 64 (the tokenizer unchanged); a padding id is never predicted: fill-mask
    # ranks every real id above all of them
    assert model.config.vocab_size == 64 * math.ceil(len(tok) / 64) > len(tok) and len(tok) <= 200
    enc = tok("the cat sat on the [MASK]", return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], model.config.vocab_size)
    assert (logits[..., len(tok):] == -1e4).all() and (logits.argmax(-1) < len(tok)).all()
    from transformers import pipeline

    filled = pipeline("fill-mask", model=model, tokenizer=tok, top_k=len(tok))("the cat sat on the [MASK]")
    assert len(filled) == len(tok) and all(f["token"] < len(tok) for f in filled)


@pytest.mark.parametrize("tie", [None, False])  # None: BERT's tied embeddings; False: a separate output projection
def test_twenty_steps_equal_ten_plus_resume_plus_ten(sentence_corpus, tmp_path, monkeypatch, tie):
    import mlm.pretrain.run as pretrain

    main(tiny_args(sentence_corpus, tmp_path / "straight", tmp_path / "cache", logging_steps=1, tie_word_embeddings=tie))
    straight = losses(tmp_path / "straight")
    calls = {"n": 0}
    real_loss = pretrain.mlm_loss

    def interrupt_after_ten(model, batch):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real_loss(model, batch)

    monkeypatch.setattr(pretrain, "mlm_loss", interrupt_after_ten)
    with pytest.raises(KeyboardInterrupt):
        main(tiny_args(sentence_corpus, tmp_path / "resumed", tmp_path / "cache", logging_steps=1,
                       tie_word_embeddings=tie))
    monkeypatch.setattr(pretrain, "mlm_loss", real_loss)
    # Resumed on "another machine" (an empty cache): the run's own tokenizer comes from output_dir, never a
    # retrained one (WordPiece training is not reproducible: its ids could differ).
    other_cache = tmp_path / "other-cache"
    main(tiny_args(sentence_corpus, tmp_path / "resumed", other_cache, logging_steps=1, resume_from_checkpoint="latest",
                   tie_word_embeddings=tie))
    assert not (other_cache / "tokenizers").exists()
    resumed = losses(tmp_path / "resumed")
    assert len(straight) == len(resumed) == 20
    assert resumed == straight  # masks, dropout, data order, optimizer and schedule all continue exactly
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    if tie is False:  # the output projection is its own tensor in the checkpoint, trained apart from the input rows
        embeddings, projection = a["bert.embeddings.word_embeddings.weight"], a["cls.predictions.decoder.weight"]
        assert json.loads((tmp_path / "resumed" / "config.json").read_text())["tie_word_embeddings"] is False
        assert embeddings.shape == projection.shape and not torch.equal(embeddings, projection)


def test_sinusoidal_position_rows_start_the_run_and_its_checkpoint_is_plain_bert(sentence_corpus, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM

    from mlm.pretrain.model import build_masked_lm

    # a learning rate of 1e-9: two steps leave the rows where they started
    main(tiny_args(sentence_corpus, tmp_path / "run", tmp_path / "cache", max_steps=2, eval_steps=2, save_steps=2,
                   learning_rate=1e-9, position_embedding_init="sinusoidal"))
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))["bert.embeddings.position_embeddings.weight"]
    fresh = build_masked_lm(None, "tiny", 200, 32, position_init="sinusoidal", hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64)
    assert torch.allclose(saved, fresh.bert.embeddings.position_embeddings.weight, atol=1e-6)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "run")  # an ordinary checkpoint
    assert torch.equal(loaded.bert.embeddings.position_embeddings.weight, saved)
    settings = json.loads((tmp_path / "run" / "training_args.json").read_text())["settings"]
    assert settings["position_embedding_init"] == "sinusoidal"


def run_cli(capsys, *argv):
    """Exit code and the error lines (log lines on stderr are not errors); never a traceback."""
    code = cli_main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("mlm ")]


def test_cli_errors_are_one_line(sentence_corpus, tmp_path, capsys):
    bad_recipe = tmp_path / "bad.yaml"
    bad_recipe.write_text("max_step: 10\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"hello \xff\xfe world\n")
    no_vocab = tmp_path / "novocab"
    no_vocab.mkdir()
    cases = [
        (["pretrain", "--max_stepz", "3"], "--max_stepz"),
        (["pretrain", "--max_steps", "many"], "max_steps"),
        (["pretrain", "--recipe", str(bad_recipe)], "unknown key 'max_step'"),
        (["pretrain", "--train_file", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path / "o1")], "missing.txt"),
        (["pretrain", "--train_file", str(empty), "--output_dir", str(tmp_path / "o2"), "--cache_dir", str(tmp_path / "c")], "empty.txt"),
        (["pretrain", "--train_file", str(binary), "--output_dir", str(tmp_path / "o3"), "--cache_dir", str(tmp_path / "c")], "binary.txt"),
        (["pretrain", "--train_file", sentence_corpus, "--tokenizer_name", str(no_vocab), "--output_dir", str(tmp_path / "o4")], "novocab"),
        (["pretrain", "--train_file", sentence_corpus, "--model_name_or_path", str(no_vocab), "--output_dir", str(tmp_path / "o5")], "novocab"),
        (["pretrain", "--warmup_ratio", "0.1", "--warmup_steps", "5"], "warmup"),
    ]
    for argv, needle in cases:
        code, err = run_cli(capsys, *argv)
        assert code != 0, argv
        assert len(err) == 1 and needle in err[0], (argv, err)


def test_sequence_longer_than_positions_is_refused_and_nothing_is_damaged(sentence_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    main(tiny_args(sentence_corpus, out, tmp_path / "cache", max_steps=4, eval_steps=4, save_steps=4))
    before = (out / "model.safetensors").read_bytes()
    code, err = run_cli(capsys, "pretrain", "--train_file", sentence_corpus, "--model_name_or_path", str(out),
                        "--max_seq_length", "1024", "--output_dir", str(tmp_path / "again"), "--cache_dir", str(tmp_path / "cache"))
    assert code == 1 and len(err) == 1 and "max_seq_length" in err[0]
    code, err = run_cli(capsys, "pretrain", "--train_file", sentence_corpus, "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
                        "--max_seq_length", "32", "--max_steps", "2")
    assert code == 1 and "already holds a run" in err[0]
    assert (out / "model.safetensors").read_bytes() == before


def test_module_entry_point_and_help():
    result = subprocess.run([sys.executable, "-m", "mlm", "pretrain", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for field in ("--mlm_probability", "--per_device_train_batch_size", "--resume_from_checkpoint", "--whole_word_masking"):
        assert field in result.stdout
    result = subprocess.run([sys.executable, "-m", "mlm", "pretrain", "--bogus", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "--bogus" in result.stderr


def test_wikitext2_bounded_run(data_dir, tmp_path):
    wiki = os.path.join(data_dir, "wikitext-2-raw")
    metrics = main(tiny_args(os.path.join(wiki, "wiki.valid.raw"), tmp_path / "wiki", tmp_path / "cache",
                             validation_file=os.path.join(wiki, "wiki.test.raw"), document_separator="line",
                             vocab_size=2000, max_seq_length=64, max_steps=60, eval_steps=60, save_steps=60,
                             hidden_size=64, intermediate_size=128, per_device_train_batch_size=32,
                             max_eval_samples=64, learning_rate=5e-3))
    assert metrics["global_step"] == 60
    train_losses = losses(tmp_path / "wiki")
    assert train_losses[-1] < train_losses[0] - 1.0
    assert metrics["eval_loss"] < math.log(model_vocab(tmp_path / "wiki"))  # better than a uniform guess


def model_vocab(out):
    return json.loads((out / "config.json").read_text())["vocab_size"]


def test_tokenizer_command_trains_a_loadable_wordpiece(sentence_corpus, tmp_path, capsys):
    code, err = run_cli(capsys, "tokenizer", "--train_file", sentence_corpus, "--output_dir", str(tmp_path / "tok"),
                        "--vocab_size", "150", "--do_lower_case", "false")
    assert code == 0 and err == []
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.is_fast and 100 < len(tok) <= 150
    ids = tok("The cat sat")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.tokenize("the cat")[0] == "the" and tok.tokenize("The cat")[0] != "the"  # case kept
    code, err = run_cli(capsys, "tokenizer", "--vocab_size", "10")
    assert code == 1 and "vocab_size" in err[0]


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_continued_pretraining_of_other_families(sentence_corpus, tmp_path, tiny_roberta_dir, tiny_tokenizer, family):
    """Byte-level BPE with whole-word masking (RoBERTa), a model with its own head layout and no token types
    (DistilBERT): both continue, keep their own dropout, and save a checkpoint transformers loads."""
    from transformers import AutoModelForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    from mlm.errors import ConfigError

    path = tiny_roberta_dir
    if family == "distilbert":
        path = str(tmp_path / "distil")
        DistilBertForMaskedLM(DistilBertConfig(vocab_size=len(tiny_tokenizer), dim=32, n_layers=2, n_heads=2,
                                               hidden_dim=64, max_position_embeddings=64)).save_pretrained(path)
        tiny_tokenizer.save_pretrained(path)
        with pytest.raises(ConfigError, match="hidden_dropout_prob: distilbert checkpoints have no such setting"):
            main(tiny_args(sentence_corpus, tmp_path / "bad", tmp_path / "cache", model_name_or_path=path,
                           hidden_dropout_prob=0.2))
    out = tmp_path / family
    metrics = main(tiny_args(sentence_corpus, out, tmp_path / "cache", model_name_or_path=path, max_steps=4,
                             eval_steps=4, save_steps=4, whole_word_masking=True))
    assert math.isfinite(metrics["eval_loss"])
    reloaded = AutoModelForMaskedLM.from_pretrained(out)
    assert reloaded.config.model_type == family


def test_a_time_budget_ends_the_run_with_its_schedule_finished_and_a_valid_export(sentence_corpus, tmp_path):
    """--max_time 20s: no step count is given; the run stops at the budget, its learning rate has decayed to 0
    at the last step, the fractional eval/save intervals fire on the clock, and the export loads."""
    out = tmp_path / "budget"
    metrics = main(tiny_args(sentence_corpus, out, tmp_path / "cache", max_steps=-1, max_time="20s",
                             warmup_steps=None, warmup_ratio=0.1, eval_steps=0.25, save_steps=0.5,
                             save_total_limit=5, logging_steps=5))
    assert 20 <= metrics["elapsed_s"] < 35 and metrics["max_time_s"] == 20
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps[-1]["step"] == metrics["global_step"] > 20  # a tiny model does many steps in 20 s
    assert steps[-1]["learning_rate"] == 0.0  # the linear decay ends with the budget
    assert max(r["learning_rate"] for r in steps) > 2e-3  # and it did warm up to (near) the peak 3e-3
    evals = [r for r in records if "eval_loss" in r]
    assert 4 <= len(evals) <= 5 and all(math.isfinite(r["eval_loss"]) for r in evals)
    assert [round(r["elapsed_s"] / 5) for r in evals[:3]] == [1, 2, 3]  # every quarter of the budget
    saved = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir())
    assert len(saved) in (2, 3) and saved[-1] == metrics["global_step"]

    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(out).config.num_hidden_layers == 2


def test_a_budget_is_resumed_with_its_clock(sentence_corpus, tmp_path, monkeypatch):
    """The clock is training state: a run stopped half-way and resumed continues its budget, not a new one."""
    import time

    import mlm.pretrain.run as pretrain

    args = dict(max_steps=-1, max_time="8s", warmup_steps=None, eval_steps=0.25, save_steps=0.25, logging_steps=1)
    real_loss, start = pretrain.mlm_loss, time.perf_counter()

    def interrupt_after_five_seconds(model, batch):
        if time.perf_counter() - start > 5:
            raise KeyboardInterrupt
        return real_loss(model, batch)

    monkeypatch.setattr(pretrain, "mlm_loss", interrupt_after_five_seconds)
    with pytest.raises(KeyboardInterrupt):
        main(tiny_args(sentence_corpus, tmp_path / "budget", tmp_path / "cache", **args))
    monkeypatch.setattr(pretrain, "mlm_loss", real_loss)
    out = tmp_path / "budget"
    latest = max((out / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    saved = json.loads((latest / "mlm_state.json").read_text())
    assert 2 <= saved["elapsed"] < 5

    metrics = main(tiny_args(sentence_corpus, out, tmp_path / "cache", resume_from_checkpoint="latest", **args))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    after = [r for r in records if "loss" in r and r["step"] > saved["step"]]
    assert after[0]["elapsed_s"] > saved["elapsed"]  # the clock went on from the checkpoint's reading
    assert metrics["elapsed_s"] >= 8 and metrics["global_step"] == after[-1]["step"]
    assert after[-1]["learning_rate"] == 0.0


@pytest.mark.parametrize("flags, message", [
    (["--max_time", "15 minutes"], "^max_time: '15 minutes' is not a duration"),
    (["--max_time", "15m", "--warmup_steps", "10"], "^warmup_steps: with max_time"),
    (["--max_time", "15m", "--lr_scheduler_type", "polynomial"], "^lr_scheduler_type: 'polynomial' has no time-budget"),
    (["--eval_steps", "1.5"], "^eval_steps: must be a whole number of steps >= 1 or a fraction"),
])
def test_bad_budget_settings_are_refused_in_one_line(flags, message):
    from mlm.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_config(PretrainConfig, flags)
