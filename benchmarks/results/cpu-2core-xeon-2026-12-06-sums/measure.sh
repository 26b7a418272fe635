#!/bin/bash
# Run K of the A/B, from the repository root: the build before (BEFORE=<a tree of a2b6f24:
# `git archive a2b6f24`, built>) and this one, alternated (odd runs the new one first), each
# from its own tree (python -m puts the working directory first on sys.path): the plain
# loop of loop.py (both estimators and the reference), interleaved.py, then the quick report
# of dot_product_mi in bf16.
#   BEFORE=/tmp/basetree bash benchmarks/results/cpu-2core-xeon-2026-12-06-sums/measure.sh 1
set -eu
K=$1
HERE=$PWD/benchmarks/results/cpu-2core-xeon-2026-12-06-sums
PY=$PWD/.venv/bin/python
run() {  # run <label> <tree>
  cd "$2"
  for est in jsd infonce; do
    PYTHONPATH=$2 $PY $HERE/loop.py cpu $est | sed "s/^/$1 /"
  done
  PYTHONPATH=$2 $PY $HERE/loop.py reference jsd | sed "s/^/$1 /"
  PYTHONPATH=$2 $PY $HERE/interleaved.py jsd | sed "s/^/$1 /"
  PYTHONPATH=$2 $PY -m benchmarks.report --quick --dtype bfloat16 --ops dot_product_mi \
    --modes forward+backward --min-time 1.5 --out $HERE/report-$1-run$K > $HERE/report-$1-run$K.log 2>&1
  cd - > /dev/null
}
if [ $((K % 2)) = 1 ]; then run after "$PWD"; run before "$BEFORE"; else run before "$BEFORE"; run after "$PWD"; fi
