"""The time budget: durations, the learning-rate curve on the fraction of the budget used."""
import math

import pytest
import torch

from mlm.core.budget import ProgressCurve, budget_scheduler, parse_duration
from mlm.errors import ConfigError


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400),
                                           ("1.5h", 5400), (" 2H ", 7200), (45, 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15 minutes", "m15", "1h30", "-5m", "0", "inf", "1x"])
def test_bad_durations_name_the_key(text):
    with pytest.raises(ConfigError, match=r"^max_time: "):
        parse_duration(text)


def test_linear_curve_warms_up_then_decays_to_zero_at_the_end_of_the_budget():
    curve = ProgressCurve("linear", warmup=0.1)
    values = {}
    for p in (0.0, 0.05, 0.1, 0.55, 1.0, 1.2):
        curve.progress = p
        values[p] = curve(123)  # the step count is ignored
    assert values == pytest.approx({0.0: 0.0, 0.05: 0.5, 0.1: 1.0, 0.55: 0.5, 1.0: 0.0, 1.2: 0.0})


def test_cosine_and_constant_curves():
    cosine, constant = ProgressCurve("cosine", warmup=0.0), ProgressCurve("constant_with_warmup", warmup=0.5)
    cosine.progress, constant.progress = 0.5, 0.25
    assert cosine(0) == pytest.approx(0.5) and constant(0) == pytest.approx(0.5)
    cosine.progress, constant.progress = 1.0, 0.9
    assert cosine(0) == pytest.approx(0.0) and constant(0) == 1.0


def test_a_schedule_without_a_budget_form_is_refused():
    with pytest.raises(ConfigError, match="^lr_scheduler_type: 'polynomial'"):
        ProgressCurve("polynomial", 0.0)


def test_the_curve_resumes_from_the_scheduler_state():
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=2.0)
    scheduler = budget_scheduler(optimizer, "linear", 0.0)
    scheduler.lr_lambdas[0].progress = 0.75
    optimizer.step()
    scheduler.step()
    saved = scheduler.state_dict()
    fresh = budget_scheduler(torch.optim.SGD(params, lr=2.0), "linear", 0.0)
    fresh.load_state_dict(saved)
    assert fresh.lr_lambdas[0].progress == 0.75 and fresh.get_last_lr() == pytest.approx([0.5])
    assert math.isclose(scheduler.get_last_lr()[0], 0.5)
