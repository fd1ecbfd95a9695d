# Two-command setup. `make demo`: install into .venv and run the demo job on the
# embedded demo data. `make test`: install (with test extras and the PyTorch
# CPU wheel used by the conversion tests) and run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# PyTorch is only needed for checkpoint conversion and its tests; pinned so
# that pip takes the CPU build instead of a multi-GB CUDA one.
TORCH ?= torch==2.13.0
DEMO_CONFIG ?= configs/mala.py:demo
DEMO_WORKDIR ?= runs/demo
PYTEST_ARGS ?=
# The suite runs in this many pytest-xdist worker processes, one test file per
# worker at a time (module fixtures, such as the export tests' trained models,
# are built once); 0 runs it in this process.
TEST_WORKERS ?= 2

.PHONY: install install-dev demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -e ".[dev]" $(TORCH)
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(PY) -m maskjax.main --config=$(DEMO_CONFIG) --workdir=$(DEMO_WORKDIR)

test: $(VENV)/.installed-dev
	$(PY) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
