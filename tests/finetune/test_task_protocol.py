"""Every entry of finetune.task.TASKS provides every name of the Task protocol, hooks with the protocol's
parameters (same names, kinds and order; a task may add optional ones), and the runner and `mlm predict` name no
task."""
import inspect
import pathlib
import re

import pytest

from finetune.task import TASKS, Task, protocol_names

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOOKS = [name for name in protocol_names() if name not in Task.__annotations__]


def test_the_protocol_names_the_hooks_the_callers_use():
    assert set(HOOKS) >= {"load_splits", "label_list", "model_kwargs", "encode", "collate", "forward", "loss",
                          "loss_of", "outputs", "outputs_of", "predictions", "metrics", "write_official",
                          "settings_from_hf", "rename_classes", "examples_from_text", "examples_from_file",
                          "read_labelled"}
    assert set(Task.__annotations__) == {"Config", "AutoModel", "UNITS", "TARGETS", "HAS_CLASSES", "LENGTH_FIELDS",
                                      "HEAD_READS_FIRST_TOKEN"}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_has_every_protocol_name(name):
    task = TASKS[name]
    assert [n for n in protocol_names() if not hasattr(task, n)] == []
    assert isinstance(task.UNITS, tuple) and len(task.UNITS) == 2
    assert isinstance(task.TARGETS, tuple) and isinstance(task.HAS_CLASSES, bool)
    assert isinstance(task.HEAD_READS_FIRST_TOKEN, bool)
    assert all(f in {f.name for f in __import__("dataclasses").fields(task.Config)} for f in task.LENGTH_FIELDS)


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("hook", HOOKS)
def test_hook_signature_matches_the_protocol(name, hook):
    var = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    expected = list(inspect.signature(getattr(Task, hook)).parameters.values())
    actual = list(inspect.signature(getattr(TASKS[name], hook)).parameters.values())
    named = [p for p in expected if p.kind not in var]
    assert [(p.name, p.kind) for p in actual[:len(named)]] == [(p.name, p.kind) for p in named], \
        f"{name}.{hook}{inspect.signature(getattr(TASKS[name], hook))} against the protocol's {named}"
    for want in (p for p in expected if p.kind in var):
        assert any(p.kind == want.kind for p in actual), f"{name}.{hook} takes no {want}"
    extra = [p for p in actual[len(named):] if p.kind not in var]
    assert all(p.default is not p.empty for p in extra), f"{name}.{hook}: required parameters beyond the protocol"

def test_runner_and_predict_name_no_task():
    for path in ("finetune/run.py", "finetune/predict.py"):
        assert not re.search(r'"(qa|ner|cls)"', (ROOT / path).read_text(encoding="utf-8")), path
