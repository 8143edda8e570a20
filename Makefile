# The two commands a user needs: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_RUNS ?= runs/demo

.PHONY: install demo digits test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

# Vanilla, SAM, ASAM, RW-SAM and mSAM on scikit-learn's digits, 3 seeds each; the sharpness of every run;
# then the Table 2-, 4- and 5-style reports (also written to $(DEMO_RUNS)/report/).
demo: install
	$(BIN)/msam-train -m method=vanilla,sam,asam,rwsam,msam seed=0,1,2 paths.runs=$(DEMO_RUNS) log_every_steps=0
	$(BIN)/msam-sharpness runs=$(DEMO_RUNS) max_iter=20 tol=1e-3 trace_probes=20
	$(BIN)/msam-report tables=[tab2,tab4,tab5,curves] runs=$(DEMO_RUNS) out=$(DEMO_RUNS)/report

# The papers' claims along whole axes on digits (m, rho x m, RW-SAM's lambda, switching), 5 or 3 seeds:
# about 50 minutes on 2 CPU cores the first time (plus about 75 for RW-SAM with exact per-sample
# norms, 18 runs of 4 minutes), seconds when rerun; what they showed is in
# results/digits/README.md. Runs go to runs/digits, the reports to results/digits.
digits: install
	scripts/reproduce_digits.sh runs/digits results/digits

test: install
	$(BIN)/python -m pytest -q

# Step-time ratios of vanilla, SAM and the mSAM implementations (slow on a CPU; see conf/bench.yaml).
bench: install
	$(BIN)/msam-bench

clean:
	rm -rf $(VENV) runs
