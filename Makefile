# The README's two commands. Both are idempotent: they create .venv when missing, install
# torch==2.13.0 first (the CPU wheel; any other spec pulls a multi-GB CUDA build), then the
# package, make sure Fashion-MNIST is present, and run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST_DEB := /usr/share/datasets/fashion-mnist
FMNIST_CACHE := $(or $(VITSCOPE_CACHE),$(HOME)/.cache/vitscope)/fashion-mnist
DEMO_OUT ?= runs/demo

.PHONY: demo test setup dev data browser bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

dev: $(VENV)/.dev

# Fashion-MNIST: Debian's dataset-fashion-mnist when apt is usable, else the loader's download.
data: $(VENV)/.installed
	@if [ -f $(FMNIST_DEB)/train-images-idx3-ubyte.gz ] || [ -f $(FMNIST_CACHE)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)); \
	else \
		$(BIN)/vitscope fetch fashion-mnist; \
	fi

# Headless Chromium for the report's browser test (Debian's chromium package).
browser:
	@if [ -x /usr/bin/chromium ]; then \
		echo "chromium present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)); \
	else \
		echo "no /usr/bin/chromium and no apt: the browser test will be skipped"; \
	fi

demo: data
	$(BIN)/vitscope reproduce --preset cpu-mini --out $(DEMO_OUT)

test: dev data browser
	VITSCOPE_TEST_ARTIFACTS=$(CURDIR)/runs/test-artifacts $(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/train_throughput.py

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
