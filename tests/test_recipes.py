"""Every shipped recipe loads into its config (unknown keys or bad values would fail here)."""
import glob
import os

import pytest
import yaml

from finetune.run import parse_finetune_args
from mlm.core.config import parse_config
from mlm.errors import ConfigError
from mlm.pretrain.run import PretrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "recipes/pretrain/*.yaml"))))
def test_pretrain_recipes_load(path):
    cfg = parse_config(PretrainConfig, ["--recipe", path])
    assert cfg.output_dir.startswith("outputs/")
    assert cfg.max_steps > 0 or cfg.num_train_epochs > 0


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "recipes/finetune/*.yaml"))))
def test_finetune_recipes_load(path, tmp_path):
    # data_dir must exist when set: point it at an empty folder so the test does not need the datasets
    cfg = parse_finetune_args(["--recipe", path, "--data_dir", str(tmp_path)])
    task = os.path.basename(path).split("-")[0].split(".")[0]
    assert cfg.task == task
    assert cfg.model_name_or_path == "outputs/pretrain-demo"  # the backbone `make pretrain` writes


def test_demo_recipe_is_the_make_default():
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    assert "recipes/pretrain/demo.yaml" in makefile
    demo = yaml.safe_load(open(os.path.join(ROOT, "recipes/pretrain/demo.yaml")))
    assert demo["output_dir"] == "outputs/pretrain-demo" and "train_file" not in demo  # embedded corpus


@pytest.mark.parametrize("form", [["--recipe", "{}"], ["--recipe={}"]])
def test_recipe_values_and_flags_that_override_them(tmp_path, form):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_steps: 7\nlearning_rate: 0.002\nwarmup_steps: null\noutput_dir: --odd-name\n")
    argv = [token.format(recipe) for token in form]
    cfg = parse_config(PretrainConfig, argv)  # both spellings of --recipe read it
    assert (cfg.max_steps, cfg.learning_rate, cfg.warmup_steps, cfg.output_dir) == (7, 0.002, None, "--odd-name")
    assert parse_config(PretrainConfig, argv + ["--max_steps", "9"]).max_steps == 9  # a flag wins
    assert parse_config(PretrainConfig, argv + ["--warmup_steps", "3"]).warmup_steps == 3
    unset = parse_config(PretrainConfig, argv + ["--output_dir=x", "--validation_file", "null", "--warmup_steps=null"])
    assert unset.validation_file is None and unset.warmup_steps is None  # a flag can unset a recipe's value
    with pytest.raises(ConfigError, match="--recipe: expected a YAML file, got nothing"):
        parse_config(PretrainConfig, ["--recipe="])


@pytest.mark.parametrize("text,message", [
    ("max_steps: [1, 2]\n", "max_steps: expected one value, got a list"),
    ("max_steps: null\n", "max_steps: null is not allowed"),
    ("learning_rate: .inf\n", "learning_rate: must be a finite number > 0"),
    ("max_steps: many\n", "--max_steps.*invalid int value: 'many' \\(from .*r.yaml\\)"),
])
def test_bad_recipe_values_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse_config(PretrainConfig, ["--recipe", str(tmp_path / "r.yaml")])


def test_abbreviated_flags_are_refused():
    with pytest.raises(ConfigError, match="unknown option --max_s"):
        parse_config(PretrainConfig, ["--max_s", "5"])
