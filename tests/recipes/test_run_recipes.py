"""Every shipped recipe runs (torchtune's recipe tests, litgpt's test_config_hub.py are the models).

* The `*-tiny.yaml` fine-tuning recipes run end to end on the real data they name ($MLM_DATA_DIR), on the tiny
  random BERT of conftest.py instead of outputs/pretrain-demo, and their losses are pinned: a change of the
  loop, the data path or a task's loss shows here.
* Every full recipe in recipes/pretrain and recipes/finetune runs with its data swapped for a tiny fixture
  (--train_file / --data_dir), a few steps (--max_steps), and only the shape overrides that time needs on two
  CPU cores (named per recipe below); the loss must be finite and fall, and the outputs must exist.
"""
import glob
import json
import math
import os

import pytest

from finetune.run import main as finetune_main, parse_finetune_args
from mlm.core.config import parse_config
from mlm.pretrain.run import PretrainConfig, main as pretrain_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = os.path.join(ROOT, "recipes")
OUTPUTS = ("config.json", "model.safetensors", "tokenizer.json", "metrics.json", "log.jsonl")

# Shapes the full recipes are run at here (seconds on 2 CPU cores); everything else is the recipe's own.
PRETRAIN_SHAPES = {
    "budget-15m.yaml": [],  # --max_steps 6 ends them before their budget
    "budget-1h.yaml": [],
    "demo.yaml": [],
    "wikitext2.yaml": [],
    "wikitext103.yaml": ["--dataset_name", "null", "--dataset_config_name", "null",  # files instead of the hub
                         "--per_device_train_batch_size", "8", "--global_batch_size", "8"],
    # BERT-base itself; torch.compile and CPU bf16 would take minutes, long sequences and big batches too
    "bert-base.yaml": ["--max_seq_length", "32", "--per_device_train_batch_size", "2", "--global_batch_size", "2",
                       "--torch_compile", "false", "--mixed_precision", "no", "--save_total_limit", "1"],
}
# Recipes whose 6 steps at these shapes learn too little for "the loss falls" to hold whatever the tokenizer: they
# read the conftest tokenizer, so that their run is the same every time.
FIXED_TOKENIZER = {"bert-base.yaml"}
FINETUNE_SHAPES = {
    "cls.yaml": [],
    "ner.yaml": [],
    # the tiny backbone has 128 positions, the recipe asks for 384
    "qa.yaml": ["--max_seq_length", "64", "--doc_stride", "16", "--max_query_length", "16",
                "--per_device_train_batch_size", "4", "--global_batch_size", "8"],
}
# Final training losses of the tiny recipes (log.jsonl, last step) on the conftest backbone, seed 0.
TINY_FINAL_LOSS = {"cls-tiny.yaml": 0.695217, "ner-tiny.yaml": 2.113242, "qa-tiny.yaml": 4.145676}


def train_losses(output_dir) -> list[float]:
    with open(os.path.join(output_dir, "log.jsonl"), encoding="utf-8") as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def check_run(output_dir) -> list[float]:
    for name in OUTPUTS:
        assert os.path.isfile(os.path.join(output_dir, name)), name
    losses = train_losses(output_dir)
    assert losses and all(math.isfinite(x) for x in losses), losses
    head, tail = losses[: max(1, len(losses) // 3)], losses[-max(1, len(losses) // 3):]
    assert sum(tail) / len(tail) < sum(head) / len(head), losses  # it learns
    return losses


def test_every_recipe_is_covered():
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(RECIPES, "pretrain", "*.yaml"))) == \
        sorted(PRETRAIN_SHAPES)
    finetune = sorted(os.path.basename(p) for p in glob.glob(os.path.join(RECIPES, "finetune", "*.yaml")))
    assert finetune == sorted([*FINETUNE_SHAPES, *TINY_FINAL_LOSS])


# ---------------------------------------------------------------------------------------- pretraining

