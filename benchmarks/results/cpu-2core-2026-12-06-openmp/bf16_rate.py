"""The CIFAR setting's dot_product_mi score products in bf16 with fp32 results, as the CPU
plans compute them (torch.ops.dim_fused.cpu_gemm_to_float: the AVX512-BF16 kernel under the
default provider, converted operands on BLAS), beside oneDNN's bf16 matmul (bf16 results) in
the same process: the median of 15 calls each, interleaved by round.

    .venv/bin/python benchmarks/results/cpu-2core-2026-12-06-openmp/bf16_rate.py
"""

import os
import statistics
import time

import torch

from dim_fused.ops.common import library

ROUNDS = 15


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    global_codes = torch.randn(64, 2048, generator=generator).bfloat16()
    rows = torch.randn(4096, 2048, generator=generator).bfloat16()  # codes laid out in rows
    per_image = torch.randn(64, 2048, 64, generator=generator).bfloat16()  # (E, L) per image
    products = {
        "rows": (global_codes, rows.t()),
        "per image": (global_codes.expand(64, 64, 2048), per_image),
    }
    peers = {
        "kernel": ("auto", torch.ops.dim_fused.cpu_gemm_to_float),
        "converted (blas)": ("blas", torch.ops.dim_fused.cpu_gemm_to_float),
        "bf16 matmul (bf16 out)": ("auto", torch.matmul),
    }
    print(f"bf16 kernel on this CPU: {torch.ops.dim_fused.cpu_bf16_dot()}, threads {torch.get_num_threads()}")
    for name, (a, b) in products.items():
        flops = 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.dim() == 3 else 1)
        times: dict[str, list[float]] = {peer: [] for peer in peers}
        for _ in range(ROUNDS):
            for peer, (provider, product) in peers.items():
                os.environ["DIM_FUSED_CPU_GEMM"] = provider
                library.cpu_gemm()  # hands the provider down
                start = time.perf_counter()
                product(a, b)
                times[peer].append(time.perf_counter() - start)
        for peer, samples in times.items():
            median = statistics.median(samples[1:])
            print(f"{name:9s} {peer:24s} {median * 1e3:6.2f} ms {flops / median / 1e9:5.0f} GFLOP/s")


if __name__ == "__main__":
    main()
