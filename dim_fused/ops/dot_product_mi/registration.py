"""dot_product_mi's torch.library registrations: the fake kernels and the autograd
formula of dim_fused::dot_product_mi (C++) and dim_fused::dot_product_mi_triton, and the
fake kernels of their per-row statistics (dot_product_mi_statistics[_triton]), which
across_ranks.py merges over the ranks."""

import torch

from ..common import library
from ..common.precision import accumulation_dtype
from .across_ranks import TOTALS
from .layout import gradient_like


def _check_shapes(op: str, local_codes: torch.Tensor, global_codes: torch.Tensor) -> None:
    torch._check_value(
        local_codes.dim() >= 3
        and global_codes.dim() == 2
        and global_codes.shape[1] == local_codes.shape[1]
        and global_codes.shape[0] >= local_codes.shape[0],
        lambda: f"dim_fused.{op}: need local_codes (B, E, ...) and global_codes (G >= B, E)",
    )


def _fake(local_codes, global_codes, estimator, official, positive_offset, tile_scores):
    library.one_device("dot_product_mi", local_codes, global_codes)
    _check_shapes("dot_product_mi", local_codes, global_codes)
    stats = global_codes.new_empty((global_codes.shape[0], 2), dtype=accumulation_dtype(global_codes.dtype))
    return local_codes.new_empty(()), stats


def _backward_fake(grad, local_codes, global_codes, stats, estimator, official, positive_offset, tile_scores):
    library.one_device("dot_product_mi_backward", grad, local_codes, global_codes, stats)
    _check_shapes("dot_product_mi_backward", local_codes, global_codes)
    torch._check_value(
        stats.shape == (global_codes.shape[0], 2), lambda: "dim_fused.dot_product_mi_backward: stats must be (G, 2)"
    )
    return gradient_like(local_codes), global_codes.new_empty(global_codes.shape)


def _statistics_fake(local_codes, global_codes, estimator, positive_offset, tile_scores):
    library.one_device("dot_product_mi_statistics", local_codes, global_codes)
    _check_shapes("dot_product_mi_statistics", local_codes, global_codes)
    acc = accumulation_dtype(global_codes.dtype)
    totals = global_codes.new_empty((global_codes.shape[0], TOTALS), dtype=acc)
    columns = local_codes.shape[0] * local_codes[0, 0].numel() if estimator == "infonce" else 0
    return totals, global_codes.new_empty((columns,), dtype=acc)


def _setup_context(ctx, inputs, output) -> None:
    local_codes, global_codes, *args = inputs
    ctx.save_for_backward(local_codes, global_codes, output[1])
    ctx.args = args  # estimator, official, positive_offset, tile_scores


def _gradients(backward_op, ctx, grad, _grad_stats):
    local_codes, global_codes, stats = ctx.saved_tensors
    d_local, d_global = backward_op(grad, local_codes, global_codes, stats, *ctx.args)
    return d_local, d_global, None, None, None, None


library.register(
    "dot_product_mi",
    fake=_fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    gradients=_gradients,
    triton_kernels=f"{__package__}.triton_kernels",
)

library.register_statistics(
    "dot_product_mi_statistics",
    fake=_statistics_fake,
    triton_kernels=f"{__package__}.triton_kernels",
    triton_body="statistics",
)
