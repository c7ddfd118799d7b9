"""Data as it comes: files given in full next to a recipe's data_dir, headerless tables, label names."""
import os

import pytest

from finetune.run import parse_finetune_args
from mlm.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("recipe", ["ner.yaml", "qa.yaml"])
def test_absolute_and_dot_relative_files_do_not_need_the_recipes_data_dir(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's ../shared/data/... does not exist from here
    recipe = os.path.join(ROOT, "recipes/finetune", recipe)
    train = str(tmp_path / "train.conll")
    extra = ["--split_articles", "none"] if recipe.endswith("qa.yaml") else []
    cfg = parse_finetune_args(["--recipe", recipe, "--train_file", train, "--validation_file", "./dev.conll",
                               "--test_file", f"{train},../test.conll", *extra])
    assert (cfg.train_file, cfg.validation_file, cfg.test_file) == (train, "./dev.conll", f"{train},../test.conll")
    # A plain name is still resolved in data_dir, which must then exist; the message names the file needing it.
    with pytest.raises(ConfigError, match=r"data_dir: \.\./shared/data/\S+ not found \(needed for validation_file "
                                          r"dev.conll\).*full paths"):
        parse_finetune_args(["--recipe", recipe, "--train_file", train, "--validation_file", "dev.conll", *extra])
    folder = tmp_path / "data"
    folder.mkdir()
    cfg = parse_finetune_args(["--recipe", recipe, "--data_dir", str(folder), "--train_file", train,
                               "--validation_file", "dev.conll", "--test_file", "a.conll, ./b.conll", *extra])
    assert (cfg.train_file, cfg.validation_file) == (train, str(folder / "dev.conll"))
    assert cfg.test_file == f"{folder / 'a.conll'},./b.conll"
    with pytest.raises(ConfigError, match="empty file name"):
        parse_finetune_args(["--recipe", recipe, "--train_file", train, "--test_file", f"{train},", *extra])


def test_max_test_samples_and_its_hf_alias(tmp_path):
    train = str(tmp_path / "train.csv")
    cfg = parse_finetune_args(["--task", "cls", "--train_file", train, "--max_eval_samples", "5"])
    assert (cfg.max_eval_samples, cfg.max_test_samples) == (5, None)  # a quick dev loop keeps the whole test split
    cfg = parse_finetune_args(["--task", "cls", "--train_file", train, "--max_predict_samples", "7"])
    assert cfg.max_test_samples == 7
    with pytest.raises(ConfigError, match="max_test_samples: must be >= 1, got 0"):
        parse_finetune_args(["--task", "cls", "--train_file", train, "--max_test_samples", "0"])
