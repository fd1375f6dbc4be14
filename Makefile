# MCP OPA gateway — the single entry point for dev, CI, demo and bench.
#   make test        full suite: rego fmt/check/test+coverage, then pytest
#   make help        list targets
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

OPA_VERSION ?= v1.22.2
TOOLS       := $(CURDIR)/.tools/bin
OPA         ?= $(TOOLS)/opa
PYTHON      ?= python3
VENV        := $(CURDIR)/.venv
RUN         := $(CURDIR)/.run
OPA_COVERAGE_THRESHOLD ?= 90
SOAK_SECONDS ?= 600

# Exported to every recipe (and thus to pytest, demo, bench).
export OPA_VERSION OPA TOOLS PYTHON OPA_COVERAGE_THRESHOLD
export OPA_BIN := $(OPA)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# The console's browser tests drive Debian's chromium; Playwright never downloads one.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

# DATABASE_URL: provided by the caller, else the last line printed by
# deploy/scripts/ensure-postgres.sh (cached by the `postgres` target in
# .run/database_url). Recipes needing it prefix their command with $(WITH_DB).
WITH_DB = DATABASE_URL="$$(cat $(RUN)/database_url)"
# pytest-xdist workers of `make test` (most tests wait on processes they start: two workers on
# two cores cut the suite's time by about a third). Each module runs on one worker (loadscope).
TEST_WORKERS ?= 2

.PHONY: help venv tools opa opa-embedded postgres chromium deploy-tools deploy-check test test-unit rego-check lint fmt demo bench bench-quick bench-replay bench-audit fuzz soak conformance clean

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## create .venv and pip install -e '.[dev]'

$(VENV)/.installed: pyproject.toml
	bash deploy/scripts/ensure-venv.sh

tools: opa opa-embedded ## install pinned tools into .tools/bin (and the embedded engine into .tools/lib)

opa: ## ensure the pinned OPA (OPA_VERSION) at OPA
	bash deploy/scripts/ensure-opa.sh

opa-embedded: ## build the embedded OPA engine (the pinned OPA's SDK, c-shared) at .tools/lib/libopa-embedded.so
	bash deploy/scripts/ensure-opa-embedded.sh

postgres: ## ensure a local PostgreSQL (or check DATABASE_URL) and cache its URL
	@mkdir -p $(RUN)
	bash deploy/scripts/ensure-postgres.sh | tee $(RUN)/database_url.out
	@tail -n1 $(RUN)/database_url.out > $(RUN)/database_url && rm -f $(RUN)/database_url.out
	@test -s $(RUN)/database_url

rego-check: opa ## opa fmt --fail, opa check --strict, opa test --coverage (>= threshold)
	bash deploy/scripts/rego-check.sh

fmt: opa venv ## opa fmt --write the policies; ruff format + fix the Python
	@dirs=$$(for d in policies gateway/policy/rego rego_tests; do [ -d $$d ] && echo $$d; done); \
	if [ -n "$$dirs" ]; then $(OPA) fmt --write $$dirs; else echo "fmt: no policy dirs"; fi
	$(VENV)/bin/ruff check --fix gateway tests deploy
	$(VENV)/bin/ruff format gateway tests deploy

lint: venv ## ruff (lint + format check), mypy --strict, import-linter layer contracts
	$(VENV)/bin/ruff check gateway tests deploy
	$(VENV)/bin/ruff format --check gateway tests deploy
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

deploy-tools: venv ## pinned deploy validators into .tools (helm, kubeconform + Kubernetes schemas, dockerfile-lint, compose-validate)
	bash deploy/scripts/ensure-deploy-tools.sh

deploy-check: deploy-tools ## helm lint, helm template | kubeconform, Dockerfile lint, compose validation (offline)
	bash deploy/scripts/deploy-check.sh

chromium: ## ensure Debian's chromium for the console's browser tests (apt-get install when missing)
	bash deploy/scripts/ensure-chromium.sh >/dev/null

test: venv opa opa-embedded postgres chromium deploy-tools ## full suite (lint, rego checks, pytest)
	$(MAKE) --no-print-directory lint
	bash deploy/scripts/rego-check.sh
	$(WITH_DB) $(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadscope

test-unit: venv opa opa-embedded ## pytest without db/integration tests
	$(VENV)/bin/pytest -q -m "not db and not integration"

demo: venv opa opa-embedded postgres ## run the end-to-end demo
	$(WITH_DB) $(VENV)/bin/python deploy/demo/run_demo.py

fuzz: venv opa postgres ## the fuzzers (schemathesis on the admin API, Hypothesis on JSON-RPC) with GATEWAY_FUZZ_EXAMPLES (default 500)
	GATEWAY_FUZZ_EXAMPLES=$${GATEWAY_FUZZ_EXAMPLES:-500} $(WITH_DB) $(VENV)/bin/pytest -q tests/fuzz

# BENCH_ARGS, e.g. --engines sidecar,embedded --servers uvicorn (see deploy/bench/bench.py --help).
bench: venv opa opa-embedded postgres ## governed vs direct MCP calls (both eras, raw + SDK clients) -> .run/bench/results.json, docs/performance.md
	$(WITH_DB) $(VENV)/bin/python deploy/bench/bench.py $(BENCH_ARGS)

bench-quick: venv opa postgres ## the same, a few seconds per case, one server and engine (what the test runs)
	$(WITH_DB) $(VENV)/bin/python deploy/bench/bench.py --quick $(BENCH_ARGS)

bench-replay: venv opa postgres ## replay 10,000 recorded decisions against a candidate policy (budget 30 s)
	$(WITH_DB) $(VENV)/bin/python deploy/bench/bench_replay.py

# Not part of `make test`: fills a throwaway database (gateway_audit_bench) with AUDIT_EVENTS events.
AUDIT_EVENTS ?= 10000000
bench-audit: venv postgres ## the reviewers' trail at AUDIT_EVENTS (10M) events: filter pages, stats, export -> docs/audit.md
	$(WITH_DB) $(VENV)/bin/python deploy/bench/audit_bench.py --events $(AUDIT_EVENTS) --write docs/audit.md

# `postgres` only ensures the server binaries are installed: the soak runs a cluster of its own.
soak: venv opa opa-embedded postgres ## deploy/reliability/soak.py: traffic + faults for SOAK_SECONDS (600) with SOAK_ENGINE (sidecar|embedded), audit accounting, memory/FD steadiness -> docs/reliability.md
	$(VENV)/bin/python deploy/reliability/soak.py --seconds $(SOAK_SECONDS) --engine $(or $(SOAK_ENGINE),sidecar)

# Node 22 + @modelcontextprotocol/conformance are pinned by deploy/conformance/package-lock.json
# and installed (npm ci, once) into .tools/conformance; the runner starts its own stack.
conformance: venv opa postgres ## MCP conformance suite, direct vs through the gateway -> docs/conformance.md
	bash deploy/conformance/ensure-tools.sh
	$(WITH_DB) $(VENV)/bin/python deploy/conformance/run.py

clean: ## remove run artefacts (.run/)
	rm -rf $(RUN)
