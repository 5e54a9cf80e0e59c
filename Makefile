# s3viz: two commands on a fresh machine.
#   make demo   set up .venv, run the main analysis on the embedded data, write a report
#   make test   set up .venv, run every test and every notebook
#   make lab    JupyterLab on notebooks/

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.s3viz-installed
REPORT ?= build/report
NB_TIMEOUT ?= 300
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit test-notebooks lab bench clean

setup: $(STAMP)

# Reinstall only when pyproject.toml changed (torch is ~1.7 GB to download).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[lab,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m s3viz.demo --out $(REPORT)

test: $(STAMP)
	$(PY) -m pytest tests notebooks --nbmake --nbmake-timeout=$(NB_TIMEOUT) $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-notebooks: $(STAMP)
	$(PY) -m pytest notebooks --nbmake --nbmake-timeout=$(NB_TIMEOUT) $(PYTEST_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b --quick || exit 1; done

clean:
	rm -rf build .pytest_cache
