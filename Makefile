# nclean: everything runs inside .venv, created on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEVSTAMP:= $(VENV)/.installed-dev
BENCHSTAMP:= $(VENV)/.installed-bench
# torch/torchvision pinned to the builds this machine carries on disk (see README)
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: setup setup-dev test demo bench bench-quick lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(DEVSTAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(BENCHSTAMP): $(DEVSTAMP)
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

## setup: create .venv and install nclean (idempotent; fast when done)
setup: $(STAMP)

setup-dev: $(DEVSTAMP)

## test: run the test suite (CPU, offline)
test: $(DEVSTAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest

## demo: generate a small noisy dataset, score it with a tiny local model, print the summary
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/nclean demo --out demo_out --cache-dir .cache/nclean

## bench: run every benchmark and rewrite benchmarks/RESULTS.md
bench: $(BENCHSTAMP)
	cd benchmarks && HF_HUB_OFFLINE=1 ../$(BIN)/python run_all.py

## bench-quick: reduced benchmarks (under 10 minutes)
bench-quick: $(BENCHSTAMP)
	cd benchmarks && HF_HUB_OFFLINE=1 ../$(BIN)/python run_all.py --quick

lint: $(DEVSTAMP)
	$(BIN)/ruff check cleaner pipelines tests benchmarks

clean:
	rm -rf demo_out benchmarks/_work .pytest_cache
