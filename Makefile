# Every target installs what it needs into .venv first, so each works from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench install clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(BIN)/activate

install: $(BIN)/activate

demo: install
	$(BIN)/jaxcheck demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -n 2 --doctest-modules jaxcheck tests

bench: install
	$(BIN)/python benchmarks/bench_check_grad.py

clean:
	rm -rf $(VENV) build *.egg-info
