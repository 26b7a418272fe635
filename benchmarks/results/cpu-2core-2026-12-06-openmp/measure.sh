#!/bin/bash
# issue 20, sixth pass: the extension built with OpenMP (its at::parallel_for ranges on torch's
# threads; before, on one) and bf16 products with fp32 results on the AVX512-BF16 kernel
# (csrc/common/bf16_gemm.cpp). The fifth pass's commands and round-trip probe, written here.
# Usage: measure.sh K (the run's number), alone on the machine.
cd "$(dirname "$0")/../../.."
OUT=benchmarks/results/cpu-2core-2026-12-06-openmp exec bash benchmarks/results/cpu-2core-2026-12-05-placement/measure.sh "$1"
