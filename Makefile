# Two commands on a fresh machine:  `make serve`  and  `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# LiteLLM Proxy, the peer bench/run.py --peers measures, in a venv of its own (its pins are not ours).
# 1.108.7: the newest whose [proxy] extra resolves from the package index this project uses (later ones pin
# litellm-proxy-extras / litellm-enterprise releases it does not have, or a litellm-proxy package).
PEERS := .venv-peers
LITELLM_VERSION := 1.108.7

.PHONY: install serve test bench bench-quick bench-peers

# torch first: 2.13.0 is the CPU build (an unpinned torch would pull gigabytes of CUDA wheels).
$(BIN)/emporion: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $@

# llama.cpp's llama-server, built once from the source inside the llama-cpp-python sdist.
$(BIN)/llama-server: | $(BIN)/emporion
	$(BIN)/emporion engine build

install: $(BIN)/emporion $(BIN)/llama-server

serve: install
	$(BIN)/emporion serve

test: install
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.metering

bench-quick: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench.run --quick
	$(BIN)/python -m bench.metering --quick

# The stamp names the version: changing LITELLM_VERSION reinstalls.
$(PEERS)/.litellm-$(LITELLM_VERSION):
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet 'litellm[proxy]==$(LITELLM_VERSION)'
	touch $@

bench-peers: install $(PEERS)/.litellm-$(LITELLM_VERSION)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench.run --quick --no-engine --peers
