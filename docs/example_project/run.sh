#!/usr/bin/env bash
# This project end to end with msam's four tools, from an installed msam (a wheel, `pip install
# msam`, or msam's own `make install`; put its bin folder on PATH): train vanilla, SAM and mSAM with
# 2 seeds each (SEEDS=0,1,2 for three), measure their sharpness, write the reports and time one
# step of each method.
# About a minute on a 2-core CPU. RUNS=<folder> puts everything elsewhere.
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # so that _target_: my_project.... imports
RUNS=${RUNS:-runs}
SEEDS=${SEEDS:-0,1}

msam-train --config-dir conf -m experiment=shapes method=vanilla,sam,msam seed="$SEEDS" paths.runs="$RUNS" log_every_steps=0
msam-sharpness runs="$RUNS" max_iter=30 tol=1e-3 trace_probes=20
msam-report tables=[tab2,tab4,tab5] runs="$RUNS" out="$RUNS/report"
msam-bench --config-dir conf models=[tiny_convnet] image_size=12 channels=1 num_classes=4 batch_sizes=[64] ms=[8] \
  impls=[loop,vmap] baselines=[vanilla,sam] repeats=5 out="$RUNS/bench" name=tiny_convnet
