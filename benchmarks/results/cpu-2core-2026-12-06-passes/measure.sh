#!/bin/bash
# issue 20, seventh pass: the concat plan keeps every hidden layer's activations and its
# column-split passes prefetch their rows. The fifth pass's commands and round-trip probe,
# then the training steps under --amp (the sixth pass ran those by hand), written here.
# Usage: measure.sh K (the run's number), alone on the machine; OUT=folder writes there
# instead (another machine's folder, running these commands on its own commit).
set -e
cd "$(dirname "$0")/../../.."
HERE=${OUT:-benchmarks/results/cpu-2core-2026-12-06-passes}
OUT=$HERE bash benchmarks/results/cpu-2core-2026-12-05-placement/measure.sh "$1"
probe() { echo "$(date -u +%T) $1 round_trip_ns=$(/tmp/dim_fused_pingpong)" >> $HERE/placement-run$2.log; }
probe "before amp" "$1"
.venv/bin/python -m benchmarks.train_speed --amp --min-time 5 --out $HERE/amp-run$1 > $HERE/amp-run$1.log 2>&1
probe "after amp" "$1"
