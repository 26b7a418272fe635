"""bf16 x bf16 products with fp32 results on this CPU, timed alone (best of 10 after one
untimed call): the project's AVX512-BF16 kernel (DIM_FUSED_CPU_GEMM=onednn) against MKL's
cblas_gemm_bf16bf16f32 (called here through ctypes) and oneDNN's bf16 product (bf16 result),
on dot_product_mi's three product shapes at the CIFAR setting (B = G = 64, L = 64, E = 2048).

    DIM_FUSED_CPU_GEMM=onednn .venv/bin/python benchmarks/results/cpu-2core-xeon-2026-12-06/bf16_products.py
"""

import ctypes
import time
from pathlib import Path

import torch

import dim_fused  # noqa: F401  (registers torch.ops.dim_fused)

MKL = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")).cblas_gemm_bf16bf16f32
MKL.restype = None
MKL.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
MKL.argtypes += [ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def mkl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in fp32 on MKL's bf16 GEMM; a and b each with rows or columns contiguous."""
    (m, k), n = a.shape, b.shape[1]
    out = torch.empty(m, n)
    ta, lda = (NO_TRANS, a.stride(0)) if a.stride(1) == 1 else (TRANS, a.stride(1))
    tb, ldb = (NO_TRANS, b.stride(0)) if b.stride(1) == 1 else (TRANS, b.stride(1))
    MKL(ROW_MAJOR, ta, tb, m, n, k, 1.0, a.data_ptr(), lda, b.data_ptr(), ldb, 0.0, out.data_ptr(), n)
    return out


def best_ms(product, repeats: int = 10) -> float:
    product()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    torch.ops.dim_fused.set_cpu_gemm("onednn")  # the kernel for bf16 -> fp32 products
    codes = torch.randn(64, 2048).bfloat16()
    locations = torch.randn(4096, 2048).bfloat16()
    d_scores = torch.randn(64, 4096).bfloat16()
    shapes = {
        "scores (64 x 2048) @ (2048 x 4096)": (codes, locations.t()),
        "d global (64 x 4096) @ (4096 x 2048)": (d_scores, locations),
        "d local (4096 x 64) @ (64 x 2048)": (d_scores.t(), codes),
    }
    for name, (a, b) in shapes.items():
        gflop = 2 * a.shape[0] * a.shape[1] * b.shape[1] / 1e9
        times = {
            "kernel": best_ms(lambda a=a, b=b: torch.ops.dim_fused.cpu_gemm_to_float(a, b)),
            "mkl": best_ms(lambda a=a, b=b: mkl(a, b)),
            "onednn bf16": best_ms(lambda a=a, b=b: a @ b),
        }
        print(name + ": " + ", ".join(f"{k} {v:.2f} ms ({gflop / v:.2f} TFLOP/s)" for k, v in times.items()))


if __name__ == "__main__":
    main()
