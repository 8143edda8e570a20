#!/usr/bin/env bash
# The mSAM and RW-SAM papers' claims along whole axes, on scikit-learn's digits with the small CNN
# (results/digits/README.md says what each axis tests and what it showed):
#   Figure 1's axis   m in {1, 2, 4, 8, 16, 32} and vanilla, 5 seeds            -> OUT/m_axis
#   rho against m     rho in {0.02, 0.05, 0.2} for m in {1, 8, 32}, 3 seeds     -> OUT/m_axis
#   RW-SAM            lambda in {0, 0.5, ..., 64} x both norm_scale, 3 seeds,    -> OUT/rwsam
#                     the finite-difference norms and (lambda 1 to 16) the exact ones; the estimate's
#                     error and the weights' effective sample size (scripts/rwsam_norms.py)
#   Appendix B        mSAM -> vanilla and vanilla -> mSAM at 20/50/80%, 3 seeds -> OUT/switching
#   Beyond lambda_max the top-k, density, sharpness on batches of n and landscape of the m axis's
#                     vanilla, SAM and mSAM runs at rho = 0.05                  -> OUT/measures
# The sweeps are conf/table/digits_*.yaml (settings: conf/experiment/digits_axes.yaml), run with
# the same msam-train, msam-sharpness and msam-report a user runs. Finished runs and measured
# sharpness are not computed again, so a rerun only redraws the reports.
#
#   scripts/reproduce_digits.sh [--smoke] [RUNS [OUT]]     (default runs/digits results/digits)
#
# --smoke: one seed, two epochs, a subset of each axis and a cheap sharpness (make test runs it, so
# the command cannot rot; its numbers mean nothing). Its default folders are runs/digits_smoke and
# runs/digits_smoke/report, never the real ones.
set -euo pipefail

SMOKE=0 FLAG="" RUNS=runs/digits OUT=results/digits
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1 FLAG=" --smoke" RUNS=runs/digits_smoke OUT=runs/digits_smoke/report; shift; fi
RUNS=${1:-$RUNS}
OUT=${2:-$OUT}
BIN=${MSAM_BIN:-$(dirname "$0")/../.venv/bin}
START=$(date +%s)
COMMIT=$(git -C "$(dirname "$0")" describe --always --dirty 2>/dev/null || echo unknown)  # the code that ran
mkdir -p "$RUNS" "$OUT"
count_runs() { { grep -rl --include=summary.json '"status": "finished"' "$RUNS" || true; } | wc -l; }
RUNS_BEFORE=$(count_runs)

train() {  # train <runs subfolder> <table> [overrides...]
  local folder=$1 table=$2
  shift 2
  "$BIN/msam-train" -m "table=$table" "paths.runs=$RUNS/$folder" log_every_steps=0 "$@"
}

if [[ $SMOKE == 1 ]]; then
  # One seed, two epochs, one point off each axis; the references only where the reports need
  # them (every job of every table is composed and checked in tests/test_experiments.py).
  S=(epochs=2 seed=0)
  NORM_BATCHES=1
  train m_axis digits_reference "${S[@]}"
  train m_axis digits_m "${S[@]}" method.m=32
  train m_axis digits_rho "${S[@]}" method.m=32 method.rho=0.2
  # method=rwsam on the command line too: Hydra first composes the command line alone, where the
  # default method (msam) has no lambda
  train rwsam digits_rwsam "${S[@]}" method=rwsam method.lambda=2
  # one epoch: the exact norms cost the batch's size in backward passes per step (about 1 s here)
  train rwsam digits_rwsam_exact "${S[@]}" epochs=1 method=rwsam method.lambda=4 method.norm_scale=relative
  train switching digits_switch_to_vanilla "${S[@]}" switch.fraction=0.5
  train switching digits_switch_to_msam "${S[@]}" switch.fraction=0.5
  SHARPNESS=(max_iter=4 trace_probes=2 max_samples=256 keep_unconverged=true)
  MEASURES=(topk.k=2 max_iter=4 density.probes=1 density.lanczos_steps=4 "sharpness.batch_sizes=[4,full]"
            sharpness.max_batches=2 sharpness.ascent_steps=2 sharpness.average_draws=1 landscape.points=3
            landscape.points_2d=2 max_samples=256 keep_unconverged=true)
