# Two commands for a newcomer: `make demo` and `make test` (see README.md).
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

# One gitignored folder holds the Dagster instance and nomic's state (worktrees, demo copies, history).
export DAGSTER_HOME := $(CURDIR)/.dagster_home
# Lets `dagster job execute -j nomic_cycle` find the definitions without -m.
export DAGSTER_CLI_JOB_EXECUTE_MODULE_NAME := nomic_dagster.definitions

.PHONY: install demo test test-fast lint format bench dev clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	ln -sf ../dagster.yaml $(DAGSTER_HOME)/dagster.yaml

## Run one cycle of nomic_cycle on the bundled demo repository and show what it committed.
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster job execute -j nomic_cycle
	$(BIN)/nomic-report

## The whole test suite (PostgreSQL tests skip when no server runs, unless NOMIC_REQUIRE_SERVICES=1).
## CI (.ci/run) runs this one.
test: install
	$(BIN)/pytest

# The unit layer: the tests not marked slow (whole cycles, child processes, Dagster runs) or
# postgres, outside the end-to-end folders and files: orchestration/ (Dagster runs, the daemon,
# `dagster dev`), cli/ (the console scripts in subprocesses), and the state machine's and the
# approval flow's tests (cycles in child processes and Dagster runs, most of them).
FAST_TESTS := -m "not slow and not postgres" \
	--ignore=nomic_dagster_tests/orchestration --ignore=nomic_dagster_tests/cli \
	--ignore=nomic_dagster_tests/drivers/test_state_machine.py \
	--ignore=nomic_dagster_tests/drivers/test_approval.py

## For development: the unit layer in a few minutes. `make test` stays the whole suite.
test-fast: install
	$(BIN)/pytest $(FAST_TESTS)

## ruff, and the layers contract of pyproject.toml ([tool.importlinter]: each folder imports only
## from the folders below it; Dagster only in orchestration/ and definitions.py).
lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports --no-logo

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: install
	$(BIN)/python benchmarks/cycle.py
	$(BIN)/python benchmarks/debate.py

## The UI and the daemon (sensors, schedules, queued runs): http://127.0.0.1:3000
dev: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf $(DAGSTER_HOME) .tmp_dagster_home_*
