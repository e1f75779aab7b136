# Every target sets up .venv if missing, so a fresh clone needs nothing but Python 3.10+.
# `make demo` installs only rnnkit's core dependencies; `make test` adds the dev extra.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CORE := $(VENV)/.installed-core
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean kernels

$(CORE): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $(CORE)

$(STAMP): $(CORE)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(CORE)
	$(VENV)/bin/rnnkit demo

lint: $(STAMP)
	$(PY) -m ruff check rnnkit tests benchmarks examples

# rnnkit's C++ kernels, built here rather than inside the first recurrence that needs them
# (minutes, once per CPU capability and source version, cached in ~/.cache/rnnkit/extensions;
# a second when cached). The demo runs torch's fused LSTM, so only the test set-up builds them.
kernels: $(STAMP)
	$(PY) -m rnnkit.engine.compiled build

test: $(STAMP) lint kernels
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/rnnkit bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# issue 13: run every reproduction example (hours on 2 cores) and rebuild docs/RESULTS.md;
# `$(PY) examples/reproduce.py --render-only` rebuilds the page alone (owner: diagnostics)
.PHONY: reproduce
reproduce: $(STAMP)
	nice -n 10 $(PY) examples/reproduce.py
