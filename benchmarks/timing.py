"""Timing done the same way for every row: warm-up, then the median and spread
of many repeats. CUDA events on a GPU (through triton.testing.do_bench when Triton
is there), perf_counter on the CPU."""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    median_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int


def _quartiles(samples: list[float]) -> Timing:
    q1, median, q3 = statistics.quantiles(samples, n=4) if len(samples) > 1 else (samples[0],) * 3
    return Timing(median, q1, q3, len(samples))


def measure(
    fn: Callable[[], object], device: torch.device, *, min_time_s: float = 0.2, max_repeats: int = 200
) -> Timing:
    for _ in range(2):  # warm-up: first-call allocations, autotuning, compilation
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        samples = []
        deadline = time.perf_counter() + min_time_s
        while len(samples) < max_repeats and (len(samples) < 10 or time.perf_counter() < deadline):
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        return _quartiles(samples)
    samples = []
    deadline = time.perf_counter() + min_time_s
    while len(samples) < max_repeats and (len(samples) < 5 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return _quartiles(samples)
