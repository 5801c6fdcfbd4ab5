#!/usr/bin/env bash
# GPU check for birnn-export, on a CUDA machine, in under 8 minutes:
#   1. report what can run here (torch CUDA, ORT CUDA / TensorRT EP, native TensorRT);
#   2. run the GPU- and TensorRT-marked tests (pytest -m "gpu or tensorrt");
#   3. export a sample model, check it statically for both GPU targets;
#   4. a short benchmark: torch CUDA eager and every other engine available here.
#
# Usage: scripts/gpu_check.sh [MODEL.pt]      (default: sample_models/bilstm_2layer.pt)
# Env:   OUT=dir (results; default ./gpu_check_out), BUDGET_S (default 470),
#        ALLOW_CPU=1 (dry run of the steps on a machine without CUDA)
# Exit:  0 all steps passed, 1 a step failed, 2 no CUDA device.
set -uo pipefail

cd "$(dirname "$0")/.."
MODEL=${1:-sample_models/bilstm_2layer.pt}
OUT=${OUT:-gpu_check_out}
BUDGET_S=${BUDGET_S:-470}
mkdir -p "$OUT"
export NVIDIA_TF32_OVERRIDE=${NVIDIA_TF32_OVERRIDE:-0}  # strict fp32: no TF32 in cuDNN/TensorRT
START=$(date +%s)
status=0

left() { echo $((BUDGET_S - ($(date +%s) - START))); }
step() { echo; echo "=== $* ($(left) s left)"; }
run_step() {  # run_step SECONDS CMD... : time-boxed, never beyond the overall budget
    local limit=$1; shift
    local remaining; remaining=$(left)
    if (( remaining < 10 )); then echo "skipped: out of time"; status=1; return 1; fi
    (( limit > remaining )) && limit=$remaining
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    if (( rc == 124 || rc == 137 )); then echo "TIMED OUT after ${limit}s: $*"; fi
    return $rc
}

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python - <<'EOF' | tee "$OUT/availability.txt"
import torch
from birnn_export.runners import ENGINES, unavailable_reason
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
for engine in ENGINES:
    print(f"{engine:9s} {unavailable_reason(engine) or 'available'}")
EOF
if [[ -z "${ALLOW_CPU:-}" ]] \
    && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to torch: nothing to check here"
    exit 2
fi

step "GPU and TensorRT tests"
run_step 240 python -m pytest -m "gpu or tensorrt" -q -rs --junitxml="$OUT/gpu_tests.xml" tests \
    || status=1

step "export $MODEL"
ONNX="$OUT/model.onnx"
run_step 90 birnn-export "$MODEL" -o "$ONNX" || status=1

if [[ -f "$ONNX" ]]; then
    step "static checks"
    for target in tensorrt ort-cuda; do
        run_step 30 birnn-export check "$ONNX" --target "$target" --json "$OUT/check-$target.json" \
            || status=1
    done

    step "benchmark"
    # torch eager on CUDA plus every other engine that can run here.
    ENGINE_LIST=$(python - <<'EOF'
from birnn_export.runners import ENGINES, unavailable_reason
print(",".join(e for e in ENGINES if unavailable_reason(e) is None))
EOF
)
    echo "engines: $ENGINE_LIST"
    DEVICE=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
    run_step 150 birnn-export bench "$ONNX" --model "$MODEL" --engines "$ENGINE_LIST" \
        --device "$DEVICE" --batch 1,8,32 --seq 64,256 --iters 20 --json "$OUT/bench.json" \
        --csv "$OUT/bench.csv" || status=1
fi

step "done: exit $status; results in $OUT"
exit $status
