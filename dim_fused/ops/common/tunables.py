"""Every environment variable the op library reads, read here only (docs/design.md,
"Environment variables", lists them with their defaults); the values are passed down to
the C++ plans and the Triton launchers as arguments. Read at call time, so a test or a
user may change them between calls."""

import os

import torch


def _positive(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return value


def tile_scores(device: torch.device) -> int:
    return _positive("DIM_FUSED_TILE_SCORES", 1 << 24 if device.type == "cuda" else 1 << 20)


def chunk_values(device: torch.device) -> int:
    return _positive("DIM_FUSED_CHUNK_VALUES", 1 << 22 if device.type == "cuda" else 1 << 18)


def keep_bytes() -> int:
    """0 is allowed: never keep."""
    text = os.environ.get("DIM_FUSED_KEEP_BYTES")
    return 1 << 26 if text is None else max(0, int(text))


def triton_programs() -> int:
    return _positive("DIM_FUSED_TRITON_PROGRAMS", 2048)


def cpu_gemm() -> str:
    """The CPU plans' GEMM provider: auto (oneDNN where torch carries it, else BLAS), onednn
    or blas."""
    value = os.environ.get("DIM_FUSED_CPU_GEMM", "auto")
    if value not in ("auto", "onednn", "blas"):
        raise ValueError(f"DIM_FUSED_CPU_GEMM must be auto, onednn or blas, got {value!r}")
    return value


def autotune() -> bool:
    return os.environ.get("DIM_FUSED_AUTOTUNE", "1") != "0"


def quiet() -> bool:
    return bool(os.environ.get("DIM_FUSED_QUIET"))


def triton_interpreted() -> bool:
    """Whether Triton runs under its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
