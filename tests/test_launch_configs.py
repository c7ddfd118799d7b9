"""The launch configs in recipes/accelerate/: what mlm relies on, read the way `accelerate launch` reads them.

Asserted: the distributed type, process and machine counts, precision, CPU or GPU, and which GPU a one-GPU
config targets; each from the file itself (safe YAML) and from accelerate's config loader (its public config
file format). How the launcher turns them into processes is accelerate's business: tests/compat/ checks that
against its internals, for upgrades (`make test-latest`).
"""
import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "recipes", "accelerate")
CONFIG_CASES = [  # name, distributed_type, processes, machines, mixed precision
    ("cpu-2proc", "MULTI_GPU", 2, 1, "no"),
    ("fsdp-cpu-2proc", "FSDP", 2, 1, "no"),
    ("single-gpu", "NO", 1, 1, "bf16"),
    ("multi-gpu", "MULTI_GPU", 8, 1, "bf16"),
    ("multi-node", "MULTI_GPU", 16, 2, "bf16"),
    ("fsdp", "FSDP", 8, 1, "bf16"),
    ("deepspeed-zero2", "DEEPSPEED", 8, 1, "bf16"),
]


def test_every_config_file_is_covered():
    assert sorted(n[: -len(".yaml")] for n in os.listdir(CONFIGS) if n.endswith(".yaml")) == \
        sorted(case[0] for case in CONFIG_CASES)


@pytest.mark.parametrize("name, distributed_type, processes, machines, precision", CONFIG_CASES)
def test_launch_config_says_what_mlm_relies_on(name, distributed_type, processes, machines, precision):
    path = os.path.join(CONFIGS, f"{name}.yaml")
    with open(path, encoding="utf-8") as f:
        header = f.readline()
        raw = yaml.safe_load(f)
    assert header.startswith("#")  # every config opens with what it is for and its run command
    assert (raw["distributed_type"], raw["num_processes"], raw["num_machines"], raw["mixed_precision"]) == \
        (distributed_type, processes, machines, precision)
    assert raw["use_cpu"] is name.endswith("cpu-2proc")
    if distributed_type == "NO":
        assert str(raw["gpu_ids"]) == "0"  # the one-GPU config targets GPU 0
    if distributed_type == "FSDP":
        assert raw["fsdp_config"]["fsdp_version"] == 2
        assert raw["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer"
    if name == "deepspeed-zero2":
        assert raw["deepspeed_config"]["zero_stage"] == 2
    if machines > 1:
        assert raw["rdzv_backend"] == "c10d" and raw["main_process_port"]


@pytest.mark.parametrize("name, distributed_type, processes, machines, precision", CONFIG_CASES)
def test_accelerate_reads_the_same(name, distributed_type, processes, machines, precision):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(os.path.join(CONFIGS, f"{name}.yaml"))
    assert str(cfg.distributed_type).split(".")[-1] == distributed_type
    assert (cfg.num_processes, cfg.num_machines, str(cfg.mixed_precision).split(".")[-1]) == \
        (processes, machines, precision)
    assert cfg.use_cpu == name.endswith("cpu-2proc")
    if distributed_type == "NO":
        assert str(cfg.gpu_ids) == "0"
