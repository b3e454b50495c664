#!/usr/bin/env bash
# The model's GPU checks and benchmarks, prepared for a lent GPU machine. A session gets about
# 15 minutes of device time in all (the machine's start included) and one command may run 10
# minutes, so the suite comes in parts ordered by what the issue's targets need first:
#
#   bash bench/gpu_suite.sh core    # ~7 min: GPU tests (replay of a CUDA session included); frames from
#                                   # the view rings to the GPU, staged vs direct (vl.frame_upload); seed-size
#                                   # tick (one CUDA graph, plain and torch.compile'd) vs the seed-style
#                                   # tick; what the per-stage times cost (stage_timing events / graphs /
#                                   # off, ticked in turn, with the split each gives); what seeding each
#                                   # tick's noise costs (replay); VL at Qwen2.5-VL-3B size (batched,
#                                   # batched with transformers' window attention, per-view preprocessing
#                                   # streams, streams, the seed's reference path); the tick
#                                   # while that VL model encodes in another process (normal and
#                                   # high-priority stream), then the same under CUDA MPS, with the
#                                   # VL process at normal and at below-normal MPS client priority
#   bash bench/gpu_suite.sh extra   # ~5 min: tiny preset, RK4, regression, eager tick; compact and
#                                   # tiny-Qwen VL; 3B VL one view at a time; MPS with the VL process
#                                   # limited to 70 % of the SMs
#   bash bench/gpu_suite.sh compile # ~9 min: torch.compile of the 3B VL forward (plain, reduce-overhead)
#   bash bench/gpu_suite.sh smoke   # the core steps on this CPU with tiny models: checks the script
#                                   # and the benchmarks' options, not the GPU (tests/unit runs it)
#
# Device call (the fixtures do not travel with the working tree; copy them once into an ignored
# folder and carry it):
#   mkdir -p .fixtures && cp ../shared/fixtures/*.pt .fixtures/ && echo /.fixtures/ >> .git/info/exclude
#   run: command "timeout 480 bash bench/gpu_suite.sh core", carry [".fixtures"], timeout_s 510
# (about 9 minutes of device time with the start; a rerun of one part fits with SUITE_BUDGET_S=200)
#
# Results: $OUT/gpu_suite.jsonl (one JSON line per step: step, rc, seconds, and the benchmark's
# JSON report or the last lines of its output) and $OUT/gpu_suite.log: two files, whatever the
# number of steps (the device returns at most 8). Every step runs under `timeout`; SUITE_BUDGET_S
# bounds the whole part: a step that no longer fits is recorded as skipped (rc -1), never killed
# half-way by the device's limit. Uses `python3` (the GPU image's torch and transformers);
# nothing is installed.
set -u
cd "$(dirname "$0")/.."
PART="${1:-core}"
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
RESULTS="$OUT/gpu_suite.jsonl" LOG="$OUT/gpu_suite.log"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
[ -d .fixtures ] && export SHM_VLA_FIXTURES="$PWD/.fixtures"

# What the steps run on. smoke: this CPU, tiny models, few iterations.
DEV=cuda BIG=random-qwen-3b PRESET=seed-size N=500 NV=30 SECS=20 VSECS=12 BUDGET=${SUITE_BUDGET_S:-450}
if [ "$PART" = smoke ]; then
  DEV=cpu BIG=tiny-qwen PRESET=tiny N=20 NV=3 SECS=5 VSECS=5 BUDGET=${SUITE_BUDGET_S:-240}
fi
START=$SECONDS

record() {  # record NAME RC SECONDS OUTPUT_FILE: one JSON line (the output if JSON, else its tail)
  "$PY" - "$@" >>"$RESULTS" <<'EOF'
import json, sys
name, rc, secs, path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
try:
    text = open(path, errors="replace").read()
except OSError:
    text = ""
try:
    result = json.loads(text)
except ValueError:
    result = {"tail": text.splitlines()[-25:]}
print(json.dumps({"step": name, "rc": rc, "seconds": round(secs, 1), "result": result}))
EOF
}

step() {  # step SECONDS NAME CMD...: run under timeout within the budget, log, record; never abort
  local t=$1 name=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 15 ]; then
    echo "=== $name skipped: ${left}s of the ${BUDGET}s budget left" | tee -a "$LOG"
    echo "{\"step\": \"$name\", \"rc\": -1, \"seconds\": 0, \"result\": {\"skipped\": \"budget\"}}" >>"$RESULTS"
    return
  fi
  [ "$t" -gt "$left" ] && t=$left
  echo "=== $name ($(date +%T), timeout ${t}s)" | tee -a "$LOG"
  local out="$OUT/.step.out" t0=$SECONDS rc
  timeout --kill-after=10 "$t" "$@" >"$out" 2>>"$LOG"; rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0))s" | tee -a "$LOG"
  cat "$out" >>"$LOG"
  record "$name" "$rc" "$((SECONDS - t0))" "$out"
  rm -f "$out"
}

