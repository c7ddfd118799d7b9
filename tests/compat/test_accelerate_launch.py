"""Compatibility check against accelerate's launcher internals (private functions: they change between releases).

What `accelerate launch --config_file X -m mlm pretrain` works out before it starts a process. Skipped unless
MLM_COMPAT=1 (`make test-latest` sets it): a failure here after an upgrade says the launcher changed, and the
contract tests in tests/test_launch_configs.py say whether mlm is affected.
"""
import os

import pytest

from test_launch_configs import CONFIG_CASES, CONFIGS

pytestmark = pytest.mark.compat


@pytest.mark.parametrize("name, distributed_type, processes, machines, precision", CONFIG_CASES)
def test_launch_configs_pass_accelerates_launch_checks(name, distributed_type, processes, machines, precision):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

    extra = ["--machine_rank", "1", "--main_process_ip", "127.0.0.1"] if machines > 1 else []
    args = launch_command_parser().parse_args(["--config_file", os.path.join(CONFIGS, f"{name}.yaml"), *extra,
                                               "-m", "mlm", "pretrain"])
    args, defaults, precision_from_config = _validate_launch_command(args)
    if distributed_type == "DEEPSPEED":
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)  # what launch_command sets
        _, env = prepare_deepspeed_cmd_env(args)
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    elif distributed_type == "NO":
        cmd, env = prepare_simple_launcher_cmd_env(args)
        assert cmd[-3:] == ["-m", "mlm", "pretrain"]
        # accelerate >= 1.16 sets CUDA_VISIBLE_DEVICES from gpu_ids only where a GPU is visible
        assert env.get("CUDA_VISIBLE_DEVICES", "0") == "0"
    else:  # torchrun underneath: processes per node, nodes
        env = prepare_multi_gpu_env(args)
        assert int(args.nproc_per_node) == processes // machines
        if machines > 1:
            assert int(args.nnodes) == machines and args.rdzv_endpoint == "127.0.0.1:29500"
        if distributed_type == "FSDP":
            assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["ACCELERATE_MIXED_PRECISION"] == precision
    # A GPU config must not put the ranks on the CPU; the CPU config leaves it to mlm (see cpu-2proc.yaml).
    assert env.get("ACCELERATE_USE_CPU", "False") in ("False", os.environ.get("ACCELERATE_USE_CPU"))
