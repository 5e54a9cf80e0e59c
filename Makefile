# s3viz: two commands on a fresh machine.
#   make demo   set up .venv, run the main analysis on the embedded data, write a report
#   make test   set up .venv, run every test and every notebook
#   make test-fast  the unit tests without the slow and browser ones (a couple of minutes)
#   make lab    JupyterLab on notebooks/
#   make lock   re-resolve requirements/lock.txt (then run `make test`)
#   make test-gpu  on a CUDA machine: CUDA tests, GPU benchmarks, nccl vs gloo (skips without CUDA)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.s3viz-installed
LOCK   := requirements/lock.txt
PINS   := requirements/pins.txt
EXTRAS := lab,dev,hf
LOCK_VENV := build/lock-venv
REPORT ?= build/report
NB_TIMEOUT ?= 300
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-unit test-notebooks test-gpu lab bench bench-peers lock clean

setup: $(STAMP)

# Install the tested set: every version comes from the lock (torch with its CUDA
# libraries is ~3 GB to download, ~6 GB installed); reinstall only when pyproject.toml
# or the lock changed, then check that the venv really holds what the lock says.
# --no-cache-dir: pip's cache would keep a second copy of every wheel (~3 GB) beside
# the venv, and a CI run once ran out of disk during this install.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@avail=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); \
	  if [ "$$avail" -lt 7 ]; then \
	    echo "note: $$avail GB free here; a fresh install needs about 7 GB (torch with CUDA)"; fi
	$(PY) -m pip install --quiet --no-cache-dir --upgrade -c $(LOCK) pip
	$(PY) -m pip install --quiet --no-cache-dir -c $(LOCK) -e '.[$(EXTRAS)]'
	$(PY) requirements/lock.py check $(LOCK)
	@touch $(STAMP)

# A fresh resolution in a throw-away venv, under the few constraints in $(PINS).
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -c $(PINS) -e '.[$(EXTRAS)]'
	$(LOCK_VENV)/bin/python requirements/lock.py write $(LOCK)
	rm -rf $(LOCK_VENV)
	@echo "Now run 'make test' (it reinstalls .venv from the new lock) before committing $(LOCK)."

# The demo and the tests run offline on the shipped tiny model: S3VIZ_OFFLINE=1 turns an
# accidental download into an immediate error (tests/test_hub.py serves its own on 127.0.0.1)
demo: $(STAMP)
	S3VIZ_OFFLINE=1 $(PY) -m s3viz.demo --out $(REPORT)

test: $(STAMP)
	S3VIZ_OFFLINE=1 S3VIZ_LOCKED=1 $(PY) -m pytest tests notebooks --nbmake --nbmake-timeout=$(NB_TIMEOUT) $(PYTEST_ARGS)

test-fast: $(STAMP)
	S3VIZ_OFFLINE=1 S3VIZ_LOCKED=1 $(PY) -m pytest tests -m "not slow and not browser" $(PYTEST_ARGS)

test-unit: $(STAMP)
	S3VIZ_OFFLINE=1 S3VIZ_LOCKED=1 $(PY) -m pytest tests $(PYTEST_ARGS)

test-notebooks: $(STAMP)
	S3VIZ_OFFLINE=1 S3VIZ_LOCKED=1 $(PY) -m pytest notebooks --nbmake --nbmake-timeout=$(NB_TIMEOUT) $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(PY) benchmarks/gpu_check.py

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

bench: $(STAMP)
	$(PY) -m pip install --quiet -c $(LOCK) faiss-cpu==1.15.1
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b --quick || exit 1; done

clean:
	rm -rf build .pytest_cache

# The peers benchmark needs faiss-cpu beside the lock (benchmark only, never imported
# by s3viz) and makes a Python >= 3.12 venv for fastabx once (build/peers-venv312).
bench-peers: $(STAMP)
	$(PY) -m pip install --quiet -c $(LOCK) faiss-cpu==1.15.1
	$(PY) benchmarks/bench_peers.py
