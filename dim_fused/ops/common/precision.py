"""The dtypes the ops compute in: the accumulation dtype (csrc/common/common.h's
acc_dtype says the same), torch's TF32 setting, and the autocast policy of the
GEMM-bound ops."""

from collections.abc import Sequence

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tf32_allowed(tensor: torch.Tensor) -> bool:
    """Whether float32 products on this tensor may use TF32: torch's matmul setting, read
    through the fp32_precision API (the legacy allow_tf32 raises once a user set the new
    one). "none" inherits the global torch.backends.fp32_precision, as cuBLAS does."""
    if not tensor.is_cuda or tensor.dtype != torch.float32:
        return False
    precision = torch.backends.cuda.matmul.fp32_precision
    if precision == "none":
        precision = torch.backends.fp32_precision
    return precision == "tf32"


@torch.compiler.assume_constant_result
def _autocast_available(device_type: str) -> bool:
    # A constant to torch.compile: dynamo in torch 2.11 (the GPU machine's) cannot trace the C function behind
    # torch.amp.is_autocast_available, and a graph break here breaks fullgraph compiles.
    return torch.amp.is_autocast_available(device_type)


def autocast(values: Sequence[object], device: torch.device) -> list:
    """The GEMM-bound ops' autocast policy (concat_conv_mi, dot_product_mi; like the matmuls
    autocast lowers): under autocast for the tensors' device, every floating tensor among
    ``values`` is cast to autocast's dtype and the op runs there, its scores and reductions
    still in float32. Anything else (None, a wrong argument the checks then name) and
    every value outside autocast is left as it is."""
    if not _autocast_available(device.type) or not torch.is_autocast_enabled(device.type):
        return list(values)
    dtype = torch.get_autocast_dtype(device.type)
    return [v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in values]
