# EVC: `make demo` runs the whole hierarchy, `make test` the whole suite, `make bench` the
# benchmarks. Each sets up what it needs (a .venv with the project, a mosquitto binary) and is
# quick when that is already done.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.evc-installed

.PHONY: demo test bench lint unit integration mosquitto setup clean fuzz

setup: $(INSTALLED) mosquitto

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "EVC needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

mosquitto:
	@brokers/install-mosquitto.sh

demo: setup
	$(BIN)/evc demo

test: setup lint
	$(BIN)/python -m pytest

unit: setup
	$(BIN)/python -m pytest tests/unit tests/docs

integration: setup
	$(BIN)/python -m pytest tests/integration

lint: $(INSTALLED)
	$(BIN)/ruff check evc tests samples
	$(BIN)/mypy

bench: setup
	$(BIN)/evc bench --output docs/BENCHMARKS.md

# The long fuzz run: a million generated inputs over every decoder and ingress (docs/FUZZING.md).
fuzz: $(INSTALLED)
	nice $(BIN)/python -m evc.fuzz --inputs 1000000 --seed 0

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
