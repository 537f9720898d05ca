# The two commands of the README: `make train` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
ARCH ?= sk_densenet
TRAIN_ARGS ?=

.PHONY: setup train test lint clean-venv

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

clean-venv:
	rm -rf $(VENV)
