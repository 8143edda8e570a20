# The two commands a user needs: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_RUNS ?= runs/demo

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

# Vanilla, SAM and mSAM on scikit-learn's digits, 3 seeds each, then the paper-style table.
demo: install
	$(BIN)/msam-train -m method=vanilla,sam,msam seed=0,1,2 paths.runs=$(DEMO_RUNS) log_every_steps=0
	$(BIN)/msam-report $(DEMO_RUNS)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
