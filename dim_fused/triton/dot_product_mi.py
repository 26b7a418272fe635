"""dot_product_mi in Triton. Forward: one fused kernel per (row block, column
block) of the score matrix — tl.dot over E, then the estimator epilogue — writes
per-row partial statistics; nothing of size G x B x L reaches memory. Backward:
the same kernel shape recomputes a tile of scores and writes d(estimate)/d(score)
for one chunk of images, and two GEMMs (torch.mm) turn it into the gradients."""

import math
import os

import torch
import triton
import triton.language as tl

from ..estimators import ESTIMATORS
from ._math import DV, INFONCE, negative_term, negative_term_grad, positive_term, positive_term_grad, sigmoid

BLOCK_M, BLOCK_N, BLOCK_K = 32, 32, 32


def _max_programs() -> int:
    """Forward programs at most (DIM_FUSED_TRITON_PROGRAMS overrides): bounds the partials
    at (G, about 2048 / (G / BLOCK_M), 4) whatever B * L is."""
    return max(1, int(os.environ.get("DIM_FUSED_TRITON_PROGRAMS", 2048)))


def _tile_scores() -> int:
    """Scores per backward chunk, as in the C++ driver (DIM_FUSED_TILE_SCORES overrides)."""
    return max(1, int(os.environ.get("DIM_FUSED_TILE_SCORES", 1 << 20)))


