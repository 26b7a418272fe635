"""Timing done the same way for every row: warm-up, then the median and spread of many
repeats; CUDA events on a GPU, perf_counter on the CPU. The peers of one case are timed
interleaved (measure_interleaved): round after round, each peer once per round in a
rotating order, so that a shared machine's drift falls on every peer alike."""

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


def _once(fn: Callable[[], object], device: torch.device) -> float:
    """One call's milliseconds."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def measure_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, *, min_time_s: float = 0.2, max_repeats: int = 200
) -> dict[str, Timing]:
    """Every fn (already warm) timed in turn: rounds of one call each, the order rotating,
    until each has had min_time_s of rounds and at least 5 (CPU) or 10 (GPU) samples."""
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    if device.type == "cuda":
        torch.cuda.synchronize()
    minimum = 10 if device.type == "cuda" else 5
    deadline = time.perf_counter() + min_time_s * len(names)
    rounds = 0
    while rounds < max_repeats and (rounds < minimum or time.perf_counter() < deadline):
        shift = rounds % max(1, len(names))
        for name in names[shift:] + names[:shift]:
            samples[name].append(_once(fns[name], device))
        rounds += 1
    return {name: _quartiles(values) for name, values in samples.items()}


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
