"""bench/compression.py's pieces on hand-made figures (its --quick run trains 8 MiniLM models: minutes, not a test),
and the schema of the committed bench/results/compression.json."""
import json
import os
import sys

import pytest

from dist_helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import compression  # noqa: E402

ARMS = ["teacher", "student_no_teacher", "student_distilled", "student_distilled_int8"]


def arm(accuracy, f1, speed):
    return dict(zip(compression.FIELDS, (accuracy, f1, 1000, speed, speed, 1.0)))


def test_targets_on_known_figures():
    result = {"teacher": arm(0.90, 0.80, 100), "student_no_teacher": arm(0.85, 0.70, 150),
              "student_distilled": arm(0.88, 0.77, 150), "student_distilled_int8": arm(0.87, 0.76, 310)}
    assert compression.targets(result) == {
        "sst2_kept": 0.9778, "sst2_kept_target_met": True, "conll_kept": 0.9625, "conll_kept_target_met": True,
        "beats_no_teacher": True, "int8_speedup_over_teacher_1t": 3.1, "int8_speedup_target_met": True}
    result["student_distilled"] = arm(0.86, 0.70, 150)  # 95.6% of the accuracy; no better than alone on CoNLL
    result["teacher"]["conll_dev_f1"] = 0.0  # a zero baseline gives no ratio, not a crash
    met = compression.targets(result)
    assert (met["sst2_kept_target_met"], met["conll_kept"], met["beats_no_teacher"]) == (False, None, False)


def test_committed_results_have_the_issue_schema():
    path = os.path.join(ROOT, "bench", "results", "compression.json")
    if not os.path.isfile(path):
        pytest.skip("bench/results/compression.json not written yet")
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    names = ARMS + [f"{name}_2layer" for name in ARMS]  # teacher_2layer: the same teacher, as the issue names it
    assert set(names + ["machine", "command"]) <= set(result)
    for name in names:
        assert sorted(result[name]) == sorted(compression.FIELDS), name
    assert {"cpu_model", "cpu_flags", "logical_cpus", "torch_num_threads"} <= set(result["machine"])
