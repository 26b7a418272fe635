"""bf16 dot_product_mi at the CIFAR setting, forward+backward: the fused `cpu` backend timed
alone in a loop, then each of its steps after one of the reference's (which evicts the codes
from the caches and churns the allocator, as the report's interleaved peers do); 3 untimed
steps of each, then the median and best of 30. One line per mode.

    .venv/bin/python benchmarks/results/cpu-2core-xeon-2026-12-06-sums/interleaved.py jsd
"""

import sys
import time

import torch

import dim_fused
from dim_fused import reference


def main(estimator: str) -> None:
    local = (torch.randn(64, 2048, 8, 8) * 0.05).bfloat16().requires_grad_()
    global_codes = (torch.randn(64, 2048) * 0.05).bfloat16().requires_grad_()

    def fused() -> None:
        out = dim_fused.dot_product_mi(local, global_codes, estimator=estimator, backend="cpu")
        torch.autograd.grad(out, (local, global_codes))

    def peer() -> None:
        out = reference.dot_product_mi(local, global_codes, estimator)
        torch.autograd.grad(out, (local, global_codes))

    for _ in range(3):
        fused()
        peer()
    for mode in ("alone", "after the reference"):
        times = []
        for _ in range(30):
            if mode != "alone":
                peer()
            start = time.perf_counter()
            fused()
            times.append(time.perf_counter() - start)
        times.sort()
        print(f"cpu {estimator}, {mode}: median {times[15] * 1e3:.2f} ms, best {times[0] * 1e3:.2f} ms")


if __name__ == "__main__":
    main(sys.argv[1])
