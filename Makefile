# Offload: one Makefile for the whole workspace.
# `make run` starts every service locally; `make test` runs the whole suite.

SHELL := /bin/bash
PYTHON ?= python3
# uv from PATH, else the one `pip install uv` puts beside this Python.
UV ?= $(or $(shell command -v uv 2>/dev/null),$(PYTHON) -m uv)

.PHONY: install lint typecheck test browser docs unasync run demo compose-check bench clean clusters clusters-stop

install: ## create .venv from the lock file (installs uv with pip when missing)
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --locked --quiet

lint: install ## ruff, mypy, and the generated blocking client up to date
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(UV) run --locked mypy contracts/src services/*/src client/src deploy
	$(UV) run --locked python client/unasync.py --check

unasync: install ## write the blocking client (client.py) from the asyncio one (async_client.py)
	$(UV) run --locked python client/unasync.py

test: lint browser ## lint, then the whole suite against the real RabbitMQ and Redis
	$(UV) run --locked pytest

# The dashboard's browser test drives Debian's Chromium (Playwright's own browser
# download cannot work here). Installed only when missing, and only as root.
browser: ## install Debian's chromium for the browser test when it is missing
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium (for tests/e2e/test_dashboard_browser.py)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq chromium >/dev/null 2>&1 || \
			{ apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; \
	else \
		echo "Chromium is missing and this is not root: run 'apt-get install -y chromium' as root," \
			"or the dashboard browser test fails"; \
	fi

docs: install ## write every service's AsyncAPI document to docs/asyncapi/ (JSON)
	$(UV) run --locked python -m offload_runtime.asyncapi --out docs/asyncapi

# `make run`: processes per worker service, e.g. `make run VIDEO=4 IMAGE=2` (0 = none).
AI ?= 1
RESEARCH ?= 1
VIDEO ?= 1
IMAGE ?= 1

# `make run` defaults (DESIGN §8); set any of them in the environment to override.
run: export OFFLOAD_API_KEYS ?= dev-key=dev
run: export OFFLOAD_ADMIN_KEYS ?= dev-admin-key
run: export OFFLOAD_WEBHOOK_ALLOW_PRIVATE ?= true
run: export OFFLOAD_STORAGE_DIR ?= $(CURDIR)/var/storage
run: export OFFLOAD_LOG_FORMAT ?= console
run: export OFFLOAD_SHUTDOWN_GRACE_S ?= 10

run: install ## start every service locally (needs RabbitMQ and Redis); Ctrl-C stops them
	@$(UV) run --locked --no-sync python deploy/run.py \
		--scale ai=$(AI) --scale research=$(RESEARCH) --scale video=$(VIDEO) --scale image=$(IMAGE)

# Local clusters without Docker, for `make run` against them (README, "Running against a
# RabbitMQ cluster"): prints the OFFLOAD_* URLs to export.
clusters: install ## start a local RabbitMQ cluster (3 nodes) and Redis Cluster (3+3)
	@$(UV) run --locked --no-sync python -m tests.support.clusters start

clusters-stop: ## stop the clusters `make clusters` started
	@$(UV) run --locked --no-sync python -m tests.support.clusters stop

# `make demo`: against a running system (`make run` in another terminal).
demo: export OFFLOAD_API_KEY ?= dev-key
demo: install ## one job of each type, progressing side by side
	@$(UV) run --locked --no-sync offload demo

compose-check: ## validate docker-compose.yml with docker-compose, when it is installed
	@command -v docker-compose >/dev/null 2>&1 || { echo "docker-compose is not installed (apt-get install -y docker-compose); the test suite validates the file against the Compose schema"; exit 1; }
	docker-compose -f docker-compose.yml config -q && echo "docker-compose.yml: valid"

bench: install ## every benchmark (~15 min): a table of figures vs targets; JSON in bench/results/
	$(UV) run --locked python -m bench.all

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache var
