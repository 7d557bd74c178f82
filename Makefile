# m2gate developer tasks. `make test` is what CI runs (.ci/run).
#
# The venv is (re)built only when pyproject.toml changes (stamp file), so
# repeated runs are fast; Mongrel2 and wrk come from Debian's packages.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LINT_PATHS := $(wildcard src tests benchmarks tools scripts examples)

# apt-get needs root; use sudo when we are not root and it exists.
SUDO := $(shell [ "$$(id -u)" -ne 0 ] && command -v sudo)
APT  := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: venv install sysdeps test-deps bench-deps test test-long lint format bench demo clean corpus docs

venv install: sysdeps $(STAMP)

sysdeps:
	@if ! command -v mongrel2 >/dev/null 2>&1 || ! command -v m2sh >/dev/null 2>&1; then \
		echo "mongrel2 missing: installing mongrel2-core"; \
		$(APT) update && $(APT) install -y mongrel2-core; \
	fi
	@if ! command -v logrotate >/dev/null 2>&1 && [ ! -x /usr/sbin/logrotate ]; then \
		echo "logrotate missing (docs/deploying.md's test runs it): installing it"; \
		$(APT) update && $(APT) install -y logrotate; \
	fi

bench-deps: sysdeps
	@if ! command -v wrk >/dev/null 2>&1; then \
		echo "wrk missing: installing it"; \
		$(APT) update && $(APT) install -y wrk; \
	fi

# tmux: tests/integration/test_top.py runs `m2gate top` in a real terminal;
# Chromium: the browser tests (the demo's stream, the chat page).
test-deps: sysdeps
	@if ! command -v tmux >/dev/null 2>&1; then \
		echo "tmux missing: installing it"; \
		$(APT) update && $(APT) install -y tmux; \
	fi
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "chromium missing (browser tests): installing it"; \
		$(APT) update && $(APT) install -y --no-install-recommends chromium; \
	fi

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "m2gate needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) --version 2>&1)"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format $(LINT_PATHS)

test: install bench-deps test-deps
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -m "not long"

# pytest exits 5 when nothing is marked long yet: that is not a failure.
test-long: install
	$(PY) -m pytest -q -m long || [ $$? -eq 5 ]

bench: install bench-deps
	@set -e; found=0; for f in benchmarks/*.py; do \
		[ -e "$$f" ] || continue; found=1; \
		echo "== $$f"; $(PY) "$$f"; \
	done; [ $$found = 1 ] || echo "no benchmarks/*.py yet"

# `m2gate dev`: a Mongrel2 (config and logs in .m2gate-dev/) and the example app,
# restarted when it changes; prints the URL, Ctrl-C stops both. PORT=8080 picks the port.
demo: install
	$(VENV)/bin/m2gate dev examples/hello.py:application --threads 4 $(if $(PORT),--port $(PORT))

# docs/settings.md is generated from src/m2gate/config/settings.py (a test checks it).
docs: install
	$(PY) -m m2gate.config.docs > docs/settings.md

# Re-capture tests/corpus from a real Mongrel2 (review the diff before committing).
corpus: install
	$(PY) tools/capture_corpus.py

clean:
	rm -rf demo-run .m2gate-dev .pytest_cache .mypy_cache .ruff_cache .hypothesis build
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
