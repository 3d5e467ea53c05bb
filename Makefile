# The two commands of the README:
#   make run    set up .venv and train the default model on the embedded corpus (offline)
#   make test   set up .venv with the test extras and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; override to taste, e.g. `make TORCH_SPEC='torch==2.5.1' test`.
TORCH_SPEC ?= torch==2.13.0
MAX_CHUNKS ?= 100
PYTEST_ARGS ?=

.PHONY: setup run test native bench clean clean-runs

$(VENV)/.installed-base: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-base
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed-base

run: $(VENV)/.installed-base
	$(VENV)/bin/slimtrack train --max-chunks $(MAX_CHUNKS)

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Compile every numba kernel into numba's on-disk cache, so the first run starts fast.
native: $(VENV)/.installed-base
	$(VENV)/bin/slimtrack warmup

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/run_all.py

# The environment only: runs (mlflow.db, mlruns/, outputs/) are the user's and stay.
clean:
	rm -rf $(VENV)

# Every run in this folder: the MLflow store and the runs' local files.
clean-runs:
	@echo "deleting mlflow.db, mlruns/ and outputs/ (every run's record and files in $(CURDIR))"
	rm -rf outputs mlruns mlflow.db
