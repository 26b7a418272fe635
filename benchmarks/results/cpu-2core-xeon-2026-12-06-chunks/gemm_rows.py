"""A hidden layer's product per chunk, (rows x 512) @ (512 x 512), against its rows: torch.mm,
which runs bf16 on oneDNN's matmul (AMX here) and fp32 on MKL; the median of 30 calls after 5.

    .venv/bin/python benchmarks/results/cpu-2core-xeon-2026-12-06-chunks/gemm_rows.py
"""

import time

import torch


def median_ms(fn, calls: int = 30) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[calls // 2]


def main() -> None:
    for dtype in (torch.bfloat16, torch.float32):
        weight = torch.randn(512, 512, dtype=dtype)
        for rows in (256, 512, 1024, 2048, 4096):
            a, out = torch.randn(rows, 512, dtype=dtype), torch.empty(rows, 512, dtype=dtype)
            ms = median_ms(lambda a=a, w=weight, out=out: torch.mm(a, w, out=out))
            print(f"{dtype} ({rows} x 512) @ (512 x 512): {ms:.3f} ms, {2 * rows * 512 * 512 / ms / 1e9:.2f} TFLOP/s")


if __name__ == "__main__":
    main()
