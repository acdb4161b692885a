# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create .venv when missing. torch is installed first with the CPU pin used on our machines;
# GPU users install their own torch into .venv before running make (see README).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
DEMO_DIR ?= demo_output

.PHONY: demo test test-fast lint install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

# The fast loop: everything but the learning and multi-process tests.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

# ruff: pyflakes, import order, formatting (settings in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: install
	$(VENV)/bin/cryodomain demo -o $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) build src/*.egg-info
