#!/usr/bin/env bash
# The model's GPU checks and benchmarks, prepared for a lent GPU machine (one command there may
# run 10 minutes at most, so the suite comes in two parts of about 5 minutes each):
#   bash bench/gpu_suite.sh 1     # GPU tests; action tick: graph vs seed-style (tiny, seed-size), eager
#   bash bench/gpu_suite.sh 2     # VL: compact, tiny qwen, random Qwen2.5-VL-3B modes; tick next to a
#                                 # VL load (plain, high-priority stream, CUDA MPS)
#   bash bench/gpu_suite.sh 3     # optional: torch.compile of the 3B VL forward (default, reduce-overhead)
#   bash bench/gpu_suite.sh all   # all three (a machine without the 10-minute limit)
# Writes JSON (one file per step) and suite.log under ${OUT:-out/gpu}.
# Uses `python3` (the GPU image's torch, transformers, tokenizers); nothing is installed.
# The shared conformance fixtures do not travel with the working tree: copy them into an ignored
# folder that the device call carries, e.g. here
#   mkdir -p .fixtures && cp ../shared/fixtures/*.pt .fixtures/ && echo /.fixtures/ >> .git/info/exclude
# and run with carry [".fixtures"]: the suite then points SHM_VLA_FIXTURES at it (20 MB).
# Every step runs under `timeout`, so a hang costs at most that step.
set -u
cd "$(dirname "$0")/.."
PART="${1:-all}"
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
[ -d .fixtures ] && export SHM_VLA_FIXTURES="$PWD/.fixtures"
log="$OUT/suite$PART.log"
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
AH="$PY bench/action_head.py --device cuda --json"
step 30 env sh -c "nvidia-smi -L; $PY -c 'import torch,sys; print(sys.version); print(torch.__version__, torch.cuda.get_device_name(0))'"

if [ "$PART" = 1 ] || [ "$PART" = all ]; then
  step 120 gpu-tests "$PY" -m pytest -q -p no:cacheprovider tests/gpu/test_model_gpu.py tests/unit/test_model_conformance.py
  jstep 75 ah_graph $AH --presets tiny,seed-size --iters 500 --max-seconds 25
  jstep 50 ah_graph_rk4 $AH --presets seed-size --solver rk4 --iters 300 --max-seconds 20
  jstep 120 ah_graph_compiled $AH --presets seed-size --iters 500 --max-seconds 20 --compile
  jstep 50 ah_eager $AH --presets seed-size --iters 300 --no-graph --max-seconds 20
  jstep 50 ah_graph_reg $AH --presets seed-size --type regression --iters 300 --max-seconds 20
fi

if [ "$PART" = 2 ] || [ "$PART" = all ]; then
  jstep 40 vl_compact "$PY" bench/vl.py --device cuda --iters 50 --json
  jstep 60 vl_tiny_qwen "$PY" bench/vl.py --device cuda --backbone tiny-qwen --modes batched,sequential,streams,reference --iters 20 --json
  jstep 150 vl_qwen3b "$PY" bench/vl.py --device cuda --backbone random-qwen-3b --modes batched,sequential,streams,reference --iters 30 --max-seconds 20 --json
  LOAD="--presets seed-size --iters 500 --max-seconds 20 --vl-load --vl-load-backbone random-qwen-3b"
  jstep 80 ah_vl_load $AH $LOAD
  jstep 80 ah_vl_load_prio $AH $LOAD --stream-priority -1
  if command -v nvidia-cuda-mps-control >/dev/null; then   # the same under CUDA MPS (started and stopped here)
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    step 10 mps-start nvidia-cuda-mps-control -d
    jstep 80 ah_vl_load_mps $AH $LOAD --stream-priority -1
    step 10 mps-stop sh -c "echo quit | nvidia-cuda-mps-control"
  fi
fi
if [ "$PART" = 3 ] || [ "$PART" = all ]; then
  jstep 540 vl_qwen3b_compiled "$PY" bench/vl.py --device cuda --backbone random-qwen-3b --modes batched,batched-compiled,batched-compiled-graphs --iters 30 --max-seconds 20 --json
fi
echo "done: $(ls "$OUT")" | tee -a "$log"
