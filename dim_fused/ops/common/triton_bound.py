"""The bound of a set of scores in Triton, what mi_bound is and what concat_conv_mi ends
with: two launches for the estimate and its normaliser (DV's logsumexp of the negatives),
one pass writing per-program partial sums (and DV's per-program logsumexp) and one
program merging them in order; one elementwise pass for its gradient, which reads the
forward's normaliser (a caller without it has DV's recomputed first). No checks here: the
callers' ops check their arguments."""

import torch
import triton
import triton.language as tl

from .estimators import ESTIMATORS
from .precision import accumulation_dtype
from .triton_launch import device_of, tl_dtype
from .triton_math import (
    DV,
    INFONCE,
    lse_of,
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
    # Every column is written (an unused one with its identity): the buffer needs no fill.
    neg_sum = tl.sum(tl.zeros((BLOCK,), ACC))
    neg_lse = -float("inf") + neg_sum
    if EST == INFONCE:
        lse = _infonce_row_lse(pos, neg_ptr, offs, in_pos, n_pos, num_neg, ACC)
        pos_sum = tl.sum(tl.where(in_pos, pos - lse, 0.0))
    else:
        pos_sum = tl.sum(tl.where(in_pos, positive_term(pos, EST), 0.0))
        in_neg = offs < n_neg
        neg = tl.load(neg_ptr + offs, mask=in_neg, other=0.0).to(ACC)
        if EST == DV:
            shift = lse_shift(tl.max(tl.where(in_neg, neg, -float("inf"))))
            neg_lse = shift + tl.log(tl.sum(tl.where(in_neg, tl.exp(neg - shift), 0.0)))
        else:
            neg_sum = tl.sum(tl.where(in_neg, negative_term(neg, EST), 0.0))
    tl.store(partial_ptr + pid * 3, pos_sum)
    tl.store(partial_ptr + pid * 3 + 1, neg_sum)
    tl.store(partial_ptr + pid * 3 + 2, neg_lse)


@triton.jit
def _merged(partial_ptr, n_partials, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """The partials merged in order: the sums of their first two columns and the
    logsumexp of the third (inf-safe)."""
    sums = tl.zeros((BLOCK,), ACC)
    neg_sums = tl.zeros((BLOCK,), ACC)
    lane_max = tl.full((BLOCK,), -float("inf"), ACC)
    lane_sum = tl.zeros((BLOCK,), ACC)
    for start in range(0, n_partials, BLOCK):
        i = start + tl.arange(0, BLOCK)
        row = partial_ptr + i * 3
        sums += tl.load(row, mask=i < n_partials, other=0.0)
        neg_sums += tl.load(row + 1, mask=i < n_partials, other=0.0)
        x = tl.load(row + 2, mask=i < n_partials, other=-float("inf"))
        new_max = tl.maximum(lane_max, x)
        lane_sum = lse_rescaled(lane_sum, lane_max, new_max) + tl.exp(x - lse_shift(new_max))
        lane_max = new_max
    top = tl.max(lane_max, axis=0)
    lse = lse_of(tl.sum(lse_rescaled(lane_sum, lane_max, top), axis=0), top)
    return tl.sum(sums, axis=0), tl.sum(neg_sums, axis=0), lse


@triton.jit
def _estimate_kernel(
    partial_ptr,
    out_ptr,
    normaliser_ptr,
    n_partials,
    n_pos,
    n_neg,
    num_neg,
    EST: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program: the estimate from the merged partials, in the scores' dtype, and its
    normaliser (DV's logsumexp of the negatives, else 0) in ACC."""
    pos_sum, neg_sum, neg_lse = _merged(partial_ptr, n_partials, ACC, BLOCK)
    pos_mean = pos_sum / n_pos
    zero = tl.zeros((), ACC)  # counts as ACC (an int argument of 1 arrives as a Python int)
    normaliser = zero
    if EST == INFONCE:
        estimate = pos_mean + tl.log(zero + (num_neg + 1))
    elif EST == DV:
        estimate = pos_mean - (neg_lse - tl.log(zero + n_neg))
        normaliser = neg_lse
    else:
        estimate = pos_mean - neg_sum / n_neg
    tl.store(out_ptr, estimate.to(out_ptr.dtype.element_ty))
    tl.store(normaliser_ptr, normaliser)


@triton.jit
def _gradient_kernel(
    pos_ptr,
    neg_ptr,
    grad_ptr,
    normaliser_ptr,
    dpos_ptr,
    dneg_ptr,
    n_pos,
    n_neg,
    num_neg,
    EST: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """d(estimate)/d(scores) times the incoming gradient (DV's normaliser: one value, read
    by every program)."""
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
            d = tl.exp(neg - tl.load(normaliser_ptr))
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
    # Columns: sum of Ep (or of pos - lse), sum of Eq, logsumexp of neg.
    partial = torch.empty(grid[0], 3, dtype=accumulation_dtype(pos.dtype), device=pos.device)
    with device_of(pos):
        _partials_kernel[grid](pos, neg, partial, pos.numel(), neg.numel(), num_neg, **meta)
    return partial


def estimate(
    pos: torch.Tensor, neg: torch.Tensor, estimator: str, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bound of contiguous, checked scores, a 0-dim tensor of ``dtype`` (default: the
    scores'), and its normaliser (0-dim, the accumulation dtype; what ``gradient`` reads),
    in 2 launches."""
    partial = _partials(pos, neg, estimator)
    _, num_neg, meta = _launch_args(pos, neg, estimator)
    out = torch.empty((), dtype=dtype or pos.dtype, device=pos.device)
    normaliser = torch.empty((), dtype=partial.dtype, device=pos.device)
    with device_of(pos):
        _estimate_kernel[(1,)](partial, out, normaliser, partial.shape[0], pos.numel(), neg.numel(), num_neg, **meta)
    return out, normaliser


def gradient(
    grad: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    estimator: str,
    dpos: torch.Tensor,
    dneg: torch.Tensor,
    normaliser: torch.Tensor | None = None,
) -> None:
    """Writes d(bound)/d(scores) times ``grad`` (one element) into ``dpos`` and ``dneg``
    (contiguous, shaped like the scores): one launch given the forward's ``normaliser``.
    Only DV reads it: without it, DV's is recomputed first (the estimate's 2 launches)."""
    grid, num_neg, meta = _launch_args(pos, neg, estimator)
    if normaliser is None:
        normaliser = estimate(pos, neg, estimator)[1] if estimator == "dv" else grad  # grad: never read
    with device_of(pos):
        _gradient_kernel[grid](pos, neg, grad, normaliser, dpos, dneg, pos.numel(), neg.numel(), num_neg, **meta)
