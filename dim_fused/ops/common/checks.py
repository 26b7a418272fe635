"""The argument checks every op shares: every bad input gets a clear error naming the
argument, before any kernel launches. Each op's own checks are in its function.py."""

import contextlib
from collections.abc import Sequence

import torch
from torch.autograd import profiler

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(value: object, name: str, *, min_dim: int = 0, max_dim: int | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(value.shape)}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {value.dtype}")
    if value.dim() < min_dim or (max_dim is not None and value.dim() > max_dim):
        expected = f"{min_dim}" if max_dim == min_dim else f"{min_dim} to {max_dim or 'any'}"
        raise ValueError(f"{name} must have {expected} dimensions, got shape {tuple(value.shape)}")
    return value


def same_dtype_and_device(named: Sequence[tuple[str, torch.Tensor]]) -> None:
    first_name, first = named[0]
    for name, other in named[1:]:
        if other.device != first.device:
            raise ValueError(
                f"{name} is on {other.device} but {first_name} is on {first.device}; put them on one device"
            )
        if other.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {other.dtype} but {first_name} has {first.dtype}; use one dtype")


def batch_size(size: int, name: str = "batch") -> None:
    if size < 2:
        raise ValueError(f"{name} must be at least 2 to draw negatives from other images, got {size}")


def host_check() -> contextlib.AbstractContextManager:
    """Around a check or choice that reads tensor data on the host, taken on the CPU only
    (free there, a sync on a GPU): under torch.profiler a ``dim_fused::host_check`` scope,
    so that benchmarks/launches.py keeps it out of the GPU path it counts."""
    return (
        profiler.record_function("dim_fused::host_check") if profiler._is_profiler_enabled else contextlib.nullcontext()
    )
