"""bf16 dot_product_mi JSD at the CIFAR setting, forward+backward in a plain loop: the fused
`cpu` backend or the reference, 3 untimed steps then the median of 20.

    .venv/bin/python benchmarks/results/cpu-2core-xeon-2026-12-06/loop.py cpu
    .venv/bin/python benchmarks/results/cpu-2core-xeon-2026-12-06/loop.py reference
"""

import sys
import time

import torch

import dim_fused
from dim_fused import reference


def main(backend: str) -> None:
    local = (torch.randn(64, 2048, 8, 8) * 0.05).bfloat16().requires_grad_()
    global_codes = (torch.randn(64, 2048) * 0.05).bfloat16().requires_grad_()

    def step() -> None:
        if backend == "reference":
            out = reference.dot_product_mi(local, global_codes, "jsd")
        else:
            out = dim_fused.dot_product_mi(local, global_codes, estimator="jsd", backend=backend)
        torch.autograd.grad(out, (local, global_codes))

    for _ in range(3):
        step()
    times = []
    for _ in range(20):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    print(f"{backend}: median {times[10] * 1e3:.2f} ms, best {times[0] * 1e3:.2f} ms")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
