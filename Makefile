# nclean: everything runs inside .venv, created on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEVSTAMP:= $(VENV)/.installed-dev
BENCHSTAMP:= $(VENV)/.installed-bench
# webdataset 0.2.86 (open_clip_torch[training]'s pin) beside the venv's 1.x: tests run both lines
WDSLEGACY:= $(VENV)/wds-0.2.86
# torch/torchvision pinned to the builds this machine carries on disk (see README)
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: setup setup-dev test demo report-check bench bench-quick lint clean

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

$(WDSLEGACY)/.installed: | $(BIN)/python
	rm -rf $(WDSLEGACY) && $(BIN)/pip install -q --no-deps --target $(WDSLEGACY) webdataset==0.2.86
	touch $@

## test: run the test suite (CPU, offline)
test: $(DEVSTAMP) $(WDSLEGACY)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/pytest

## demo: generate a small noisy dataset, score it with a tiny local model, print the summary
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/nclean demo --out demo_out --cache-dir .cache/nclean

## report-check: run the demo, open its report in headless Chromium, fail on any image that did not load
report-check: demo
	$(BIN)/python -m cleaner.report.browser demo_out/report/index.html

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
