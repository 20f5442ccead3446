# Two commands: `make demo` (set up, train the default model on shapes, sample, judge) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch where there is no NVIDIA GPU (small, and on this machine's disk); the
# regular (CUDA) build where there is one.
TORCH := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo "torch>=2.2"; else echo "torch==2.13.0"; fi)

.PHONY: demo test setup clean bench

$(BIN)/dreamlet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/dreamlet

setup: $(BIN)/dreamlet

demo: setup
	$(BIN)/dreamlet demo

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/time_to_accuracy.py

clean:
	rm -rf $(VENV) runs
