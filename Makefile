# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install protos bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m pc_node.kernels     # numba compiles its kernels once, here, not in the first job
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pc demo

test: $(STAMP)
	$(PY) -m pytest tests

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

bench: $(STAMP)
	$(PY) scripts/bench_psi.py --n 100000
	$(PY) scripts/bench_verify.py --households 10000
	$(PY) scripts/bench_compare.py --households 100000
	$(PY) scripts/bench_lookup.py --n 1000000 --queries 1000

clean:
	rm -rf $(VENV) build *.egg-info
