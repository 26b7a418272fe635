"""Blocks of fused concat_conv_mi forward+backward at the CIFAR setting (the reference run
between calls, as in the report), each labelled with the core-to-core round trip measured
just before it (pingpong.cpp) and the op's passes from torch.profiler.

Usage, from the repository root, alone on the machine:
  g++ -O2 -pthread -o /tmp/pingpong benchmarks/results/cpu-2core-2026-12-05-placement/pingpong.cpp
  .venv/bin/python benchmarks/results/cpu-2core-2026-12-05-placement/placement.py float32 150 /tmp/pingpong
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root
from benchmarks import cases, configs  # noqa: E402

PIECES = ("first_layer", "first_layer_backward", "hidden_epilogue", "score_backward", "onednn_matmul")


def main() -> None:
    dtype, seconds, pingpong = getattr(torch, sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    inputs = cases.make_inputs(configs.CONCAT_CONV[0], torch.device("cpu"), dtype)
    fused = cases.step("concat_conv_mi", "cpu", inputs, "jsd", "forward+backward")
    reference = cases.step("concat_conv_mi", "reference", inputs, "jsd", "forward+backward")
    for _ in range(3):
        fused()
    print("block round_trip_ns fused_ms " + " ".join(PIECES))
    end, block = time.time() + seconds, 0
    while time.time() < end:
        round_trip = subprocess.run([pingpong], capture_output=True, text=True, check=True).stdout.strip()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fused()
            times.append(time.perf_counter() - start)
            reference()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fused()
        ms = {e.key.removeprefix("dim_fused::"): e.cpu_time_total / 1e3 for e in prof.key_averages()}
        pieces = " ".join(f"{ms.get(p, 0.0):.1f}" for p in PIECES)
        print(f"{block} {round_trip} {statistics.median(times) * 1e3:.1f} {pieces}", flush=True)
        block += 1


if __name__ == "__main__":
    main()
