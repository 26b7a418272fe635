"""Every environment variable the op library reads, read here only (docs/design.md,
"Environment variables", lists them with their defaults); the values are passed down to
the C++ plans and the Triton launchers as arguments. Read at call time, so a test or a
user may change them between calls; a value a variable does not accept raises ValueError
naming the variable and what it accepts (no silent default)."""

import os
import re

import torch

_BYTE_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}
_FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _positive(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return value


def _bytes(name: str, default: int) -> int:
    """A size: a whole number of bytes, or with a unit (``64MiB``, ``512k``, ``1G``)."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match and _BYTE_UNITS.get(match.group(2).lower())
    if unit is None:
        raise ValueError(
            f"{name} must be a size in bytes >= 0, a whole number with an optional unit K, M, G "
            f"(or KiB, MiB, GiB: powers of 1024), e.g. 67108864 or 64MiB; got {text!r}"
        )
    return int(match.group(1)) * unit


def _flag(name: str, default: bool) -> bool:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    value = _FLAGS.get(text.strip().lower())
    if value is None:
        raise ValueError(f"{name} must be 1 or 0 (or true/false, yes/no, on/off), got {text!r}")
    return value


def tile_scores(device: torch.device) -> int:
    return _positive("DIM_FUSED_TILE_SCORES", 1 << 24 if device.type == "cuda" else 1 << 20)


def chunk_values(device: torch.device) -> int:
    """Values per row chunk of concat_conv_mi's widest layer (2^22 on a GPU, 2^20 on a CPU: a
    CPU's bf16 GEMMs need the rows; on an Intel Xeon with AMX oneDNN ran a chunk's (512 x 512)
    @ (512 x 512) at half the rate of (1024 x 512) @ (512 x 512), docs/design.md)."""
    return _positive("DIM_FUSED_CHUNK_VALUES", 1 << 22 if device.type == "cuda" else 1 << 20)


def keep_bytes() -> int:
    """0 is allowed: never keep."""
    return _bytes("DIM_FUSED_KEEP_BYTES", 256 << 20)


def triton_programs() -> int:
    return _positive("DIM_FUSED_TRITON_PROGRAMS", 2048)


def cpu_gemm() -> str:
    """The CPU plans' GEMM provider: auto (per shape class, whichever provider was measured
    faster here), onednn or blas (docs/design.md, "GEMMs")."""
    value = os.environ.get("DIM_FUSED_CPU_GEMM", "auto")
    if value not in ("auto", "onednn", "blas"):
        raise ValueError(f"DIM_FUSED_CPU_GEMM must be auto, onednn or blas, got {value!r}")
    return value


def cpu_cache_bytes() -> int:
    """The most bytes of freed CPU-plan buffers kept for reuse (0: none)."""
    return _bytes("DIM_FUSED_CPU_CACHE_BYTES", 256 << 20)


def autotune() -> bool:
    return _flag("DIM_FUSED_AUTOTUNE", True)


def quiet() -> bool:
    return _flag("DIM_FUSED_QUIET", False)


def triton_interpreted() -> bool:
    """Whether Triton runs under its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
