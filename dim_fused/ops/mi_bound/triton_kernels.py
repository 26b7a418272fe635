"""mi_bound in Triton: one pass writes per-program partial sums (and DV's
per-program logsumexp), a few torch ops on those partials finish the estimate;
backward is one elementwise pass reading the incoming gradient from memory. The
argument checks are the C++ op's (dim_fused::check_mi_bound)."""

import math

import torch
import triton
import triton.language as tl

from ..common.estimators import ESTIMATORS
from ..common.precision import accumulation_dtype
from ..common.triton_launch import device_of, no_autocast, tl_dtype
from ..common.triton_math import (
    DV,
    INFONCE,
    lse_rescaled,
    lse_shift,
    negative_term,
    negative_term_grad,
    positive_term,
    positive_term_grad,
)

BLOCK = 1024


@triton.jit
def _infonce_row_lse(pos, neg_ptr, offs, mask, n_pos, num_neg, ACC: tl.constexpr):
    """logsumexp([pos, neg_1..K]) per position, online (inf-safe: see lse_shift)."""
    row_max = pos
    row_sum = tl.exp(pos - lse_shift(pos))
    negatives = neg_ptr + offs  # negative k of position i is at k * n_pos + i: 64-bit pointer steps
    for _ in range(num_neg):
        x = tl.load(negatives, mask=mask, other=0.0).to(ACC)
        negatives += n_pos
        new_max = tl.maximum(row_max, x)
        row_sum = lse_rescaled(row_sum, row_max, new_max) + tl.exp(x - lse_shift(new_max))
        row_max = new_max
    return lse_shift(row_max) + tl.log(row_sum)


@triton.jit
def _partials_kernel(
    pos_ptr, neg_ptr, partial_ptr, n_pos, n_neg, num_neg, EST: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_pos = offs < n_pos
    pos = tl.load(pos_ptr + offs, mask=in_pos, other=0.0).to(ACC)
    if EST == INFONCE:
        lse = _infonce_row_lse(pos, neg_ptr, offs, in_pos, n_pos, num_neg, ACC)
        tl.store(partial_ptr + pid * 3, tl.sum(tl.where(in_pos, pos - lse, 0.0)))
    else:
        tl.store(partial_ptr + pid * 3, tl.sum(tl.where(in_pos, positive_term(pos, EST), 0.0)))
        in_neg = offs < n_neg
        neg = tl.load(neg_ptr + offs, mask=in_neg, other=0.0).to(ACC)
        if EST == DV:
            shift = lse_shift(tl.max(tl.where(in_neg, neg, -float("inf"))))
            block_sum = tl.sum(tl.where(in_neg, tl.exp(neg - shift), 0.0))
            tl.store(partial_ptr + pid * 3 + 2, shift + tl.log(block_sum))
        else:
            tl.store(partial_ptr + pid * 3 + 1, tl.sum(tl.where(in_neg, negative_term(neg, EST), 0.0)))


@triton.jit
def _gradient_kernel(
    pos_ptr,
    neg_ptr,
    grad_ptr,
    lse_ptr,
    dpos_ptr,
    dneg_ptr,
    n_pos,
    n_neg,
    num_neg,
    EST: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(grad_ptr).to(ACC)
    g_pos = g / n_pos
    in_pos = offs < n_pos
    pos = tl.load(pos_ptr + offs, mask=in_pos, other=0.0).to(ACC)
    if EST == INFONCE:
        lse = _infonce_row_lse(pos, neg_ptr, offs, in_pos, n_pos, num_neg, ACC)
        dpos = g_pos * (1.0 - tl.exp(pos - lse))
        tl.store(dpos_ptr + offs, dpos.to(dpos_ptr.dtype.element_ty), mask=in_pos)
        negatives, d_negatives = neg_ptr + offs, dneg_ptr + offs
        for _ in range(num_neg):
            x = tl.load(negatives, mask=in_pos, other=0.0).to(ACC)
            tl.store(d_negatives, (-g_pos * tl.exp(x - lse)).to(dneg_ptr.dtype.element_ty), mask=in_pos)
            negatives += n_pos
            d_negatives += n_pos
    else:
        dpos = g_pos * positive_term_grad(pos, EST)
        tl.store(dpos_ptr + offs, dpos.to(dpos_ptr.dtype.element_ty), mask=in_pos)
        in_neg = offs < n_neg
        neg = tl.load(neg_ptr + offs, mask=in_neg, other=0.0).to(ACC)
        if EST == DV:  # d/dx of log mean exp(neg) is softmax(neg)
            d = tl.exp(neg - tl.load(lse_ptr).to(ACC))
        else:
            d = negative_term_grad(neg, EST) / n_neg
        dneg = -g * d
        tl.store(dneg_ptr + offs, dneg.to(dneg_ptr.dtype.element_ty), mask=in_neg)


def _launch_args(pos: torch.Tensor, neg: torch.Tensor, estimator: str):
    num_neg = neg.shape[0] if estimator == "infonce" else 0
    extent = pos.numel() if estimator == "infonce" else max(pos.numel(), neg.numel())
    grid = (triton.cdiv(extent, BLOCK),)
    meta = {
        "EST": ESTIMATORS.index(estimator),
        "ACC": tl_dtype(accumulation_dtype(pos.dtype)),
        "BLOCK": BLOCK,
    }
    return grid, num_neg, meta


def _partials(pos: torch.Tensor, neg: torch.Tensor, estimator: str) -> torch.Tensor:
    grid, num_neg, meta = _launch_args(pos, neg, estimator)
    acc = accumulation_dtype(pos.dtype)
    # Columns: sum of Ep (or of pos - lse), sum of Eq, logsumexp of neg; unused ones stay at their identity.
    partial = torch.zeros(grid[0], 3, dtype=acc, device=pos.device)
    partial[:, 2] = -math.inf
    with device_of(pos):
        _partials_kernel[grid](pos, neg, partial, pos.numel(), neg.numel(), num_neg, **meta)
    return partial


@no_autocast
def forward(pos: torch.Tensor, neg: torch.Tensor, estimator: str) -> torch.Tensor:
    torch.ops.dim_fused.check_mi_bound(pos, neg, estimator, None)  # the C++ kernels' checks
    pos, neg = pos.contiguous(), neg.contiguous()
    partial = _partials(pos, neg, estimator)
    pos_mean = partial[:, 0].sum() / pos.numel()
    if estimator == "infonce":
        estimate = pos_mean + math.log(neg.shape[0] + 1)
    elif estimator == "dv":
        estimate = pos_mean - (torch.logsumexp(partial[:, 2], dim=0) - math.log(neg.numel()))
    else:
        estimate = pos_mean - partial[:, 1].sum() / neg.numel()
    return estimate.to(pos.dtype)


@no_autocast
def backward(grad: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, estimator: str):
    torch.ops.dim_fused.check_mi_bound(pos, neg, estimator, grad)
    pos, neg = pos.contiguous(), neg.contiguous()
    grid, num_neg, meta = _launch_args(pos, neg, estimator)
    lse = torch.logsumexp(_partials(pos, neg, estimator)[:, 2], dim=0) if estimator == "dv" else grad
    dpos, dneg = torch.empty_like(pos), torch.empty_like(neg)
    with device_of(pos):
        _gradient_kernel[grid](pos, neg, grad.reshape(()), lse, dpos, dneg, pos.numel(), neg.numel(), num_neg, **meta)
    return dpos, dneg
