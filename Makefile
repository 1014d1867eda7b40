# Two commands on a fresh machine with Python 3.11: `make run` and `make test`
# (`make test-fast` runs the unit tests only).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export FLWR_HOME := $(CURDIR)/.flwr
export RAY_DEDUP_LOGS := 0

.PHONY: run test test-fast lint benchmark clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on disk, never a multi-GB CUDA build
	$(PY) -m pip install --quiet --no-compile torch==2.13.0
	$(PY) -m pip install --quiet --no-compile -e '.[dev,text]'
	# the bytecode pip would compile one file at a time (about 45 s), on every core; a few
	# files only a newer Python parses fail here as they do silently under pip
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m simulations.launch --preset beauty-dp-blend

# three pytest workers (pytest-xdist) on 2 cores: the end-to-end simulations also wait
# (round timeouts, Flower's polling), which a third worker fills; a worker that runs out of tests
# takes some of the other's (worksteal), so the suite does not end on one busy worker;
# --durations lists the slowest tests
test: $(STAMP)
	$(PY) -m pytest -n 3 --dist worksteal --durations=25

# unit tests only (no simulation or deployment), on both cores: the edit loop
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy common server client simulations benchmarks deploy

benchmark: $(STAMP)
	$(PY) benchmarks/centralized.py
	$(PY) benchmarks/federated.py
	$(PY) benchmarks/privacy.py

clean:
	rm -rf $(VENV) .flwr runs results
