# fedlib — two commands: `make figures` (every paper figure) and `make test`.
# Both create/refresh the local virtual environment first, then fetch the datasets the
# notebooks need and no data directory holds yet (offline: one message naming the files).

VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= smoke
STAMP   := $(VENV)/.fedlib-installed
# The CPU wheel of torch: installed before the package so that pip does not pull a CUDA build.
TORCH   ?= torch==2.13.0
# The datasets the notebooks read (EMNIST is optional: `make data` fetches it too).
NOTEBOOK_DATASETS := mnist fashion-mnist cifar10

.PHONY: venv datasets figures test unit notebooks lint data lab clean-cache strip help

help:
	@echo "make figures [PROFILE=paper]   run every notebook with papermill into figures/"
	@echo "make test                      unit tests + pytest --nbval-lax notebooks/"
	@echo "make unit                      unit tests only (no datasets needed)"
	@echo "make lint                      ruff check fedlib tests benchmarks"
	@echo "make data                      download every dataset, EMNIST included (checksummed)"
	@echo "make lab                       open the notebooks in JupyterLab"

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)" || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e ".[dev,notebooks]"
	@touch $(STAMP)

venv: $(STAMP)

datasets: venv
	$(PY) -m fedlib.data.download --if-missing $(NOTEBOOK_DATASETS)

figures: datasets
	$(PY) -m fedlib.notebook_runner --profile $(PROFILE)

test: datasets
	$(PY) -m pytest tests --nbval-lax notebooks --durations=20

unit: venv
	$(PY) -m pytest tests

notebooks: datasets
	$(PY) -m pytest --nbval-lax notebooks

lint: venv
	$(PY) -m ruff check fedlib tests benchmarks

data: venv
	$(PY) -m fedlib.data.download

lab: venv
	$(PY) -m jupyter lab notebooks/

strip: venv
	$(PY) -m fedlib.notebook_runner --strip

clean-cache:
	rm -rf .cache/runs
