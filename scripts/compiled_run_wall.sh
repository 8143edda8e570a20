#!/usr/bin/env bash
# What compile.step buys a whole run, compiling included: the demo's mSAM (digits, small CNN,
# B = 64, m = 8, vmap) trained for EPOCHS epochs eager, then compiled with an empty inductor
# cache, then compiled again with that cache warm (a sweep's second job), then with
# compile.step=auto. One run at a time; the wall time of each msam-train process and what its
# summary.json recorded go to OUT (markdown).
#
#   scripts/compiled_run_wall.sh [EPOCHS] [OUT]      # defaults: 60, results/bench/compiled_run_wall_cpu_2core.md
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-60}
OUT=${2:-results/bench/compiled_run_wall_cpu_2core.md}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
BIN=.venv/bin

run() {  # name, overrides...: trains, then appends one table row
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  "$BIN/msam-train" dataset=digits model=small_cnn method=msam method.m=8 method.impl=vmap epochs="$EPOCHS" \
    seed=0 log_every_steps=0 paths.runs="$WORK/runs/$name" "$@" >"$WORK/$name.log" 2>&1
  end=$(date +%s.%N)
  "$BIN/python" - "$WORK/runs/$name" "$name" "$start" "$end" "${*//$WORK/<tmp>}" >>"$WORK/rows.md" <<'PY'
import json, pathlib, sys
root, name, start, end, overrides = sys.argv[1:]
summary = json.loads(next(pathlib.Path(root).rglob("summary.json")).read_text())
compiling = summary.get("compile_seconds", 0.0)
epochs = summary["epochs_completed"]
print(f"| {name} | `{overrides}` | {float(end) - float(start):.1f} | {summary['seconds_per_epoch'] * epochs:.1f} | "
      f"{compiling:.1f} | {summary['derived'].get('method.impl')} | {summary['test_acc']:.2f} |")
PY
}

run eager compile.step=false
run compiled_cold compile.step=true compile.cache_dir="$WORK/inductor"
run compiled_warm compile.step=true compile.cache_dir="$WORK/inductor"
run auto compile.step=auto compile.cache_dir="$WORK/inductor_auto" method.impl=auto

{
  echo "# The demo's mSAM run, eager against compiled (compile.step), compiling included"
  echo
  echo "\`scripts/compiled_run_wall.sh $EPOCHS\` at commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d);"
  echo "$("$BIN/python" -c 'import platform, torch; print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads")')."
  echo "digits, small CNN, B = 64, m = 8, $EPOCHS epochs, seed 0. wall: the msam-train process (start,"
  echo "data, evaluation and checkpoints included); train: the epochs' training seconds (compiling kept"
  echo "out); compile: summary.json's compile_seconds (the steps' and impl=auto's tuning)."
  echo "compiled_warm reuses compiled_cold's inductor cache, as a sweep's later jobs do."
  echo
  echo "| run | overrides | wall (s) | train (s) | compile (s) | impl | test acc (%) |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  cat "$WORK/rows.md"
} | tee "$OUT"
