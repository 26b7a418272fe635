"""What every Triton launcher shares: the device guard, the accumulation dtype and
torch's TF32 setting."""

import contextlib

import torch
import triton.language as tl


def device_of(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on the tensor's GPU, whichever is current (a no-op for CPU tensors under
    the interpreter)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def accumulator(dtype: torch.dtype) -> tuple[torch.dtype, tl.dtype]:
    """float64 for float64 inputs, float32 for every other dtype: as torch and tl dtypes."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def allow_tf32(tensor: torch.Tensor) -> bool:
    """Whether float32 dots may use TF32 on this tensor: torch's matmul setting, read
    through the fp32_precision API (the legacy allow_tf32 raises once a user set it)."""
    if not tensor.is_cuda or tensor.dtype != torch.float32:
        return False
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if precision is None:  # torch without the new API
        return bool(torch.backends.cuda.matmul.allow_tf32)
    return precision == "tf32"
