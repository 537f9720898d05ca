# The two commands of the README: `make train` (the main job) and `make test` (`make test-oldest`: the
# same checks that depend on torch/triton on the oldest supported versions).
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
ARCH ?= sk_densenet
TRAIN_ARGS ?=

# The oldest stack pyproject.toml declares (the GPU machine's): Python 3.12 where pyenv or PATH has
# it (else python3), torch 2.11.0, torchvision 0.26.0, triton 3.6.0; NumPy and the rest as pip
# resolves them today. Only the tests that depend on those versions run there.
# Kept per user, outside the checkout: every clone on a machine (CI's fresh ones too) reuses the
# installed stack (~3 GB of torch 2.11's CUDA wheels), and only the project itself is reinstalled.
OLDEST_VENV ?= $(HOME)/.cache/fastcifar/venv-oldest
OLDEST_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12 2>/dev/null) python3)
OLDEST_PINS := torch==2.11.0 torchvision==0.26.0 triton==3.6.0
OLDEST_TESTS := $(sort $(wildcard tests/test_kernels_*.py)) tests/test_models.py tests/test_models_compile.py tests/test_augment_compiled.py

.PHONY: setup train test test-oldest lint clean-venv

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)

setup: $(VENV)/.installed

## Prepare CIFAR-100 (download + verify + betons) and train sk_densenet with the study's recipe.
train: $(VENV)/.installed
	$(PY) -m fastcifar.data prepare --dataset cifar100 --root $(DATA)
	$(PY) -m fastcifar.train --arch $(ARCH) --data_root $(DATA) $(TRAIN_ARGS)

## Format and lint checks (ruff, configured in pyproject.toml); `make test` runs them first.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .

## Lint, then the whole test suite (CPU; Triton kernels through TRITON_INTERPRET=1).
test: lint
	$(PY) -m pytest -n 2 --dist loadgroup -q tests

## The kernel, model and compile tests on the oldest supported stack, in its own venv ($(OLDEST_VENV)).
test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -m pytest -n 2 --dist loadgroup -q $(OLDEST_TESTS)

$(OLDEST_VENV)/.installed: pyproject.toml scripts/setup.sh
	SETUP_PYTHON="$(OLDEST_PYTHON)" SETUP_EXTRAS=dev SETUP_PINS="$(OLDEST_PINS)" bash scripts/setup.sh $(OLDEST_VENV)

clean-venv:
	rm -rf $(VENV) $(OLDEST_VENV)
