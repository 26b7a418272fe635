#!/bin/bash
# issue 20, third pass: the buffer cache. Usage: measure.sh K
set -e
cd /work/main
O=benchmarks/results/cpu-2core-2026-12-05-cache
K=$1
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
