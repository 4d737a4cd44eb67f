# The README's two commands. Both are idempotent: they create .venv when missing, install
# torch==2.13.0 first (the CPU wheel; any other spec pulls a multi-GB CUDA build), then the
# package, make sure Fashion-MNIST is present, and run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST_DEB := /usr/share/datasets/fashion-mnist
FMNIST_CACHE := $(or $(VITSCOPE_CACHE),$(HOME)/.cache/vitscope)/fashion-mnist
DEMO_OUT ?= runs/demo
# timm and torchvision need torchvision, which imports only beside its own torch build: they
# live in a second venv (x86_64: torch 2.14.1 + torchvision 0.29.1, a CUDA build that pip takes
# from this machine's local wheels; aarch64: the CPU pair 2.9.1 + 0.24.1)
TV_VENV ?= .venv-tv
TV_BIN := $(TV_VENV)/bin
TV_TORCH := $(if $(filter aarch64,$(shell uname -m)),torch==2.9.1 torchvision==0.24.1,torch==2.14.1 torchvision==0.29.1)

.PHONY: demo test setup dev tv data browser bench chaos lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(TV_VENV)/.installed: pyproject.toml
	[ -x $(TV_BIN)/python ] || $(PYTHON) -m venv $(TV_VENV)
	$(TV_BIN)/pip install -q $(TV_TORCH)
	$(TV_BIN)/pip install -q -e '.[timm,dev]'
	touch $@

setup: $(VENV)/.installed

tv: $(TV_VENV)/.installed

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

# The suite in .venv (Hugging Face adapters included), then the timm/torchvision adapter tests
# (marked tv) in .venv-tv. VITSCOPE_REQUIRE_EXTRAS: the extras each environment must have; a
# test needing one that is missing fails, never skips.
test: dev tv data browser
	VITSCOPE_TEST_ARTIFACTS=$(CURDIR)/runs/test-artifacts VITSCOPE_REQUIRE_EXTRAS=transformers \
		$(BIN)/python -m pytest -m "not tv and not chaos"
	VITSCOPE_REQUIRE_EXTRAS=timm,torchvision $(TV_BIN)/python -m pytest -m tv \
		-p no:cacheprovider

# The long chaos test: a smoke study SIGKILLed three times inside each of its steps (minutes).
chaos: dev data
	$(BIN)/python -m pytest -m chaos -s tests/test_chaos.py

# Every CPU benchmark, one after another, and one table of ratios (benchmarks/bench_all.py).
# PyHessian 0.1 is the reference of one of them; --no-deps keeps torch as it is.
bench: data
	$(BIN)/python -c 'import pyhessian' 2>/dev/null || $(BIN)/pip install -q --no-deps pyhessian==0.1
	$(BIN)/python benchmarks/bench_all.py

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(TV_VENV) runs
