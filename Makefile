# Offload: one Makefile for the whole workspace.
# `make run` starts every service locally; `make test` runs the whole suite.

SHELL := /bin/bash
PYTHON ?= python3
# uv from PATH, else the one `pip install uv` puts beside this Python.
UV ?= $(or $(shell command -v uv 2>/dev/null),$(PYTHON) -m uv)

.PHONY: install lint typecheck test run bench clean

install: ## create .venv from the lock file (installs uv with pip when missing)
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --locked --quiet

lint: install ## ruff and mypy
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(UV) run --locked mypy contracts/src services/*/src

test: lint ## lint, then the whole suite against the real RabbitMQ and Redis
	$(UV) run --locked pytest

bench: install ## benchmarks (figures, not pass/fail)
	$(UV) run --locked python -m bench.runner_throughput

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache var
