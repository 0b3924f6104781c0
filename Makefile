# Two commands for a fresh machine: `make demo` and `make test`.
# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test stress lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,postgres]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/treerpo demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 tests

# Concurrent processes and kill -9 on one store (tests/stress/run_stress.py; not part of `test`).
stress: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python tests/stress/run_stress.py --iterations 20

lint: $(STAMP)
	$(BIN)/ruff check treerpo tests migrations

clean:
	rm -rf $(VENV) .pytest_cache
