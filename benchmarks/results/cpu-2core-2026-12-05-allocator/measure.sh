#!/bin/bash
# issue 20, fourth pass: bf16 weight gradients widened in registers, train_speed interleaved,
# and each concat measurement repeated with glibc told to keep freed memory (no page faults
# per call). Usage: measure.sh K (the run's number), alone on the machine.
set -e
cd "$(dirname "$0")/../../.."
O=benchmarks/results/cpu-2core-2026-12-05-allocator
K=$1
RETAIN=(env MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296)
mkdir -p $O
date
.venv/bin/python -m benchmarks.report --quick --modes forward+backward --min-time 1.5 --out $O/fp32-run$K > $O/fp32-run$K.log 2>&1
date
.venv/bin/python -m benchmarks.report --configs cifar-k8 --ops concat_conv_mi --modes forward+backward --min-time 1.5 --out $O/k8-run$K > $O/k8-run$K.log 2>&1
date
.venv/bin/python -m benchmarks.report --quick --dtype bfloat16 --ops concat_conv_mi dot_product_mi --modes forward+backward --min-time 1.5 --out $O/bf16-run$K > $O/bf16-run$K.log 2>&1
date
.venv/bin/python -m benchmarks.train_speed --min-time 5 --out $O/train-run$K > $O/train-run$K.log 2>&1
date
"${RETAIN[@]}" .venv/bin/python -m benchmarks.report --quick --ops concat_conv_mi --modes forward+backward --min-time 1.5 --out $O/fp32-retain-run$K > $O/fp32-retain-run$K.log 2>&1
date
"${RETAIN[@]}" .venv/bin/python -m benchmarks.train_speed --min-time 5 --out $O/train-retain-run$K > $O/train-retain-run$K.log 2>&1
date
