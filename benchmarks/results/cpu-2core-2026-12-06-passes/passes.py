"""Where one forward+backward of the `cpu` backend's `concat_conv_mi` spends its time at the
CIFAR setting (JSD, K=1): the op's forward and backward and each of its own passes, median
microseconds a call over three profiled steps, with the call counts.

    .venv/bin/python benchmarks/results/cpu-2core-2026-12-06-passes/passes.py [fp32|bf16]

Run it alone on the machine; the pass medians move with the vCPUs' placement
(`../cpu-2core-2026-12-05-placement/pingpong.cpp`).
"""

import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks import cases
from benchmarks.configs import CONCAT_CONV

STEPS = 3
PASSES = (
    "concat_conv_mi",
    "concat_conv_mi_backward",
    "onednn_matmul",
    "first_layer",
    "hidden_epilogue",
    "score_backward",
    "first_layer_backward",
)


def main() -> None:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[sys.argv[1] if len(sys.argv) > 1 else "fp32"]
    config = next(c for c in CONCAT_CONV if c.name == "cifar")
    inputs = cases.make_inputs(config, torch.device("cpu"), dtype)
    step = cases.step("concat_conv_mi", "cpu", inputs, "jsd", "forward+backward")
    for _ in range(3):
        step()
    with torch.profiler.profile() as profile:
        for _ in range(STEPS):
            step()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        profile.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    durations = defaultdict(list)
    for event in events:
        if event.get("ph") == "X" and event["name"].startswith("dim_fused::"):
            durations[event["name"].removeprefix("dim_fused::")].append(event["dur"])
    print(f"concat_conv_mi, cpu, {dtype}, CIFAR setting, JSD, K=1: median us a call ({STEPS} steps)")
    for name in PASSES:
        calls = durations.get(name, [])
        if calls:
            print(f"{name:24s} {statistics.median(calls):9.1f} us  {len(calls) // STEPS:3d} calls a step")


if __name__ == "__main__":
    main()
