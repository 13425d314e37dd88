# Every target creates .venv when it is missing; torch goes first so the CPU wheel is used.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: venv test lint demo bench clean

$(BIN)/.installed: pyproject.toml requirements/nnunet.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps -r requirements/nnunet.txt
	touch $@

venv: $(BIN)/.installed

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: venv lint
	$(BIN)/pytest -q -p no:cacheprovider

demo: venv
	$(BIN)/python scripts/demo.py

clean:
	rm -rf demo-output benchmarks/out .pytest_cache .ruff_cache
