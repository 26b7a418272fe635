"""The one place that turns a backend name into a kernel: availability,
'auto' selection, and errors that say how to get a missing backend."""

import os
from collections.abc import Callable

import torch

from . import _ops, reference

BACKENDS: tuple[str, ...] = ("auto", "reference", "cpu", "cuda", "triton")

BUILD_HINT = "pip install --no-build-isolation -e .  (from the dim_fused repository root)"


def keep_activations(feature_map, global_code, weights, biases, perm, *_) -> bool:
    """Whether concat_conv_mi's forward keeps the hidden activations after the first layer
    for its backward (which then skips re-running their GEMMs): when they take at most
    DIM_FUSED_KEEP_BYTES (default 64 MiB). The first layer is always recomputed (a gather)."""
    rows = (perm.shape[0] + 1) * feature_map.shape[0] * feature_map[0, 0].numel()
    kept = rows * sum(w.shape[0] for w in weights[1:-1]) * feature_map.element_size()
    return 0 < kept <= int(os.environ.get("DIM_FUSED_KEEP_BYTES", 1 << 26))


# op name -> backend -> callable with the op's schema.
_KERNELS: dict[str, dict[str, Callable]] = {
    "mi_bound": {
        "reference": reference.mi_bound,
        "cpu": lambda *args: torch.ops.dim_fused.mi_bound(*args),
        "cuda": lambda *args: torch.ops.dim_fused.mi_bound(*args),
        "triton": lambda *args: torch.ops.dim_fused.mi_bound_triton(*args),
    },
    "concat_conv_mi": {
        "reference": lambda fmap, code, weights, biases, perm, estimator, detach: reference.concat_conv_mi(
            fmap, code, weights, [b if b.numel() else None for b in biases], perm, estimator, detach
        ),
        "cpu": lambda *args: torch.ops.dim_fused.concat_conv_mi(*args, keep_activations(*args))[0],
        "cuda": lambda *args: torch.ops.dim_fused.concat_conv_mi(*args, keep_activations(*args))[0],
        "triton": lambda *args: torch.ops.dim_fused.concat_conv_mi_triton(*args, keep_activations(*args))[0],
    },
    "dot_product_mi": {
        "reference": reference.dot_product_mi,
        "cpu": lambda *args: torch.ops.dim_fused.dot_product_mi(*args)[0],
        "cuda": lambda *args: torch.ops.dim_fused.dot_product_mi(*args)[0],
        "triton": lambda *args: torch.ops.dim_fused.dot_product_mi_triton(*args)[0],
    },
}


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _unavailable_reason(backend: str, device: torch.device | None) -> str | None:
    """None when `backend` can run on `device` (any device when None), else why not."""
    if backend == "reference":
        return None
    if backend in ("cpu", "cuda") and _ops.C_IMPORT_ERROR is not None:
        return (
            f"backend {backend!r} needs the compiled extension, which failed to import "
            f"({_ops.C_IMPORT_ERROR}). Build it with: {BUILD_HINT}"
        )
    if backend == "cpu":
        if device is not None and device.type != "cpu":
            return f"backend 'cpu' runs on CPU tensors, got tensors on {device}; use backend='cuda' or 'auto'"
        return None
    if backend == "cuda":
        if not _ops.has_cpp_kernel("mi_bound", "CUDA"):
            return (
                "backend 'cuda': dim_fused._C was built without its CUDA kernels. Rebuild with a CUDA "
                f"build of torch and nvcc on the PATH: DIM_FUSED_CUDA=1 {BUILD_HINT}"
            )
        if not torch.cuda.is_available():
            return "backend 'cuda' needs a CUDA GPU, and torch sees none on this machine"
        if device is not None and device.type != "cuda":
            return (
                f"backend 'cuda' runs on CUDA tensors, got tensors on {device}; "
                "move them with .cuda() or use backend='cpu'"
            )
        return None
    if backend == "triton":
        if _ops.TRITON_IMPORT_ERROR is not None:
            return (
                f"backend 'triton' needs Triton, which failed to import ({_ops.TRITON_IMPORT_ERROR}); "
                "pip install triton"
            )
        if _ops.C_IMPORT_ERROR is not None:  # the Triton ops share the C++ plans
            return (
                f"backend 'triton' needs the compiled extension, which failed to import "
                f"({_ops.C_IMPORT_ERROR}). Build it with: {BUILD_HINT}"
            )
        if device is not None and device.type == "cuda" and not _ops.has_cpp_kernel("mi_bound", "CUDA"):
            return (
                "backend 'triton' on CUDA tensors needs dim_fused._C built with its CUDA kernels (the Triton "
                f"ops share the C++ plans). Rebuild with: DIM_FUSED_CUDA=1 {BUILD_HINT}"
            )
        on_cpu = device is not None and device.type == "cpu"
        if on_cpu and not _triton_interpreted():
            return (
                "backend 'triton' runs CPU tensors only under the Triton interpreter: set TRITON_INTERPRET=1 "
                "in the environment before importing dim_fused (slow; meant for tests), or use CUDA tensors"
            )
        if device is not None and device.type not in ("cpu", "cuda"):
            return f"backend 'triton' runs on CUDA tensors, got tensors on {device}"
        return None
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends usable here; with `device`, those that run on tensors on that device."""
    device = torch.device(device) if device is not None else None
    return [b for b in BACKENDS[1:] if _unavailable_reason(b, device) is None]


# 'auto' on CUDA tensors, per op, until GPU measurements decide (benchmarks/results): the
# concat-and-conv critic's scoring MLP is on chip only in Triton; the others' Triton and
# CUDA paths are the same plan with different epilogues.
CUDA_PREFERENCE: dict[str, tuple[str, ...]] = {"concat_conv_mi": ("triton", "cuda")}


def resolve_backend(backend: str, device: torch.device | str, op: str | None = None) -> str:
    """The concrete backend that ``backend`` means for tensors on ``device`` (for ``op``,
    whose 'auto' choice on CUDA may differ); raises RuntimeError saying why (and how to get
    it) when that backend cannot run there. 'auto' prefers the compiled kernels for the
    device, then Triton on CUDA, then the reference; it never picks the (slow) Triton
    interpreter."""
    device = torch.device(device)
    if backend == "auto":
        preferred = CUDA_PREFERENCE.get(op, ("cuda", "triton")) if device.type == "cuda" else ("cpu",)
        return next((b for b in preferred if _unavailable_reason(b, device) is None), "reference")
    reason = _unavailable_reason(backend, device)
    if reason is not None:
        raise RuntimeError(reason)
    return backend


def kernel(op: str, backend: str, device: torch.device) -> Callable:
    return _KERNELS[op][resolve_backend(backend, device, op)]
