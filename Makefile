# irmx: `make run` runs the main job (the IRM regression study), `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test test-slow bench lint clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[test,data,uci,bayesopt]"
	touch $(TEST_STAMP)

run: $(STAMP)
	$(PY) launch/irm.py --config=configs/irm/regression.py:study --workdir=runs/irm-regression

test: $(TEST_STAMP)
	$(PY) -m pytest -n 2 -v tests

test-slow: $(TEST_STAMP)
	$(PY) -m pytest -n 2 -v --runslow tests

bench: $(TEST_STAMP)
	$(PY) benchmarks/irm_sweep.py
	$(PY) benchmarks/irm_paper.py
	$(PY) benchmarks/jacobian_norms.py
	$(PY) benchmarks/learner_groups.py

lint: $(TEST_STAMP)
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check irmx launch configs tests benchmarks scripts

clean:
	rm -rf runs