else
  NORM_BATCHES=4
  train m_axis digits_reference
  train m_axis digits_m
  train m_axis digits_rho_sam
  train m_axis digits_rho
  train rwsam digits_reference seed=0,1,2
  train rwsam digits_rwsam
  train rwsam digits_rwsam_exact
  train switching digits_reference seed=0,1,2 method=vanilla,msam
  train switching digits_switch_to_vanilla
  train switching digits_switch_to_msam
  # Lanczos stops once the true relative residual is under tol (9 to 12 steps on the demo's runs;
  # max_iter only bounds it); 10 probes put the trace's standard error near 10%, well under its spread
  # between methods.
  SHARPNESS=(max_iter=30 tol=1e-3 trace_probes=10)
  # One Lanczos probe of 30 steps resolves this 24k-parameter spectrum's outliers and bulk; fixed
  # n (not each run's own micro-batch) so that the m axis compares the same quantity; the
  # eigenvector slice stays where the quadratic model is meaningful (docs/sharpness.md)
  MEASURES=(topk.k=5 max_iter=40 tol=1e-3 density.probes=1 density.lanczos_steps=30
            "sharpness.batch_sizes=[4,16,128,full]" sharpness.max_batches=32 sharpness.ascent_steps=3
            landscape.points=15 landscape.points_2d=9 landscape.eigenvector_span=0.05)
fi

PHASE=$(date +%s)
"$BIN/msam-sharpness" "runs=$RUNS" "${SHARPNESS[@]}"
echo "reproduce_digits: lambda_max and trace in $(( $(date +%s) - PHASE )) s"
PHASE=$(date +%s)
REFERENCE="match=[*vanilla*,*rho0.05_*]"  # the m axis at rho = 0.05: vanilla, SAM and mSAM's m
"$BIN/msam-sharpness" "runs=$RUNS/m_axis" "$REFERENCE" "measures=[topk,density,sharpness,landscape]" "${MEASURES[@]}"
echo "reproduce_digits: the other measures in $(( $(date +%s) - PHASE )) s"

"$BIN/msam-report" "tables=[fig1,tab4,tab5,curves]" "runs=$RUNS/m_axis" "out=$OUT/m_axis"
"$BIN/msam-report" "tables=[temperature,tab4,curves]" "runs=$RUNS/rwsam" "out=$OUT/rwsam"
"$BIN/python" "$(dirname "$0")/rwsam_norms.py" "$RUNS/rwsam" --batches "$NORM_BATCHES" --out "$OUT/rwsam/norms"
"$BIN/msam-report" "tables=[figB1,tab4,curves]" "runs=$RUNS/switching" "out=$OUT/switching"
"$BIN/msam-report" "tables=[tab4,density,landscape]" "runs=$RUNS/m_axis" "$REFERENCE" "out=$OUT/measures"

SECONDS_TAKEN=$(( $(date +%s) - START ))
LOG="$OUT/wall_time.md"
if [[ ! -f "$LOG" ]]; then
  cat > "$LOG" <<EOF
# The calls that made these files

One row per call of scripts/reproduce_digits.sh. A call trains only the runs not yet finished and
measures only the runs without sharpness.json, so a rerun's time is mostly the reports.

| finished (UTC) | command | wall time | runs finished by this call | host, CPU cores | git commit |
| --- | --- | --- | --- | --- | --- |
EOF
fi
COMMAND="scripts/reproduce_digits.sh$FLAG $RUNS $OUT"
echo "| $(date -u +"%Y-%m-%d %H:%M") | \`$COMMAND\` | ${SECONDS_TAKEN} s ($(( SECONDS_TAKEN / 60 )) min $(( SECONDS_TAKEN % 60 )) s) | $(( $(count_runs) - RUNS_BEFORE )) | $(uname -n), $(nproc) | $COMMIT |" >> "$LOG"
echo "reproduce_digits: done in ${SECONDS_TAKEN} s; reports in $OUT (times in $LOG)"
