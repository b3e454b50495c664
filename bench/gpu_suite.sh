#!/usr/bin/env bash
# The model's GPU checks and benchmarks in one prepared run (for a lent GPU machine, ~8 min):
#   bash bench/gpu_suite.sh            # writes JSON + logs under ${OUT:-out/gpu}
# Uses `python3` (the GPU image's torch); no install step: the model code needs torch, numpy,
# and for the qwen parts transformers + tokenizers (present in the GPU image).
# Every step is wrapped in `timeout` so one hang cannot eat the lease.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
log="$OUT/suite.log"
step() {  # step SECONDS NAME CMD... : run, log, never abort the suite
  local t=$1 name=$2; shift 2
  echo "=== $name ($(date +%T))" | tee -a "$log"
  timeout --kill-after=10 "$t" "$@" >>"$log" 2>&1; local rc=$?
  echo "=== $name rc=$rc" | tee -a "$log"
}
jstep() {  # like step, stdout to $OUT/NAME.json
  local t=$1 name=$2; shift 2
  echo "=== $name ($(date +%T))" | tee -a "$log"
  timeout --kill-after=10 "$t" "$@" >"$OUT/$name.json" 2>>"$log"; local rc=$?
  echo "=== $name rc=$rc" | tee -a "$log"
}
step 30 env sh -c "nvidia-smi -L; $PY -c 'import torch,sys; print(sys.version); print(torch.__version__, torch.cuda.get_device_name(0))'"
step 180 gpu-tests "$PY" -m pytest -q -p no:cacheprovider tests/gpu/test_model_gpu.py tests/unit/test_model_conformance.py tests/unit/test_model_runner.py
jstep 120 action_head_graph "$PY" bench/action_head.py --device cuda --presets tiny,seed-size --iters 300 --max-seconds 40 --json
jstep 120 action_head_eager "$PY" bench/action_head.py --device cuda --presets seed-size --iters 200 --no-graph --max-seconds 30 --json
jstep 150 action_head_vl_load "$PY" bench/action_head.py --device cuda --presets seed-size --iters 300 --max-seconds 30 --vl-load --json
jstep 60 vl_compact "$PY" bench/vl.py --device cuda --iters 50 --json
jstep 90 vl_tiny_qwen "$PY" bench/vl.py --device cuda --backbone tiny-qwen --modes batched,sequential,streams,reference --iters 20 --json
echo "done: $(ls "$OUT")" | tee -a "$log"
