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


def _fake(local_codes, global_codes, estimator, official, positive_offset, tile_scores, keep_scores=False):
    """The C++ op keeps its scores when asked and they are one tile (G * B * L <= tile_scores)."""
    library.one_device("dot_product_mi", local_codes, global_codes)
    _check_shapes("dot_product_mi", local_codes, global_codes)
    acc = accumulation_dtype(global_codes.dtype)
    stats = global_codes.new_empty((global_codes.shape[0], 2), dtype=acc)
    columns = local_codes.shape[0] * local_codes[0, 0].numel()
    kept = (global_codes.shape[0], columns) if keep_scores and global_codes.shape[0] * columns <= tile_scores else (0,)
    return local_codes.new_empty(()), stats, stats.new_empty(kept)


def _triton_fake(local_codes, global_codes, estimator, official, positive_offset, tile_scores, keep_scores=False):
    """The Triton op keeps no scores."""
    estimate, stats, _ = _fake(local_codes, global_codes, estimator, official, positive_offset, tile_scores)
    return estimate, stats, stats.new_empty(0)


def _backward_fake(
    grad, local_codes, global_codes, stats, estimator, official, positive_offset, tile_scores, scores=None
):
    kept = [] if scores is None else [scores]
    library.one_device("dot_product_mi_backward", grad, local_codes, global_codes, stats, *kept)
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
    ctx.save_for_backward(local_codes, global_codes, output[1], output[2])
    ctx.args = args[:4]  # estimator, official, positive_offset, tile_scores


def _gradients(backward_op, ctx, grad, _grad_stats, _grad_scores):
    local_codes, global_codes, stats, scores = ctx.saved_tensors
    d_local, d_global = backward_op(grad, local_codes, global_codes, stats, *ctx.args, scores)
    return d_local, d_global, None, None, None, None, None


library.register(
    "dot_product_mi",
    fake=_fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    gradients=_gradients,
    triton_kernels=f"{__package__}.triton_kernels",
    triton_fake=_triton_fake,
)

library.register_statistics(
    "dot_product_mi_statistics",
    fake=_statistics_fake,
    triton_kernels=f"{__package__}.triton_kernels",
    triton_body="statistics",
)
