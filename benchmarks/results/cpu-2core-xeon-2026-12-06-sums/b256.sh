#!/bin/bash
# The report's b256 setting (B = 256, E = 2048, 8 x 8) in loop.py, the fused op only, both
# builds alternated as in measure.sh (BEFORE=<a2b6f24's tree>), run K; from the repository root.
#   BEFORE=/tmp/basetree bash benchmarks/results/cpu-2core-xeon-2026-12-06-sums/b256.sh 1
set -eu
K=$1
HERE=$PWD/benchmarks/results/cpu-2core-xeon-2026-12-06-sums
PY=$PWD/.venv/bin/python
run() {  # run <label> <tree>
  for est in jsd infonce; do
    (cd "$2" && PYTHONPATH=$2 $PY $HERE/loop.py cpu $est 256 | sed "s/^/$1 /")
  done
}
if [ $((K % 2)) = 1 ]; then run after "$PWD"; run before "$BEFORE"; else run before "$BEFORE"; run after "$PWD"; fi
