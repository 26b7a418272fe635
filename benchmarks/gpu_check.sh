#!/usr/bin/env bash
# The prepared GPU run, in two calls that fit the device budget (15 minutes in all, machine
# starts included), on a GPU machine with torch, Triton, nvcc and the test tools (pytest-xdist,
# pytest-timeout) and no network. From the repository root:
#
#   bash benchmarks/gpu_check.sh --call 1 OUT   at most ~5.5 minutes: what matters most, first
#   bash benchmarks/gpu_check.sh --call 2 OUT   at most ~3.5 minutes, on a fresh machine after a fix
#   bash benchmarks/gpu_check.sh --dry-run --call 1|2 OUT   the same plumbing on a CPU (the tests run both)
#
# Call 1: the build for sm_90 with every core; the GPU tests of the cuda and triton backends
# (pytest -n 8, a per-test timeout, autotuning off); the smoke run and compute-sanitizer
# memcheck on it (autotuning off); the headline timings of the three CIFAR settings in
# bfloat16 and float32 (IEEE), without the torch.compile peer; whole DIM training steps/s,
# each step replayed as a CUDA graph and eagerly; the targets those rows measure.
# Call 2: the build; the tests named in GPU_CHECK_RERUN (what failed in call 1 and was fixed);
# racecheck on one case per kernel; the CIFAR settings with every peer's step captured as a
# CUDA graph (bfloat16); the kernels each op runs per forward+backward on the GPU (what
# tests/benchmarks/test_launches.py counts on a CPU); the large and STL-10 concat settings;
# the torch.compile peer (bfloat16); TF32 at the CIFAR settings; the targets measured.
#
# OUT receives four files, rewritten after every step so that a run cut short still says how
# far it got: summary.md (environment, every step's status, the headline tables), log.txt
# (the end of every step's log), rows.json (every timed row of every report) and tests.xml
# (JUnit). Commit them as benchmarks/results/<gpu>-<date>/call-<N>/.
#
# A step that cannot run on the machine's runtime (compute-sanitizer refuses the GPU under
# gVisor: "Device not supported") is recorded as "unsupported", not as a failure.
# GPU_CHECK_SANITIZER names the compute-sanitizer to use (empty: none).
set -uo pipefail
DRY=0
CALL=
while [ $# -gt 1 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --call) CALL=$2; shift ;;
    *) break ;;
  esac
  shift
done
OUT=${1:?usage: bash benchmarks/gpu_check.sh [--dry-run] --call 1|2 OUT}
case "$CALL" in 1 | 2) ;; *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run] --call 1|2 OUT" >&2; exit 2 ;; esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# The checkout this script is in: every path below is relative to it.
cd "$(dirname "$0")/.." || exit 2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rm -f "$OUT/summary.md" "$OUT/log.txt" "$OUT/rows.json" "$OUT/tests.xml"
export PYTHONUNBUFFERED=1 DIM_FUSED_CUDA=1 DIM_FUSED_QUIET=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
PY=${PYTHON:-python3}
# The checkout's package, whether pip installed it editable or it was built in place.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ "$CALL" = 1 ]; then BUDGET=${GPU_CHECK_SECONDS:-315}; else BUDGET=${GPU_CHECK_SECONDS:-200}; fi
START=$SECONDS
COMMAND="bash benchmarks/gpu_check.sh $([ $DRY = 1 ] && echo '--dry-run ')--call $CALL OUT  ($(date -u +%FT%TZ), budget ${BUDGET} s)"

if [ $DRY = 1 ]; then
  DEVICE=cpu BACKENDS=cpu WORKERS=2
  echo "dry run on $(uname -m), no GPU" >"$WORK/nvidia-smi.txt"
else
  DEVICE=cuda BACKENDS="cuda triton" WORKERS=8
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$WORK/nvidia-smi.txt" 2>&1
fi
"$PY" - >"$WORK/versions.txt" 2>&1 <<'EOF'
import platform, torch, triton
print("python", platform.python_version(), "/ torch", torch.__version__, "/ cuda", torch.version.cuda, "/ triton", triton.__version__)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
EOF
# The kernel names the runtime: 4.4.0 is gVisor's (no compute-sanitizer there, KINDS.md).
echo "kernel $(uname -r)" >>"$WORK/versions.txt"
# The tools that may not be on PATH: look in the CUDA toolkit's folders too.
find_tool() {
  command -v "$1" 2>/dev/null && return
  ls -d /usr/local/cuda*/bin/"$1" /usr/local/cuda*/"$1"/"$1" /opt/nvidia/*/"$1" /opt/nvidia/*/*/"$1" 2>/dev/null | head -n 1
}
SANITIZER=${GPU_CHECK_SANITIZER-$([ $DRY = 1 ] || find_tool compute-sanitizer)}
echo "compute-sanitizer: ${SANITIZER:-not found}" >>"$WORK/versions.txt"