@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(PRETRAIN_SHAPES))
def test_pretrain_recipe_runs(recipe, sentence_corpus, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["--recipe", os.path.join(RECIPES, "pretrain", recipe), "--train_file", sentence_corpus,
            "--validation_file", "null", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
            "--max_steps", "6", "--logging_steps", "1", "--eval_steps", "6", "--save_steps", "6",
            "--disable_tqdm", "true", *PRETRAIN_SHAPES[recipe]]
    if recipe in FIXED_TOKENIZER:  # a trained WordPiece differs from run to run (tie order): so would the losses
        argv += ["--tokenizer_name", tiny_bert_dir]
    metrics = pretrain_main(parse_config(PretrainConfig, argv))
    check_run(out)
    assert metrics["global_step"] == 6 and math.isfinite(metrics["eval_loss"])


# ------------------------------------------------------------------------------------------ fine-tuning

POSITIVE = ["a great film", "i love this movie", "good fun", "a great story", "good acting", "i love the plot"]
NEGATIVE = ["a terrible film", "i hate this movie", "bad acting", "a boring story", "terrible fun", "i hate the plot"]
PEOPLE = [("john", "smith"), ("john", "apple")]
PLACES = ["paris", "london", "berlin", "germany", "france"]


def _cls_data(folder):
    rows = [(t, 1) for t in POSITIVE] + [(t, 0) for t in NEGATIVE]
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows * 4))


def _ner_data(folder):
    sentences = []
    for i in range(24):
        first, last = PEOPLE[i % 2]
        place = PLACES[i % len(PLACES)]
        sentences.append([(first, "I-PER"), (last, "I-PER"), ("visited", "O"), (place, "I-LOC"), (".", "O")])
    text = "-DOCSTART- -X- O O\n\n" + "\n".join(
        "".join(f"{w} X X {t}\n" for w, t in s) for s in sentences)
    for name in ("eng.train", "eng.testa", "eng.testb"):
        (folder / name).write_text(text)


def _qa_data(folder):
    articles = []
    for i in range(48):  # qa.yaml splits 38:10 articles
        place = PLACES[i % len(PLACES)]
        context = f"john smith lives in {place} . the river is in {place} ."
        qas = [{"id": f"q{i}", "question": "where does john smith live ?",
                "answers": [{"text": place, "answer_start": context.index(place)}]}]
        articles.append({"title": f"t{i}", "paragraphs": [{"context": context, "qas": qas}]})
    (folder / "dev-v1.1.json").write_text(json.dumps({"version": "1.1", "data": articles}))


FIXTURES = {"cls": _cls_data, "ner": _ner_data, "qa": _qa_data}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(FINETUNE_SHAPES))
def test_finetune_recipe_runs(recipe, tiny_bert_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    FIXTURES[recipe.split(".")[0]](data)
    out = tmp_path / "run"
    argv = ["--recipe", os.path.join(RECIPES, "finetune", recipe), "--data_dir", str(data),
            "--model_name_or_path", tiny_bert_dir, "--output_dir", str(out), "--max_steps", "12",
            "--logging_steps", "1", "--eval_steps", "12", "--disable_tqdm", "true", *FINETUNE_SHAPES[recipe]]
    metrics = finetune_main(parse_finetune_args(argv))
    check_run(out)
    assert os.path.isfile(out / "mlm_task.json") and os.path.isfile(out / "predictions" / "validation.jsonl")
    assert metrics["global_step"] == 12 and math.isfinite(metrics["eval_loss"])


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("recipe", sorted(TINY_FINAL_LOSS))
def test_tiny_recipe_end_to_end_with_pinned_losses(recipe, data_dir, tiny_bert_dir, tmp_path):
    task = recipe.split("-")[0]
    folder = {"cls": "sst2", "ner": "conll2003", "qa": "squad"}[task]
    out = tmp_path / "run"
    argv = ["--recipe", os.path.join(RECIPES, "finetune", recipe), "--data_dir", os.path.join(data_dir, folder),
            "--model_name_or_path", tiny_bert_dir, "--output_dir", str(out)]
    metrics = finetune_main(parse_finetune_args(argv))
    for name in OUTPUTS + ("mlm_task.json",):
        assert os.path.isfile(out / name), name
    losses = train_losses(out)
    assert all(math.isfinite(x) for x in losses) and metrics["global_step"] == len(losses)
    assert losses[-1] == pytest.approx(TINY_FINAL_LOSS[recipe], rel=1e-3, abs=1e-4)
