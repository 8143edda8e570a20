#!/bin/bash
# Everything CUDA-specific, in one command on one GPU (no network; at most GPU_CHECK_BUDGET_S,
# default 450 s, plus the install if there is none):
#   bash scripts/gpu_check.sh
# 1. the GPU tests (pytest -m gpu tests/gpu) but torch.compile's: directions against the CPU
#    float64 reference, bf16/fp16 directions, channels_last, sharpness, short runs, torchrun
#    sharing the GPU;
# 2. the torch.compile (inductor) test on its own (its first compilation is slow);
# 3. one short bf16 training per method on synthetic CIFAR-shaped data (ResNet-18, 2 epochs);
# 4. msam-bench: ResNet-18, WRN-16-8 and the small ViT at B = 128 and 512, m in 1, 4, 16, 32,
#    loop, vmap, vmap_ascent and the floor; 5. compile.step with CUDA graphs (mode=reduce-overhead):
#    SAM, mSAM loop and vmap compiled beside eager, ResNet-18, the small ViT and WRN-16-8 at
#    B = 128, m = 32 (compiled mSAM / compiled SAM, compile seconds). The bench writes its rows after every (model, B, m);
# 6. the Hessian-vector product's cost against a forward+backward (scripts/bench_hvp.py), written
#    to results/bench/hvp_<device>.json and .md.
# Each phase stops at its own limit or when the budget runs out, whichever is first; whatever
# finished goes into results/bench/gpu_<device>.json and .md (written on exit, also when
# interrupted). Commit them.
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
BUDGET=${GPU_CHECK_BUDGET_S:-450}
START=$(date +%s)

report() {
  "$PYTHON" scripts/gpu_report.py --device "$DEVICE" --work "$WORK" --out "$OUT" --seconds $(( $(date +%s) - START ))
  echo "wrote $OUT/gpu_$DEVICE.json and .md"
}
trap report EXIT

# limit PHASE_DEFAULT: the phase's seconds, cut to what is left of the budget (15 s kept for the report)
limit() {
  local left=$(( BUDGET - ($(date +%s) - START) - 15 ))
  [ "$left" -lt "$1" ] && echo $(( left > 5 ? left : 5 )) || echo "$1"
}

echo "== 1/6 GPU tests (limit $(limit 150)s)"
timeout -k 10 "$(limit 150)" "$PYTHON" -m pytest -m gpu tests/gpu -k "not inductor" -q -p no:cacheprovider \
  --junitxml="$WORK/tests.xml" 2>&1 | tee "$WORK/tests.log" | tail -n 30

echo "== 2/6 torch.compile test (limit $(limit 60)s)"
timeout -k 10 "$(limit 60)" "$PYTHON" -m pytest -m gpu tests/gpu -k "inductor" -q -p no:cacheprovider \
  --junitxml="$WORK/tests_compile.xml" 2>&1 | tee "$WORK/tests_compile.log" | tail -n 15

echo "== 3/6 one short bf16 training per method (limit $(limit 70)s)"
TRAIN=(dataset=synthetic dataset.train_size=4096 dataset.test_size=512 model=resnet18 batch_size=128 epochs=2
       precision=bf16 device=cuda log_every_steps=0 "paths.runs=$WORK/runs")
timeout -k 10 "$(limit 70)" bash -c '"$0" -m msam.train -m method=vanilla,sam,asam,rwsam "${@}" &&
  "$0" -m msam.train -m method=msam method.m=16 method.impl=loop,vmap,vmap_ascent "${@}"' "$PYTHON" "${TRAIN[@]}" 2>&1 | tail -n 18

echo "== 4/6 msam-bench, loop, vmap, vmap_ascent and the floor (limit $(limit 150)s)"
timeout -k 10 "$(limit 150)" "$PYTHON" -m msam.bench "name=gpu_bench_eager" "out=$WORK" \
  models=[resnet18,wrn16_8,vit_small] batch_sizes=[128,512] ms=[1,4,16,32] impls=[loop,vmap,vmap_ascent,floor] repeats=5 warmup=2 \
  device=cuda 2>&1 | grep -v "^|" | tail -n 40

echo "== 5/6 msam-bench, the compiled step with CUDA graphs (limit $(limit 120)s)"
timeout -k 10 "$(limit 120)" "$PYTHON" -m msam.bench "name=gpu_bench_compiled_step" "out=$WORK" \
  models=[resnet18,vit_small,wrn16_8] batch_sizes=[128] ms=[1,32] impls=[loop,vmap] baselines=[vanilla,sam] \
  compile_step=true compile.mode=reduce-overhead repeats=5 warmup=2 device=cuda 2>&1 | grep -v "^|" | tail -n 30

echo "== 6/6 Hessian-vector product cost (limit $(limit 40)s)"
timeout -k 10 "$(limit 40)" "$PYTHON" scripts/bench_hvp.py --device cuda --name "hvp_$DEVICE" 2>&1 | tail -n 12