rows=()
FAILED=0
summary() {
  {
    echo "# GPU check, call $CALL$([ $DRY = 1 ] && echo ' (dry run, CPU)')"
    echo
    echo "\`$COMMAND\`"
    echo
    sed 's/^/    /' "$WORK/versions.txt" "$WORK/nvidia-smi.txt"
    echo
    echo "| step | rc | seconds | last line of its log |"
    echo "|---|---:|---:|---|"
    printf '%s\n' "${rows[@]}"
    for table in "$WORK"/targets.md "$WORK"/*/summary.md "$WORK"/train-speed/table.md "$WORK"/launches.md; do
      [ -f "$table" ] && { echo; echo "## ${table#"$WORK"/}"; echo; grep -v '^Command:' "$table"; }
    done
  } >"$OUT/summary.md"
  # Every report's rows, one JSON object keyed by step.
  "$PY" - "$WORK" "$OUT/rows.json" <<'EOF'
import json, pathlib, sys
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
runs = {path.parent.name: json.loads(path.read_text()) for path in sorted(work.glob("*/results.json"))}
out.write_text(json.dumps(runs, indent=1))
EOF
  [ -f "$WORK/tests.xml" ] && cp "$WORK/tests.xml" "$OUT/tests.xml"
  return 0
}
left() { echo $((BUDGET - (SECONDS - START))); }
# step NAME SECONDS COMMAND...: run it with a time limit (cut to what the budget has left),
# log into WORK/NAME.log (its end goes to OUT/log.txt), add its row to the summary.
step() {
  local name=$1 limit=$2
  shift 2
  local remaining
  remaining=$(left)
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  if [ "$limit" -lt 10 ]; then
    rows+=("| $name | skipped | 0 | no time left in the ${BUDGET} s budget |")
    FAILED=1
    summary
    return 124
  fi
  local begin=$SECONDS
  # Through bash, so that a step may be one of the functions below (exported).
  timeout --signal=TERM --kill-after=10 "$limit" bash -c '"$@"' step "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  local last shown=$rc
  last=$(grep -v '^\s*$' "$WORK/$name.log" | tail -n 1 | cut -c1-110 | tr '|' '/')
  if [ $rc = "$UNSUPPORTED" ]; then shown=unsupported; elif [ $rc != 0 ]; then FAILED=1; fi
  rows+=("| $name | $shown | $((SECONDS - begin)) | $last |")
  { echo "==== $name: rc $rc, $((SECONDS - begin)) s (limit $limit s); the last 300 lines ===="; tail -n 300 "$WORK/$name.log"; echo; } >>"$OUT/log.txt"
  summary
  return $rc
}
# The exit status of a step that this machine cannot run (not a failure of the project).
UNSUPPORTED=75
note() { rows+=("| $1 | - | 0 | $2 |"); summary; }

summary
if [ $DRY = 1 ]; then
  step build 60 "$PY" -c "import dim_fused; print('already built:', dim_fused.available_backends())"
else
  # pip may fail where the image's setuptools or site-packages does not allow an editable
  # install: the same extension is then built in place (PYTHONPATH above finds it).
  build_extension() {
    "$PY" -m pip install --no-build-isolation --no-deps -e . && return
    echo "pip could not install the package editable (above): building it in place instead"
    "$PY" setup.py build_ext --inplace
  }
  export -f build_extension
  step build 110 build_extension || {
    echo "the build failed: see $OUT/log.txt" >&2
    exit 1
  }
fi
step backends 30 "$PY" -c "import dim_fused; print('$DEVICE backends:', dim_fused.available_backends('$DEVICE'))"

# pytest over the fused backends' tests on the device, WORKERS in parallel, a timeout per test.
gpu_tests() {
  "$PY" -m pytest "$@" -n "$WORKERS" --timeout 90 -q -rfE -p no:cacheprovider --junitxml="$WORK/tests.xml"
}
smoke=("$PY" -m benchmarks.gpu_smoke --device "$DEVICE" --backends $BACKENDS)
# The sanitizer where there is one (a dry run has none: the same command runs without it);
# where it refuses the GPU, the step is unsupported here, and its last line says why.
sanitized() {
  [ -n "$SANITIZER" ] || { "${@:2}"; return; }
  "$SANITIZER" --tool "$1" --error-exitcode 1 "${@:2}" 2>&1 | tee "$WORK/sanitizer.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ] && grep -qi "device not supported" "$WORK/sanitizer.log"; then
    echo "not checked: $(basename "$SANITIZER") refused this GPU (Device not supported; kernel $(uname -r))"
    return "$UNSUPPORTED"
  fi
  return "$rc"
}
report() { "$PY" -m benchmarks.report --device "$DEVICE" --modes forward+backward --no-launches "$@"; }
if [ $DRY = 1 ]; then
  SIZE=(--tiny) LARGE=(--configs tiny) SPEED=(--critics concat --backends reference cpu --batch-size 8 --warmup 1 --min-time 0.2)
  TESTS=(tests/ops/test_safety.py tests/ops/mi_bound -k "(double_backward or opcheck) and cpu-cpu")
else
  SIZE=(--quick) LARGE=(--configs large stl10) SPEED=(--min-time 0.5)
  TESTS=(tests/ops tests/training/test_trainer.py -k "cuda or triton")
fi
NO_COMPILE=(--peers reference official seed matmuls $BACKENDS)
targets() { "$PY" -m benchmarks.targets "$WORK" --out "$WORK/targets.md"; }
export -f gpu_tests sanitized report targets
export PY WORK WORKERS DEVICE SANITIZER UNSUPPORTED

if [ "$CALL" = 1 ]; then
  DIM_FUSED_AUTOTUNE=0 step tests 130 gpu_tests "${TESTS[@]}"
  DIM_FUSED_AUTOTUNE=0 step smoke 30 "${smoke[@]}"
  DIM_FUSED_AUTOTUNE=0 step memcheck 45 sanitized memcheck "${smoke[@]}"
  step headline-bf16 40 report "${SIZE[@]}" --dtype bfloat16 "${NO_COMPILE[@]}" --out "$WORK/headline-bf16"
  step headline-fp32 40 report "${SIZE[@]}" --dtype float32 --fp32-precision ieee "${NO_COMPILE[@]}" \
    --out "$WORK/headline-fp32"
  step train-speed 40 "$PY" -m benchmarks.train_speed --device "$DEVICE" "${SPEED[@]}" --out "$WORK/train-speed"
  step targets 15 targets
else
  if [ -n "${GPU_CHECK_RERUN:-}" ]; then
    # shellcheck disable=SC2086  # the node ids are separate words
    DIM_FUSED_AUTOTUNE=0 step rerun 60 gpu_tests $GPU_CHECK_RERUN
  else
    note rerun "nothing to rerun (GPU_CHECK_RERUN is empty)"
  fi
  DIM_FUSED_AUTOTUNE=0 step racecheck 40 sanitized racecheck "${smoke[@]}" --one-per-kernel --dtypes float32
  step graphs-bf16 30 report "${SIZE[@]}" --ops concat_conv_mi dot_product_mi --dtype bfloat16 --cuda-graphs \
    --peers reference official $BACKENDS --out "$WORK/graphs-bf16"
  DIM_FUSED_AUTOTUNE=0 step launches 25 "$PY" -m benchmarks.launches --device "$DEVICE" --out "$WORK/launches.md"
  step large-bf16 45 report "${LARGE[@]}" --ops concat_conv_mi --dtype bfloat16 "${NO_COMPILE[@]}" \
    --out "$WORK/large-bf16"
  step compiled-bf16 60 report "${SIZE[@]}" --dtype bfloat16 --peers reference compiled $BACKENDS \
    --out "$WORK/compiled-bf16"
  step tf32 30 report "${SIZE[@]}" --dtype float32 --fp32-precision tf32 "${NO_COMPILE[@]}" --out "$WORK/tf32"
  step targets 15 targets
fi
summary
cat "$OUT/summary.md"
exit $FAILED  # 1 when a step failed or ran out of time (every file is written either way)
