#!/bin/bash
# issue 20, sixth pass: the extension built with OpenMP (its at::parallel_for ranges on torch's
# threads; before, on one) and bf16 products with fp32 results on the AVX512-BF16 kernel
# (csrc/common/bf16_gemm.cpp). The commands are the fifth pass's; each is preceded and
# followed by the core-to-core round trip (../cpu-2core-2026-12-05-placement/pingpong.cpp:
# 50-85 ns or 320-400 ns, the two placements of this VM's two vCPUs).
# Usage: measure.sh K (the run's number), alone on the machine.
set -e
cd "$(dirname "$0")/../../.."
O=benchmarks/results/cpu-2core-2026-12-06-openmp
K=$1
RETAIN=(env MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296)
PINGPONG=/tmp/dim_fused_pingpong
g++ -O2 -pthread -o $PINGPONG benchmarks/results/cpu-2core-2026-12-05-placement/pingpong.cpp
probe() { echo "$(date -u +%T) $1 round_trip_ns=$($PINGPONG)" >> $O/placement-run$K.log; }
: > $O/placement-run$K.log
run() {  # name, command...
  local name=$1
  shift
  probe "before $name"
  "$@" --out $O/$name-run$K > $O/$name-run$K.log 2>&1
  probe "after $name"
}
run fp32 .venv/bin/python -m benchmarks.report --quick --modes forward+backward --min-time 1.5
run k8 .venv/bin/python -m benchmarks.report --configs cifar-k8 --ops concat_conv_mi --modes forward+backward --min-time 1.5
run bf16 .venv/bin/python -m benchmarks.report --quick --dtype bfloat16 --ops concat_conv_mi dot_product_mi --modes forward+backward --min-time 1.5
run train .venv/bin/python -m benchmarks.train_speed --min-time 5
run fp32-retain "${RETAIN[@]}" .venv/bin/python -m benchmarks.report --quick --ops concat_conv_mi --modes forward+backward --min-time 1.5
run train-retain "${RETAIN[@]}" .venv/bin/python -m benchmarks.train_speed --min-time 5
