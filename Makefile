# Telemetry pipeline: local development entry points. See README.md "Running locally".
#
#   make run      install what is missing, start NATS, OpenSearch and the three services (profile dev), leave them running
#   make stop     stop what `make run` started
#   make status   what runs, pids, ports, readiness; fails when a process is stopped or not ready
#   make test     the whole suite against real servers (profile test, other ports than dev)
#   make lint     ruff + mypy
#   make gen      regenerate gen/ from protos/ (the only way gen/ changes)
#   make lock     re-resolve the Python dependencies into requirements.lock (after editing pyproject.toml)
#   make proto-check  buf lint + buf breaking + gen/ is up to date
#   make bench    the end-to-end benchmark (bench/README.md); e.g. BENCH_ARGS="--rounds 1 --skip-query"
#
# PROFILE=test selects the test profile for run/stop/status (e.g. `make stop PROFILE=test`).
# PORT_OFFSET=N adds N to every port of the profile (a second checkout beside the first).

PYTHON ?= python3.11
PROFILE ?= dev
PYTEST_ARGS ?=
BENCH_ARGS ?=

VENV := .local/venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed-from-pyproject
# scripts/local.py is stdlib-only: stop/status work before the venv exists (fresh clone).
LOCAL_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
LOCAL := $(LOCAL_PY) scripts/local.py

.DEFAULT_GOAL := help
.PHONY: help venv lock install run stop status test lint gen proto-check bench

help:
	@sed -n 's/^#   //p' Makefile

venv: $(VENV_STAMP)

# Reinstall only when pyproject.toml or the lock changed since the last successful install; every
# distribution comes at the version requirements.lock pins, those it does not list (dropped by a
# pull, or installed by hand) are uninstalled first, and the check fails on any other difference.
$(VENV_STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) scripts/lock.py prune
	$(PY) -m pip install --quiet --constraint requirements.lock --upgrade pip
	$(PY) -m pip install --quiet --constraint requirements.lock -e '.[dev]'
	$(PY) scripts/lock.py check
	touch $@

# Re-resolve pyproject.toml's dependencies (and what they need) and rewrite requirements.lock.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) scripts/lock.py write

install: venv
	$(PY) scripts/local.py install

run: install
	$(PY) scripts/local.py up --profile $(PROFILE)

stop:
	$(LOCAL) down --profile $(PROFILE)

status:
	$(LOCAL) status --profile $(PROFILE)

# Starts what the test profile lacks, exports NATS_URL/OPENSEARCH_URL for it, runs pytest, then
# stops only what it started; the exit code is pytest's (5, "no tests collected", fails too).
test: install
	$(PY) scripts/local.py exec --profile test --only nats,opensearch -- $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m mypy --strict scripts/local.py scripts/lock.py

# gen/ is generated from protos/ only, by this target; proto-check fails when it is stale.
gen: venv
	PYTHON=$(PY) scripts/gen_protos.sh gen

# buf lint, buf breaking against every earlier state of protos/ (PROTO_BASE=<ref>: one), fresh gen/.
proto-check: venv
	PYTHON=$(PY) scripts/proto_check.sh

# NATS and the three services are the bench's own; OpenSearch is the profile's, started when not
# running and stopped again afterwards. A table on stdout, JSON in .local/bench/.
bench: install
	$(PY) scripts/local.py exec --profile $(PROFILE) --only opensearch -- $(PY) bench/pipeline/run.py $(BENCH_ARGS)