MPS_ON=0
mps_start() {  # start a private MPS control daemon; MPS_ON=1 when it answers
  command -v nvidia-cuda-mps-control >/dev/null || { echo "=== no nvidia-cuda-mps-control: MPS steps skipped" | tee -a "$LOG"; return; }
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/shm-vla-mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/shm-vla-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  timeout 10 nvidia-cuda-mps-control -d >>"$LOG" 2>&1 && MPS_ON=1
  echo "=== mps-start: MPS_ON=$MPS_ON" | tee -a "$LOG"
  trap mps_stop EXIT
}
mps_stop() {
  [ "$MPS_ON" = 1 ] || return 0
  echo quit | timeout 10 nvidia-cuda-mps-control >>"$LOG" 2>&1
  MPS_ON=0
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  echo "=== mps-stop" | tee -a "$LOG"
}

AH="$PY bench/action_head.py --device $DEV --json"
VL="$PY bench/vl.py --device $DEV --json"
LOAD="--presets $PRESET --iters $N --max-seconds $SECS --vl-load --vl-load-backbone $BIG"

step 30 env "$PY" -c 'import json, sys, torch
d = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
try:
    import transformers; d["transformers"] = transformers.__version__
except ImportError:
    d["transformers"] = None
print(json.dumps(d))'

if [ "$PART" = core ] || [ "$PART" = smoke ]; then
  step 150 gpu-tests "$PY" -m pytest -q -p no:cacheprovider tests/gpu/test_model_gpu.py tests/gpu/test_stage_timing_gpu.py \
    tests/gpu/test_replay_gpu.py tests/gpu/test_shadow_gpu.py tests/gpu/test_frame_upload_gpu.py \
    tests/unit/test_model_conformance.py
  step 60 ah_graph $AH --presets $PRESET --iters $N --max-seconds $SECS
  step 60 ah_stage_timing $AH --presets $PRESET --iters $N --max-seconds $SECS --stream-priority -1 \
    --compare-stage-timing events,graphs,off
  step 45 ah_noise_seed $AH --presets $PRESET --iters $N --max-seconds $SECS --stream-priority -1 --compare-noise-seed
  step 40 frame_upload "$PY" bench/frame_upload.py --device $DEV --json --iters $N --max-seconds $SECS
  [ "$PART" = core ] && step 120 ah_graph_compiled $AH --presets $PRESET --iters $N --max-seconds $SECS --compile
  step 180 vl_big $VL --backbone $BIG --modes batched,batched-windows,preprocess-streams,streams,reference --iters $NV --max-seconds $VSECS
  step 90 ah_vl_load $AH $LOAD --stream-priority 0,-1
  if [ "$PART" = core ]; then
    mps_start
    if [ "$MPS_ON" = 1 ]; then
      step 90 ah_vl_load_mps $AH $LOAD --stream-priority 0,-1
      step 80 ah_vl_load_mps_vl_below_normal $AH $LOAD --stream-priority -1 --vl-load-env CUDA_MPS_CLIENT_PRIORITY=1
    fi
    mps_stop
  fi
fi

if [ "$PART" = extra ]; then
  step 50 ah_tiny $AH --presets tiny --iters 1000 --max-seconds 10
  step 50 ah_graph_rk4 $AH --presets seed-size --solver rk4 --iters 300 --max-seconds 15
  step 50 ah_graph_reg $AH --presets seed-size --type regression --iters 300 --max-seconds 15
  step 50 ah_eager $AH --presets seed-size --iters 300 --no-graph --max-seconds 15
  step 40 vl_compact $VL --iters 50
  step 40 frame_upload_encode "$PY" bench/frame_upload.py --device $DEV --json --iters 200 --max-seconds 15 --encode
  step 60 vl_tiny_qwen $VL --backbone tiny-qwen --modes batched,sequential,streams,reference --iters 20
  step 120 vl_big_sequential $VL --backbone $BIG --modes sequential --iters 10 --max-seconds 10
  mps_start
  if [ "$MPS_ON" = 1 ]; then
    step 80 ah_vl_load_mps_vl_70pct $AH $LOAD --stream-priority -1 --vl-load-env CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=70
  fi
  mps_stop
fi

if [ "$PART" = compile ]; then
  step 540 vl_big_compiled $VL --backbone $BIG --modes batched,batched-compiled,batched-compiled-graphs --iters 30 --max-seconds 20
fi
echo "done in $((SECONDS - START))s: $(wc -l <"$RESULTS") steps in $RESULTS" | tee -a "$LOG"
