# Each target sets up its own virtualenv, so a fresh clone needs only Python.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,dask]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: lint unit

unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check persevere tests bench examples
	$(VENV)/bin/ruff format --check persevere tests bench examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) bench/overhead.py
	$(PY) bench/concurrency.py
	$(PY) bench/workers.py
	$(PY) bench/scheduler.py
	$(PY) bench/automations.py

clean:
	rm -rf $(VENV) build *.egg-info
