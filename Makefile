# make run   : set up .venv (once) and start SINF Studio on http://localhost:8501
# make test  : set up .venv (once) and run the test suite
# ../shared/{data,weights} are used automatically when present (offline CIFAR-100 and weights).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501
SHARED := $(abspath ../shared)
export SINF_DATA_DIR ?= $(if $(wildcard $(SHARED)/data/cifar-100-python/meta),$(SHARED)/data)
export SINF_WEIGHTS_DIR ?= $(if $(wildcard $(SHARED)/weights/*.pt),$(SHARED)/weights)

.PHONY: setup run test browser-deps clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	@touch $@

run: setup
	$(VENV)/bin/streamlit run app/streamlit_app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

# Debian's Chromium for the real-browser test (Playwright drives it; no browser download).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "browser tests need Debian's chromium: sudo apt-get install chromium (they are skipped without it)"; fi; }

test: setup browser-deps
	$(PY) -m pytest -q -rs

clean:
	rm -rf $(VENV) .pytest_cache
