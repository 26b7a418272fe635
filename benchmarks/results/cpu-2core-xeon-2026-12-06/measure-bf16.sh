#!/bin/bash
# After 745072b (bf16 products with fp32 results timed against MKL's bf16 GEMM): the bf16
# commands of ../cpu-2core-2026-12-06-passes/measure.sh, the bf16 op report and the training
# steps under --amp, written to after/. The fp32 products are unchanged by that commit.
# Usage: measure-bf16.sh K (the run's number), alone on the machine.
set -e
cd "$(dirname "$0")/../../.."
O=benchmarks/results/cpu-2core-xeon-2026-12-06/after
mkdir -p $O
.venv/bin/python -m benchmarks.report --quick --dtype bfloat16 --ops concat_conv_mi dot_product_mi \
  --modes forward+backward --min-time 1.5 --out $O/bf16-run$1 > $O/bf16-run$1.log 2>&1
.venv/bin/python -m benchmarks.train_speed --amp --min-time 5 --out $O/amp-run$1 > $O/amp-run$1.log 2>&1
