"""The schema of the committed bench/results/time_to_quality.json (its --quick run pretrains two models and fine-tunes
four: minutes, not a test) and the budget parsing the benchmark shares with `mlm pretrain --max_time`."""
import json
import os
import sys

import pytest

from dist_helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import time_to_quality  # noqa: E402

SIDE_KEYS = ["budget_s", "train_tokens", "common_eval_mlm_loss", "sst2_dev_accuracy", "conll_dev_f1"]


def test_the_budget_reads_like_max_time():
    assert time_to_quality.parse_seconds("15m") == 900 and time_to_quality.parse_seconds("1h") == 3600


@pytest.mark.parametrize("name", ["time_to_quality.json", "time_to_quality_quick.json"])
def test_committed_results_have_the_issue_schema(name):
    path = os.path.join(ROOT, "bench", "results", name)
    if not os.path.isfile(path):
        pytest.skip(f"bench/results/{name} not written yet")
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    assert {"stock", "ours", "tfidf_sst2_dev_accuracy", "machine", "command"} <= set(result)
    for side in ("stock", "ours"):
        assert sorted(result[side]) == sorted(SIDE_KEYS), side
        assert result[side]["budget_s"] == result["budget_s"]
        snapshots = result["details"][side]["snapshots"]  # the plot's points: time goes on, the last is the final model
        assert [s["train_seconds"] for s in snapshots] == sorted(s["train_seconds"] for s in snapshots)
        assert snapshots[-1]["common_eval_mlm_loss"] == result[side]["common_eval_mlm_loss"]
    assert {"cpu_model", "cpu_flags", "logical_cpus", "torch_num_threads", "matmul_peak_gflops"} <= set(result["machine"])
