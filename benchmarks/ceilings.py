"""The two ceilings every throughput is compared with, measured in the same run: device
copy bandwidth and the dense GEMM rate of the run's dtype. A GEMM rate is the best of the
providers the machine has: on a GPU cuBLAS (bf16, and fp32 at the run's fp32 precision); on
a CPU both ATen's BLAS path (torch.mm: MKL for fp32) and oneDNN (torch.ops.mkldnn, what
ATen itself takes for bf16), since on some x86-64 CPUs MKL's fp32 sgemm runs at under half
of oneDNN's rate: a floor measured with the slower one would flatter every op."""

import torch

from .timing import measure


def _copy_rate(device: torch.device, n_bytes: int) -> float:
    source = torch.randn(n_bytes // 4, device=device)
    target = torch.empty_like(source)
    copy = measure(lambda: target.copy_(source), device)
    return 2 * n_bytes / copy.median_ms / 1e6  # GB/s, read + write


def _gemm_rates(device: torch.device, dtype: torch.dtype, n: int) -> dict[str, float]:
    """TFLOP/s of an n x n x n product per provider."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    calls = {"blas" if device.type == "cpu" else "cublas": lambda: a @ b}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(b, None)  # (N, K) packed for oneDNN
        calls["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
    return {name: 2 * n**3 / measure(call, device).median_ms / 1e9 for name, call in calls.items()}


def measure_ceilings(device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """copy_gb_per_s, gemm_<dtype>_<provider>_tflop_per_s for each provider (bf16 and fp32 on
    a GPU; fp32, and the run's 16-bit dtype, on a CPU), and gemm_tflop_per_s: the best rate
    for the run's dtype (float32's for float64)."""
    n_bytes, n = (1 << 30, 8192) if device.type == "cuda" else (1 << 28, 2048)
    ceilings = {"copy_gb_per_s": _copy_rate(device, n_bytes)}
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    measured = {torch.bfloat16, torch.float32} if device.type == "cuda" else {torch.float32}
    if dtype in names:
        measured.add(dtype)
    for each in sorted(measured, key=str):
        for provider, rate in _gemm_rates(device, each, n).items():
            ceilings[f"gemm_{names[each]}_{provider}_tflop_per_s"] = rate
    run = names.get(dtype, "fp32")
    ceilings["gemm_tflop_per_s"] = max(v for k, v in ceilings.items() if k.startswith(f"gemm_{run}_"))
    return ceilings
