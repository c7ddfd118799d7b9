"""bench/gpu_check.py in its CPU dry run (tiny shapes, fp32): every part runs, so the GPU script cannot rot.

The numbers of a dry run mean nothing; the real run on a GPU writes bench/results/gpu_check.json.
"""
import json
import os
import subprocess
import sys

import pytest

from dist_helpers import ROOT, child_env


@pytest.mark.slow
@pytest.mark.distributed  # its FSDP part launches 2 CPU ranks
def test_gpu_check_dry_run_runs_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--dry-run", "--output",
                             str(out)], cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=400)
    report = json.loads(out.read_text())
    assert result.returncode == 0 and report["errors"] == {}, (report["errors"], result.stderr[-2000:])
    parts = report["parts"]
    assert sorted(parts) == sorted(["peak", "mlm_small", "stock_small", "mlm_base", "stock_base", "finetune", "fsdp",
                                    "parity", "attention", "syncs", "unpadded"])
    assert report["dry_run"] and parts["peak"]["device"] == "cpu" and parts["peak"]["matmul_peak_tflops"] > 0
    for size in ("small", "base"):
        assert parts[f"mlm_{size}"]["distributed_type"] == "NO" and parts[f"mlm_{size}"]["mixed_precision"] == "no"
        assert 0 < parts[f"mlm_{size}"]["mfu"] < 1 and 0 < parts[f"stock_{size}"]["mfu"] < 1
        assert report[f"speedup_{size}"] > 0
    assert (parts["fsdp"]["distributed_type"], parts["fsdp"]["processes"]) == ("FSDP", 2)  # from the run itself
    assert parts["finetune"]["steps"] == report["shape"]["steps"]
    assert parts["parity"]["ok"] and parts["parity"]["relative_difference"] == 0.0  # fp32 against fp32 here
    assert parts["attention"]["sdpa_dropout_ms"] > 0 and parts["attention"]["explicit_ms"] > 0
    # the CPU dry run counts Tensor reads: none in a step but the loader's seed (step 1) and the logging step's
    assert parts["syncs"]["max_syncs_other_steps"] <= 1 and parts["syncs"]["max_syncs_logging_steps"] >= 1
    assert parts["unpadded"]["max_abs_difference"] < 1e-4 and parts["unpadded"]["unpadded_ms"] > 0
