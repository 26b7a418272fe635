#!/bin/bash
# concat_conv_mi's CPU row chunks: the new default, 2^20 values of the widest layer, against
# the former 2^18 (DIM_FUSED_CHUNK_VALUES=262144), in one run each: the op in bf16 and fp32
# (the report, forward+backward) and the concat critic's training steps under --amp and in
# fp32. Odd runs time 2^20 first, even runs 2^18 first.
# Usage: measure.sh K (the run's number), alone on the machine.
set -e
cd "$(dirname "$0")/../../.."
HERE=benchmarks/results/cpu-2core-xeon-2026-12-06-chunks
K=$1
measure() {  # $1: chunk values
  local O=$HERE/chunks-$1-run$K
  mkdir -p $O
  export DIM_FUSED_CHUNK_VALUES=$1
  .venv/bin/python -m benchmarks.report --quick --dtype bfloat16 --ops concat_conv_mi --modes forward+backward \
    --min-time 1.5 --out $O/bf16 > $O/bf16.log 2>&1
  .venv/bin/python -m benchmarks.report --quick --dtype float32 --ops concat_conv_mi --modes forward+backward \
    --min-time 1.5 --out $O/fp32 > $O/fp32.log 2>&1
  .venv/bin/python -m benchmarks.train_speed --critics concat --amp --min-time 5 --out $O/amp > $O/amp.log 2>&1
  .venv/bin/python -m benchmarks.train_speed --critics concat --min-time 5 --out $O/train > $O/train.log 2>&1
}
if [ $((K % 2)) = 1 ]; then measure 1048576; measure 262144; else measure 262144; measure 1048576; fi
