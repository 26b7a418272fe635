"""The memory layout dot_product_mi's gradient takes, shared by the fake kernels and
the Triton backend (the C++ plan, csrc/dot_product_mi/dot_product_mi.cpp, makes the same
choice)."""

import torch


def rows_layout(local_codes: torch.Tensor) -> bool:
    """Whether the units are innermost (channels-last codes): (B * L, E) is then a view."""
    batch, units = local_codes.shape[:2]
    return local_codes.reshape(batch, units, -1).transpose(1, 2).is_contiguous()


def gradient_like(local_codes: torch.Tensor) -> torch.Tensor:
    """An empty d local_codes: their layout when it is the rows layout (written in place,
    no transposing copy), contiguous otherwise. Never a view (custom ops' outputs may not
    be)."""
    if not rows_layout(local_codes):
        return local_codes.new_empty(local_codes.shape)
    units, spatial = local_codes.shape[1], local_codes.shape[2:]
    strides = [units] * len(spatial)
    for i in range(len(spatial) - 2, -1, -1):
        strides[i] = strides[i + 1] * spatial[i + 1]
    return local_codes.new_empty_strided(local_codes.shape, (units * local_codes[0, 0].numel(), 1, *strides))