@triton.jit
def _score_tile(
    global_ptr,
    local_ptr,
    rows,
    cols,
    n_rows,
    n_cols,
    units,
    locations,
    ACC: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """u[rows, cols] = <global[row], local[image, :, location]> for col = image * L + location."""
    image = cols // locations
    location = cols % locations
    acc = tl.zeros((rows.shape[0], cols.shape[0]), dtype=ACC)
    for k0 in range(0, units, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        g = tl.load(
            global_ptr + rows[:, None] * units + ks[None, :],
            mask=(rows[:, None] < n_rows) & (ks[None, :] < units),
            other=0.0,
        )
        x = tl.load(
            local_ptr + image[None, :] * units * locations + ks[:, None] * locations + location[None, :],
            mask=(ks[:, None] < units) & (cols[None, :] < n_cols),
            other=0.0,
        )
        if ALLOW_TF32:
            acc += tl.dot(g, x, out_dtype=ACC)
        else:
            acc += tl.dot(g, x, input_precision="ieee", out_dtype=ACC)
    return acc


@triton.jit
def _program_tile(
    global_ptr,
    local_ptr,
    col_block,
    n_rows,
    n_cols,
    units,
    locations,
    offset,
    ACC: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The (rows of this program, cols of col_block) tile of scores, which of them exist,
    and which are positive pairs."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    s = _score_tile(global_ptr, local_ptr, rows, cols, n_rows, n_cols, units, locations, ACC, ALLOW_TF32, BLOCK_K)
    valid = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    positive = valid & ((rows[:, None] - offset) == (cols[None, :] // locations))
    return rows, cols, s, valid, positive


@triton.jit
def _reduce_kernel(
    global_ptr,
    local_ptr,
    partial_ptr,
    positives_ptr,
    n_rows,
    n_cols,
    units,
    locations,
    offset,
    EST: tl.constexpr,
    ACC: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Column blocks pid_n, pid_n + splits, ...: running per-row sums and an online
    # logsumexp, so the partials are (G, splits), not one per column block.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_rows = rows < n_rows
    pos_sum = tl.zeros((BLOCK_M,), dtype=ACC)
    neg_sum = tl.zeros((BLOCK_M,), dtype=ACC)
    row_max = tl.full((BLOCK_M,), -float("inf"), dtype=ACC)
    row_sum = tl.zeros((BLOCK_M,), dtype=ACC)
    for col_block in range(tl.program_id(1), tl.cdiv(n_cols, BLOCK_N), tl.num_programs(1)):
        rows, cols, s, valid, positive = _program_tile(
            global_ptr,
            local_ptr,
            col_block,
            n_rows,
            n_cols,
            units,
            locations,
            offset,
            ACC,
            ALLOW_TF32,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
        )
        negative = valid & ~positive
        if EST == INFONCE:
            tl.store(positives_ptr + (rows[:, None] * 0 + cols[None, :]), s, mask=positive)
        else:
            pos_sum += tl.sum(tl.where(positive, positive_term(s, EST), 0.0), axis=1)
        if EST == DV or EST == INFONCE:
            new_max = tl.maximum(row_max, tl.max(tl.where(negative, s, -float("inf")), axis=1))
            shift = tl.where(new_max == -float("inf"), 0.0, new_max)
            tile_sum = tl.sum(tl.where(negative, tl.exp(s - shift[:, None]), 0.0), axis=1)
            row_sum = row_sum * tl.exp(row_max - shift) + tile_sum
            row_max = new_max
        else:
            neg_sum += tl.sum(tl.where(negative, negative_term(s, EST), 0.0), axis=1)
    out = partial_ptr + (rows * tl.num_programs(1) + tl.program_id(1)) * 4
    tl.store(out, pos_sum, mask=in_rows)
    tl.store(out + 1, neg_sum, mask=in_rows)
    tl.store(out + 2, row_max, mask=in_rows)
    tl.store(out + 3, row_sum, mask=in_rows)


@triton.jit
def _gradient_kernel(
    global_ptr,
    local_ptr,
    coef_ptr,
    out_ptr,
    n_rows,
    n_cols,
    units,
    locations,
    offset,
    EST: tl.constexpr,
    ACC: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows, cols, s, valid, positive = _program_tile(
        global_ptr,
        local_ptr,
        tl.program_id(1),
        n_rows,
        n_cols,
        units,
        locations,
        offset,
        ACC,
        ALLOW_TF32,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
    )
    in_rows = rows < n_rows
    pos_scale = tl.load(coef_ptr + rows * 4, mask=in_rows, other=0.0)[:, None]
    neg_scale = tl.load(coef_ptr + rows * 4 + 1, mask=in_rows, other=0.0)[:, None]
    row_lse = tl.load(coef_ptr + rows * 4 + 2, mask=in_rows, other=0.0)[:, None]
    shift = tl.load(coef_ptr + rows * 4 + 3, mask=in_rows, other=0.0)[:, None]
    if EST == INFONCE:
        d_pos = pos_scale * sigmoid(row_lse - s)
    elif EST == DV:
        d_pos = pos_scale + 0.0 * s
    else:
        d_pos = pos_scale * positive_term_grad(s, EST)
    if EST == DV or EST == INFONCE:
        d_neg = -neg_scale * tl.exp((s - row_lse) + shift)
    else:
        d_neg = -neg_scale * negative_term_grad(s, EST)
    d = tl.where(positive, d_pos, d_neg)
    # (images, G, L) layout, like the C++ driver's tiles: the GEMMs after it need no transposes.
    out = out_ptr + ((cols[None, :] // locations) * n_rows + rows[:, None]) * locations + cols[None, :] % locations
    tl.store(out, d.to(out_ptr.dtype.element_ty), mask=valid)


def _meta(local: torch.Tensor, estimator: str) -> dict:
    return {
        "EST": ESTIMATORS.index(estimator),
        "ACC": tl.float64 if local.dtype == torch.float64 else tl.float32,
        "ALLOW_TF32": bool(local.is_cuda and torch.backends.cuda.matmul.allow_tf32 and local.dtype == torch.float32),
        "BLOCK_M": BLOCK_M,
        "BLOCK_N": BLOCK_N,
        "BLOCK_K": BLOCK_K,
    }


def forward(local: torch.Tensor, global_codes: torch.Tensor, estimator: str, official: bool, offset: int):
    batch, units = local.shape[:2]
    local3 = local.reshape(batch, units, -1).contiguous()
    global_codes = global_codes.contiguous()
    locations, globals_ = local3.shape[2], global_codes.shape[0]
    n_cols = batch * locations
    acc = torch.float64 if local.dtype == torch.float64 else torch.float32
    row_blocks, col_blocks = triton.cdiv(globals_, BLOCK_M), triton.cdiv(n_cols, BLOCK_N)
    grid = (row_blocks, min(col_blocks, max(1, _max_programs() // row_blocks)))
    # Columns: sum of Ep, sum of Eq, max and sum of exp(x - max) over the negatives.
    partial = torch.empty(globals_, grid[1], 4, dtype=acc, device=local.device)
    positives = torch.empty(batch, locations, dtype=acc, device=local.device)
    _reduce_kernel[grid](
        global_codes, local3, partial, positives, globals_, n_cols, units, locations, offset, **_meta(local, estimator)
    )
    num_pos, num_neg = n_cols, (globals_ - 1) * n_cols
    stats = torch.zeros(globals_, 2, dtype=acc, device=local.device)
    neg_lse = torch.logsumexp(partial[..., 2] + partial[..., 3].log(), dim=1)
    if estimator == "infonce":
        if official:  # the official code keeps the L self pairs at score -10
            neg_lse = torch.logaddexp(neg_lse, torch.full_like(neg_lse, -10.0 + math.log(locations)))
        candidates_lse = torch.logaddexp(positives, neg_lse[:, None])
        estimate = (positives - candidates_lse).mean()
        if not official:
            estimate = estimate + math.log1p((batch - 1) * locations)
        stats[:, 0] = neg_lse
        stats[:, 1] = torch.logsumexp(neg_lse[:, None] - candidates_lse, dim=1)
    else:
        pos_mean = partial[..., 0].sum() / num_pos
        if estimator == "dv":
            lse = torch.logsumexp(neg_lse, dim=0)
            estimate = pos_mean - (lse - math.log(num_neg)) - (math.log(locations) if official else 0.0)
            stats[:, 0] = lse
        else:
            estimate = pos_mean - partial[..., 1].sum() / num_neg
    return estimate.to(local.dtype), stats


def backward(grad, local, global_codes, stats, estimator: str, official: bool, offset: int):
    batch, units = local.shape[:2]
    local3 = local.reshape(batch, units, -1).contiguous()
    global_codes = global_codes.contiguous()
    locations, globals_ = local3.shape[2], global_codes.shape[0]
    num_pos, num_neg = batch * locations, (globals_ - 1) * batch * locations
    g = grad.to(stats.dtype).reshape(())
    coef = torch.zeros(globals_, 4, dtype=stats.dtype, device=stats.device)
    coef[:, 0] = g / num_pos
    if estimator == "infonce":
        coef[:, 1] = g / num_pos
        coef[:, 2:] = stats
    elif estimator == "dv":
        coef[:, 1] = g
        coef[:, 2] = stats[:, 0]
    else:
        coef[:, 1] = g / num_neg
    d_global = torch.zeros(globals_, units, dtype=stats.dtype, device=local.device)
    d_local = torch.empty_like(local3)
    zero = torch.zeros(globals_, units, dtype=local.dtype, device=local.device)
    step = max(1, min(batch, _tile_scores() // (globals_ * locations)))
    meta = _meta(local, estimator)
    for first in range(0, batch, step):
        images = min(step, batch - first)
        chunk = local3[first : first + images]
        n_cols = images * locations
        tile = torch.empty(images, globals_, locations, dtype=local.dtype, device=local.device)
        grid = (triton.cdiv(globals_, BLOCK_M), triton.cdiv(n_cols, BLOCK_N))
        _gradient_kernel[grid](
            global_codes, chunk, coef, tile, globals_, n_cols, units, locations, offset + first, **meta
        )
        d_global += torch.addbmm(zero, tile, chunk.transpose(1, 2), beta=0)
        torch.bmm(global_codes.t().expand(images, units, globals_), tile, out=d_local[first : first + images])
    return d_local.view(local.shape), d_global.to(global_codes.dtype)
