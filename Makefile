# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fitsketch-installed

.PHONY: demo test test-all bench bench-smoke install-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of PyTorch first, spelled exactly so, so no multi-GB CUDA build is pulled.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fitsketch demo

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -n 2

test-all: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,text]'
	TRITON_INTERPRET=1 $(PY) -m pytest -q -n 2 -m ''

bench: $(STAMP)
	$(PY) -m bench all --quick

# CI's smoke run of every benchmark suite (--quick, results into a temp folder, timings not asserted)
bench-smoke: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m bench all --quick --out "$$(mktemp -d)/results"

# CI: `pip install .` of a copy of the checkout into a throwaway virtualenv, then the installed
# `fitsketch` run from outside the tree (runtime dependencies borrowed from $(VENV); .ci/install_check.sh)
install-check: $(STAMP)
	PY=$(PY) bash .ci/install_check.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
