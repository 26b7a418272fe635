#!/bin/bash
# issue 20, fifth pass: the concat op's chunk rows written with streaming stores, and each
# command preceded and followed by the core-to-core round trip (pingpong.cpp: 50-85 ns or
# 320-400 ns, the two placements of this VM's two vCPUs). The commands are the fourth pass's.
# Usage: measure.sh K (the run's number), alone on the machine; OUT=folder writes there
# instead (a later pass's folder, running these commands on its own commit).
set -e
cd "$(dirname "$0")/../../.."
HERE=benchmarks/results/cpu-2core-2026-12-05-placement
O=${OUT:-$HERE}
K=$1
RETAIN=(env MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296)
PINGPONG=/tmp/dim_fused_pingpong
g++ -O2 -pthread -o $PINGPONG $HERE/pingpong.cpp
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
