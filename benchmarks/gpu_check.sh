#!/usr/bin/env bash
# The prepared GPU run: on a GPU machine with torch, triton, nvcc and the test tools
# installed and no network, in under 9 minutes: build the extension for sm_90 with every
# core, run the GPU tests of the cuda and triton backends (all of them: no -x, four files
# in parallel so that Triton's compiles overlap), compute-sanitizer memcheck and racecheck
# on small cases, quick reports in float32 and bfloat16, training steps/s, and the full
# report in the time left (stopped, it keeps its finished cases). summary.md is rewritten
# after every step, so a run cut short still says how far it got.
#
#   bash benchmarks/gpu_check.sh OUT             from the repository root
#   bash benchmarks/gpu_check.sh --dry-run OUT   the same plumbing on a CPU, small (CI runs it)
#
# Commit OUT as benchmarks/results/<gpu>-<date>/ (versions.txt, command.txt, summary.md,
# every step's log, the reports' tables, raw numbers and plots).
set -uo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:?usage: bash benchmarks/gpu_check.sh [--dry-run] OUT}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 DIM_FUSED_CUDA=1 DIM_FUSED_QUIET=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_SECONDS:-540}
START=$SECONDS
echo "bash benchmarks/gpu_check.sh $([ $DRY = 1 ] && echo '--dry-run ')$OUT  ($(date -u +%FT%TZ))" >"$OUT/command.txt"

rows=()
summary() {
  {
    echo "# GPU check $([ $DRY = 1 ] && echo '(dry run, CPU)')"
    echo
    echo "\`$(head -n 1 "$OUT/command.txt")\`"
    echo
    echo "| step | rc | seconds | last line of its log |"
    echo "|---|---:|---:|---|"
    printf '%s\n' "${rows[@]}"
  } >"$OUT/summary.md"
}
left() { echo $((BUDGET - (SECONDS - START))); }
# step NAME SECONDS COMMAND...: run it with a time limit (cut to what the budget has left),
# log to OUT/NAME.log, add its row to the summary.
step() {
  local name=$1 limit=$2
  shift 2
  local remaining
  remaining=$(left)
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  if [ "$limit" -lt 10 ]; then
    rows+=("| $name | skipped | 0 | no time left in the ${BUDGET} s budget |")
    summary
    return 124
  fi
  local begin=$SECONDS
  timeout --signal=TERM --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local last
  last=$(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-110 | tr '|' '/')
  rows+=("| $name | $rc | $((SECONDS - begin)) | $last |")
  summary
  return $rc
}
# The tools that may not be on PATH: look in the CUDA toolkit's folders too.
find_tool() {
  command -v "$1" 2>/dev/null && return
  ls -d /usr/local/cuda*/bin/"$1" /usr/local/cuda*/"$1"/"$1" /opt/nvidia/*/"$1" /opt/nvidia/*/*/"$1" 2>/dev/null | head -n 1
}

if [ $DRY = 1 ]; then
  DEVICE=cpu
  BACKENDS="cpu"
  echo "dry run on $(uname -m), no GPU" >"$OUT/nvidia-smi.txt"
else
  DEVICE=cuda
  BACKENDS="cuda triton"
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
fi
"$PY" - >"$OUT/versions.txt" 2>&1 <<'EOF'
import platform, torch, triton
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda, "| triton", triton.__version__)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
EOF
SANITIZER=$(find_tool compute-sanitizer)
echo "compute-sanitizer: ${SANITIZER:-not found}; ncu: $(find_tool ncu || echo not found)" >>"$OUT/versions.txt"
rows+=("| environment | 0 | 0 | $(head -n 1 "$OUT/versions.txt" | tr '|' '/') |")
summary

if [ $DRY = 1 ]; then
  step build 60 "$PY" -c "import dim_fused; print('already built:', dim_fused.available_backends())"
else
  step build 240 "$PY" -m pip install --no-build-isolation --no-deps -e . || {
    echo "the build failed: see $OUT/build.log" >&2
    exit 1
  }
fi
step backends 60 "$PY" -c "import dim_fused; print('$DEVICE backends:', dim_fused.available_backends('$DEVICE'))"

# The tests of the fused backends on the device, four groups of files at a time.
tests() {
  local k="cuda or triton" files=(tests/ops/mi_bound tests/ops/dot_product_mi
    tests/ops/concat_conv_mi "tests/ops/test_safety.py tests/ops/test_validation.py tests/ops/test_nn.py")
  if [ "$DRY" = 1 ]; then
    k="(double_backward or opcheck) and cpu-cpu"
    files=(tests/ops/test_safety.py tests/ops/mi_bound)
  fi
  local pids=() i=0
  for group in "${files[@]}"; do
    # shellcheck disable=SC2086  # a group may name several files
    "$PY" -m pytest $group -q -rfE -p no:cacheprovider -k "$k" --junitxml="$OUT/tests-$i.xml" \
      >"$OUT/tests-$i.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
  done
  local rc=0
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  tail -n 2 "$OUT"/tests-*.log
  return $rc
}
export -f tests
export PY OUT DRY
step tests 240 bash -c tests

smoke=("$PY" -m benchmarks.gpu_smoke --device "$DEVICE" --backends $BACKENDS)
if [ -n "$SANITIZER" ] && [ $DRY = 0 ]; then
  step memcheck 60 "$SANITIZER" --tool memcheck --error-exitcode 1 "${smoke[@]}"
  step racecheck 60 "$SANITIZER" --tool racecheck --error-exitcode 1 "${smoke[@]}" --dtypes float32
else
  step smoke 60 "${smoke[@]}"
fi

if [ $DRY = 1 ]; then
  step quick 120 "$PY" -m benchmarks.report --tiny --device cpu --out "$OUT/report-quick"
  step train-speed 120 "$PY" -m benchmarks.train_speed --device cpu --critics concat --backends reference cpu \
    --batch-size 8 --warmup 1 --min-time 0.2 --out "$OUT/train-speed"
else
  step quick 90 "$PY" -m benchmarks.report --quick --out "$OUT/report-quick"
  step quick-bf16 75 "$PY" -m benchmarks.report --quick --dtype bfloat16 --out "$OUT/report-quick-bf16"
  # Whole DIM training steps/s on CIFAR-sized synthetic data: reference vs cuda vs triton, both critics.
  step train-speed 90 "$PY" -m benchmarks.train_speed --min-time 1 --out "$OUT/train-speed"
  # The full report in the time left; stopped early, it keeps the finished cases.
  step report "$(left)" "$PY" -m benchmarks.report --out "$OUT/report"
fi

for table in "$OUT/report-quick/summary.md" "$OUT/report-quick-bf16/summary.md" "$OUT/report/summary.md" \
  "$OUT/train-speed/table.md"; do
  [ -f "$table" ] && { echo; echo "## ${table#"$OUT"/}"; echo; grep '^|' "$table"; } >>"$OUT/summary.md"
done
cat "$OUT/summary.md"
