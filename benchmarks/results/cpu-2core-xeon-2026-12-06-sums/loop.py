"""bf16 dot_product_mi at the CIFAR setting (B = 64, E = 2048, 8 x 8; or another batch, the
report's b256 setting with 256), forward+backward in a plain loop: the fused `cpu` backend or
the reference, 5 untimed steps then the median and best of 40; then auto's measured GEMM
choices.

    .venv/bin/python benchmarks/results/cpu-2core-xeon-2026-12-06-sums/loop.py cpu jsd [256]
"""

import sys
import time

import torch

import dim_fused
from dim_fused import reference
from dim_fused.ops.common import library


def main(backend: str, estimator: str, batch: int) -> None:
    local = (torch.randn(batch, 2048, 8, 8) * 0.05).bfloat16().requires_grad_()
    global_codes = (torch.randn(batch, 2048) * 0.05).bfloat16().requires_grad_()

    def step() -> None:
        if backend == "reference":
            out = reference.dot_product_mi(local, global_codes, estimator)
        else:
            out = dim_fused.dot_product_mi(local, global_codes, estimator=estimator, backend=backend)
        torch.autograd.grad(out, (local, global_codes))

    for _ in range(5):
        step()
    times = []
    for _ in range(40):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    print(f"{backend} {estimator} B={batch}: median {times[20] * 1e3:.2f} ms, best {times[0] * 1e3:.2f} ms")
    for line in library.cpu_gemm_choices():
        print(f"  {line}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 64)
