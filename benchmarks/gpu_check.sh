#!/usr/bin/env bash
# One prepared GPU run for a bare GPU machine with torch preinstalled and no
# network: build the extension, run the test suite on the GPU, a compute-sanitizer
# memcheck on a small case, and the benchmark report; everything lands in OUT.
# Budget: about 9 minutes on an H200.
#
#   bash benchmarks/gpu_check.sh OUT            (from the repository root)
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DIM_FUSED_CUDA=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
PY=${PYTHON:-python3}
status=()
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  status+=("$(printf '| %-9s | %4s | %4ss | %s |' "$name" "$rc" "$((SECONDS - start))" "$(tail -n 1 "$OUT/$name.log" | cut -c1-90)")")
  return $rc
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())" >"$OUT/versions.txt" 2>&1
step build 200 "$PY" -m pip install --no-build-isolation --no-deps -e . \
  && step backends 60 "$PY" -c "import dim_fused; print(dim_fused.available_backends('cuda'))" \
  && step tests 150 "$PY" -m pytest tests -q -x -p no:cacheprovider -k "cuda or triton or build" \
  && step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -c "
import torch, dim_fused
for e in ('jsd', 'dv', 'infonce'):
    p = torch.randn(33, 17, device='cuda', requires_grad=True); n = torch.randn(3, 33, 17, device='cuda', requires_grad=True)
    dim_fused.mi_bound(p, n, e, backend='cuda').backward()
    l = torch.randn(5, 7, 9, device='cuda', requires_grad=True); g = torch.randn(5, 7, device='cuda', requires_grad=True)
    dim_fused.dot_product_mi(l, g, estimator=e, backend='cuda').backward()
    f = torch.randn(3, 4, 5, device='cuda', requires_grad=True); y = torch.randn(3, 2, device='cuda', requires_grad=True)
    w = [torch.randn(8, 6, device='cuda', requires_grad=True), torch.randn(1, 8, device='cuda', requires_grad=True)]
    dim_fused.concat_conv_mi(f, y, w, [None, None], estimator=e, num_negatives=2, backend='cuda').backward()
torch.cuda.synchronize(); print('memcheck case done')
"
step quick 90 "$PY" -m benchmarks.report --quick --out "$OUT/report-quick"
step quick-bf16 60 "$PY" -m benchmarks.report --quick --dtype bfloat16 --out "$OUT/report-quick-bf16"
# Whole DIM training steps/s on CIFAR-sized synthetic data: reference vs cuda vs triton, both critics.
step train-speed 120 "$PY" -m benchmarks.train_speed --out "$OUT/train-speed"
# The full report gets what is left of ~7.5 minutes; stopped early, it keeps the finished cases.
step report $((480 - SECONDS > 30 ? 480 - SECONDS : 30)) "$PY" -m benchmarks.report --out "$OUT/report"

echo "| step      |   rc | time | last line |" | tee "$OUT/summary.md"
echo "|---|---:|---:|---|" | tee -a "$OUT/summary.md"
printf '%s\n' "${status[@]}" | tee -a "$OUT/summary.md"
[ -f "$OUT/train-speed/table.md" ] && grep -E "^\| (concat|dot) " "$OUT/train-speed/table.md" | tee -a "$OUT/summary.md"
for table in "$OUT/report-quick/table.md" "$OUT/report/table.md"; do
  [ -f "$table" ] && grep -E "forward\+backward \| (official|seed|reference|compiled|matmuls|cuda|triton) \|" "$table" \
    | grep -E "\| (cifar|cifar-local|b256|large|sweep-B512|sweep-L1024) \|" | tee -a "$OUT/summary.md"
done
