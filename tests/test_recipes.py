"""Every shipped recipe loads into its config (unknown keys or bad values would fail here)."""
import glob
import os

import pytest
import yaml

from finetune.run import parse_finetune_args
from mlm.config import parse_config
from mlm.pretrain import PretrainConfig

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
