"""The two ceilings every throughput is compared with, measured in the same run:
device copy bandwidth and dense GEMM rate (bf16 and fp32/tf32 on a GPU, fp32 on
the CPU)."""

import torch

from .timing import measure


def _copy_rate(device: torch.device, n_bytes: int) -> float:
    source = torch.randn(n_bytes // 4, device=device)
    target = torch.empty_like(source)
    copy = measure(lambda: target.copy_(source), device)
    return 2 * n_bytes / copy.median_ms / 1e6  # GB/s, read + write


def measure_ceilings(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        n_bytes, n = 1 << 30, 8192
        dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    else:
        n_bytes, n = 1 << 28, 2048
        dtypes = {"fp32": torch.float32}
    ceilings = {"copy_gb_per_s": _copy_rate(device, n_bytes)}
    for name, dtype in dtypes.items():
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        gemm = measure(lambda a=a, b=b: a @ b, device)
        ceilings[f"gemm_{name}_tflop_per_s"] = 2 * n**3 / gemm.median_ms / 1e9
    return ceilings
