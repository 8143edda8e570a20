#!/bin/bash
# Everything CUDA-specific, in one command on one GPU (no network; about 8 minutes):
#   bash scripts/gpu_check.sh
# 1. the GPU tests (pytest -m gpu tests/gpu): directions vs the CPU float64 reference, bf16/fp16
#    directions, channels_last, inductor, sharpness, short runs, torchrun sharing the GPU;
# 2. one short bf16 training per method on synthetic CIFAR-shaped data (ResNet-18), timed;
# 3. msam-bench: ResNet-18, WRN-16-8 and the small ViT at B = 128 and 512, m in 1, 4, 16, 32,
#    loop, vmap and compile (the part that is cut short first if time runs out: rows are
#    written after each model).
# Writes results/bench/gpu_<device>.json and .md (commit them). Each phase has its own time
# limit (GPU_CHECK_*_S) so the whole stays within GPU_CHECK_BUDGET_S.
set -u
cd "$(dirname "$0")/.."
PYTHON=${MSAM_PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || make install >/dev/null
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 2
DEVICE=$("$PYTHON" -c "import re, torch; print(re.sub(r'[^A-Za-z0-9]+', '_', torch.cuda.get_device_name(0)).strip('_').lower())")
WORK=$(mktemp -d)
OUT=results/bench
mkdir -p "$OUT"
TESTS_S=${GPU_CHECK_TESTS_S:-180}
TRAIN_S=${GPU_CHECK_TRAIN_S:-90}
BENCH_S=${GPU_CHECK_BENCH_S:-190}
START=$(date +%s)

echo "== 1/3 GPU tests (limit ${TESTS_S}s)"
timeout "$TESTS_S" "$PYTHON" -m pytest -m gpu tests/gpu -q -p no:cacheprovider --junitxml="$WORK/tests.xml" \
  2>&1 | tee "$WORK/tests.log" | tail -n 30

echo "== 2/3 one short bf16 training per method (limit ${TRAIN_S}s)"
timeout "$TRAIN_S" "$PYTHON" -m msam.train -m method=vanilla,sam,asam,rwsam dataset=synthetic \
  dataset.train_size=4096 dataset.test_size=512 model=resnet18 batch_size=128 epochs=2 precision=bf16 \
  device=cuda log_every_steps=0 "paths.runs=$WORK/runs" 2>&1 | tail -n 12
timeout "$TRAIN_S" "$PYTHON" -m msam.train -m method=msam method.m=16 method.impl=loop,vmap dataset=synthetic \
  dataset.train_size=4096 dataset.test_size=512 model=resnet18 batch_size=128 epochs=2 precision=bf16 \
  device=cuda log_every_steps=0 "paths.runs=$WORK/runs" 2>&1 | tail -n 6

echo "== 3/3 msam-bench (limit ${BENCH_S}s)"
timeout "$BENCH_S" "$PYTHON" -m msam.bench "name=gpu_bench_$DEVICE" "out=$WORK" models=[resnet18,wrn16_8,vit_small] \
  batch_sizes=[128,512] ms=[1,4,16,32] impls=[loop,vmap,compile] repeats=5 warmup=2 device=cuda 2>&1 | tail -n 60

"$PYTHON" scripts/gpu_report.py --device "$DEVICE" --work "$WORK" --out "$OUT" --seconds $(( $(date +%s) - START ))
echo "wrote $OUT/gpu_$DEVICE.json and .md"
