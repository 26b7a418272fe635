"""dot_product_mi in Triton, 4 launches forward+backward at one score tile. Forward: one
fused kernel per (row block, split of the column blocks) of the score matrix — tl.dot over
E, then the estimator epilogue with running sums and an online logsumexp — writes per-row
partial statistics (nothing of size G x B x L reaches memory), and one program merges
them into the estimate and the (G, 2) statistics the backward reads. Backward: the same
score tile, recomputed exactly as the forward computed it (so its softmax weights match the
forward's statistics at any magnitude), becomes d(estimate)/d(score), with the
coefficients read from those statistics in the kernel; one kernel, two families of
programs, turns it into both inputs' gradients (the GEMMs dSᵀ global and dS local, for
either layout of the codes). The argument checks are the C++ plan's (check_dot_product);
the statistics of the across-ranks merge are its row totals (docs/design.md,
"Encode-and-dot")."""

import torch
import triton
import triton.language as tl

from ..common import tunables
from ..common.estimators import ESTIMATORS
from ..common.precision import accumulation_dtype, tf32_allowed
from ..common.triton_launch import ALL_TILES, device_of, dot, no_autocast, product, tl_dtype, tuned
from ..common.triton_math import (
    DV,
    INFONCE,
    NEG_MAX,
    NEG_SUM,
    NEG_SUM_EXP,
    POS_SUM,
    ROW_STATS,
    lse_of,
    lse_rescaled,
    lse_shift,
    negative_term,
    negative_term_grad,
    positive_term,
    positive_term_grad,
    sigmoid,
)
from .layout import gradient_like

TUNING_KEY = ["num_globals", "num_columns", "units", "EST", "ALLOW_TF32", "AFFINE", "WIDE"]  # + the dtypes
FINISH_ROWS, FINISH_LOCATIONS = 32, 32  # the merge's block of rows and of an InfoNCE row's positives


@triton.jit
def _score_tile(
    global_ptr,
    local_ptr,
    rows,
    cols,
    num_globals,
    num_columns,
    units,
    locations,
    stride_global,
    stride_global_unit,
    stride_image,
    stride_unit,
    stride_location,
    ACC: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    AFFINE: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """u[row, col] = <global[row], local[image, :, location]> for col = image * L + location.
    AFFINE: the columns are evenly spaced in memory (channels-last codes, or one location),
    so their addresses are one stride apart instead of gathered per (image, location).
    WIDE: an offset can pass 2^31 elements, so offsets are 64-bit (else 32-bit, which keeps
    the address registers of a tile half as many)."""
    in_rows, in_cols = rows < num_globals, cols < num_columns
    if WIDE:
        rows, cols = rows.to(tl.int64), cols.to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    g_ptrs = global_ptr + rows[:, None] * stride_global + ks[None, :] * stride_global_unit
    if AFFINE:
        column_stride = stride_location if locations > 1 else stride_image
        x_ptrs = local_ptr + cols[None, :] * column_stride + ks[:, None] * stride_unit
    else:
        columns = (cols // locations) * stride_image + (cols % locations) * stride_location
        x_ptrs = local_ptr + columns[None, :] + ks[:, None] * stride_unit
    scores = tl.zeros((rows.shape[0], cols.shape[0]), dtype=ACC)
    for k0 in range(0, units, BLOCK_K):
        in_units = ks < units - k0
        g = tl.load(g_ptrs, mask=in_rows[:, None] & in_units[None, :], other=0.0)
        x = tl.load(x_ptrs, mask=in_units[:, None] & in_cols[None, :], other=0.0)
        scores += dot(g, x, ACC, ALLOW_TF32)
        g_ptrs += BLOCK_K * stride_global_unit
        x_ptrs += BLOCK_K * stride_unit
    return scores


# The partials have room for as many splits as the tile with the most; the merge reads the
# splits of the tile that ran (nothing filled first, nothing to restore after timing runs).
@tuned(key=TUNING_KEY, dtype_arg="global_ptr")
@triton.jit(do_not_specialize=["partial_splits"])  # a stride: 1 would compile another kernel
def _reduce_kernel(
    global_ptr,
    local_ptr,
    partial_ptr,
    positives_ptr,
    partial_splits,
    num_globals,
    num_columns,
    units,
    locations,
    offset,
    stride_global,
    stride_global_unit,
    stride_image,
    stride_unit,
    stride_location,
    EST: tl.constexpr,
    ACC: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    AFFINE: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Per-row statistics over the column blocks split, split + splits, ... (into row ``row``'s
    ``partial_splits`` partials): a row's positives are the L columns of image
    row - offset, the rest are its negatives."""
    split, splits = tl.program_id(1), tl.num_programs(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_rows = rows < num_globals
    pos_sum = tl.zeros((BLOCK_M,), dtype=ACC)
    neg_sum = tl.zeros((BLOCK_M,), dtype=ACC)
    neg_max = tl.full((BLOCK_M,), -float("inf"), dtype=ACC)
    neg_sum_exp = tl.zeros((BLOCK_M,), dtype=ACC)
    for col_block in range(split, tl.cdiv(num_columns, BLOCK_N), splits):
        cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
        scores = _score_tile(
            global_ptr,
            local_ptr,
            rows,
            cols,
            num_globals,
            num_columns,
            units,
            locations,
            stride_global,
            stride_global_unit,
            stride_image,
            stride_unit,
            stride_location,
            ACC,
            ALLOW_TF32,
            AFFINE,
            WIDE,
            BLOCK_K,
        )
        valid = in_rows[:, None] & (cols < num_columns)[None, :]
        positive = valid & ((cols // locations)[None, :] == (rows - offset)[:, None])
        negative = valid & ~positive
        if EST == INFONCE:  # each column has at most one positive row: keep its score
            column_positive = tl.sum(tl.where(positive, scores, 0.0), axis=0)
            has_positive = tl.sum(positive.to(tl.int32), axis=0) > 0
            tl.store(positives_ptr + cols, column_positive, mask=has_positive)
        else:
            pos_sum += tl.sum(tl.where(positive, positive_term(scores, EST), 0.0), axis=1)
        if EST == INFONCE or EST == DV:
            new_max = tl.maximum(neg_max, tl.max(tl.where(negative, scores, -float("inf")), axis=1))
            tile_sum = tl.sum(tl.where(negative, tl.exp(scores - lse_shift(new_max)[:, None]), 0.0), axis=1)
            neg_sum_exp = lse_rescaled(neg_sum_exp, neg_max, new_max) + tile_sum
            neg_max = new_max
        else:
            neg_sum += tl.sum(tl.where(negative, negative_term(scores, EST), 0.0), axis=1)
    out = partial_ptr + (rows.to(tl.int64) * partial_splits + split) * ROW_STATS
    tl.store(out + POS_SUM, pos_sum, mask=in_rows)
    tl.store(out + NEG_SUM, neg_sum, mask=in_rows)
    tl.store(out + NEG_MAX, neg_max, mask=in_rows)
    tl.store(out + NEG_SUM_EXP, neg_sum_exp, mask=in_rows)


@tuned(key=TUNING_KEY, dtype_arg="global_ptr")  # writes every element of its tile
@triton.jit
def _gradient_kernel(
    global_ptr,
    local_ptr,
    grad_ptr,
    stats_ptr,
    out_ptr,
    first,
    num_globals,
    num_columns,
    tile_columns,
    units,
    locations,
    offset,
    stride_global,
    stride_global_unit,
    stride_image,
    stride_unit,
    stride_location,
    EST: tl.constexpr,
    ACC: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    AFFINE: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The (G, tile_columns) tile of d(estimate)/d(score) times the gradient scale B * L
    (so that a half-precision tile holds values near 1), for the columns [first, first +
    tile_columns), from the incoming gradient and the forward's per-row statistics (the
    negatives' logsumexp and InfoNCE's shift). The column blocks are on the grid's first
    axis, whose extent is not limited to 65535: B * L can be millions."""
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    tile_cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = first + tile_cols
    scores = _score_tile(
        global_ptr,
        local_ptr,
        rows,
        cols,
        num_globals,
        num_columns,
        units,
        locations,
        stride_global,
        stride_global_unit,
        stride_image,
        stride_unit,
        stride_location,
        ACC,
        ALLOW_TF32,
        AFFINE,
        WIDE,
        BLOCK_K,
    )
    in_rows = rows < num_globals
    # Per row, as csrc/dot_product_mi's coefficients: the positives' scale grad / #positives
    # and the negatives' (f-measures: grad / #negatives; DV: grad, over its softmax), times B * L.
    pos_scale = tl.load(grad_ptr).to(ACC)
    neg_lse = tl.load(stats_ptr + rows * 2, mask=in_rows, other=0.0)[:, None]
    shift = tl.load(stats_ptr + rows * 2 + 1, mask=in_rows, other=0.0)[:, None]
    if EST == DV:
        neg_scale = pos_scale * num_columns
    elif EST == INFONCE:
        neg_scale = pos_scale
    else:
        neg_scale = pos_scale / (num_globals - 1)
    if EST == INFONCE:
        d_pos = pos_scale * sigmoid(neg_lse - scores)
    elif EST == DV:
        d_pos = tl.broadcast_to(pos_scale, scores.shape)
    else:
        d_pos = pos_scale * positive_term_grad(scores, EST)
    if EST == INFONCE or EST == DV:
        d_neg = -neg_scale * tl.exp((scores - neg_lse) + shift)
    else:
        d_neg = -neg_scale * negative_term_grad(scores, EST)
    positive = (cols // locations)[None, :] == (rows - offset)[:, None]
    valid = in_rows[:, None] & (tile_cols < tile_columns)[None, :]
    out = out_ptr + rows.to(tl.int64)[:, None] * tile_columns + tile_cols[None, :]
    tl.store(out, tl.where(positive, d_pos, d_neg).to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _logaddexp(a, b):
    top = tl.maximum(a, b)
    return lse_shift(top) + tl.log(tl.exp(a - lse_shift(top)) + tl.exp(b - lse_shift(top)))


@triton.jit
def _row_totals(partial_ptr, rows, in_rows, partial_splits, splits, ACC: tl.constexpr):
    """Each row's first `splits` partials (of room for `partial_splits`) merged in order:
    (sum Ep, sum Eq, the negatives' logsumexp)."""
    pos = tl.zeros(rows.shape, dtype=ACC)
    neg = tl.zeros(rows.shape, dtype=ACC)
    top = tl.full(rows.shape, -float("inf"), dtype=ACC)
    total = tl.zeros(rows.shape, dtype=ACC)
    at = partial_ptr + rows.to(tl.int64) * partial_splits * ROW_STATS
    for _ in range(0, splits):
        pos += tl.load(at + POS_SUM, mask=in_rows, other=0.0)
        neg += tl.load(at + NEG_SUM, mask=in_rows, other=0.0)
        split_max = tl.load(at + NEG_MAX, mask=in_rows, other=-float("inf"))
        split_sum = tl.load(at + NEG_SUM_EXP, mask=in_rows, other=0.0)
        new_top = tl.maximum(top, split_max)
        total = lse_rescaled(total, top, new_top) + lse_rescaled(split_sum, split_max, new_top)
        top = new_top
        at += ROW_STATS
    return pos, neg, lse_of(total, top)


@triton.jit
def _finish_kernel(
    partial_ptr, positives_ptr, out_ptr, stats_ptr, num_globals, partial_splits, splits, batch, locations,
    EST: tl.constexpr, OFFICIAL: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """One program: the estimate (in out's dtype) and the (G, 2) statistics the backward
    reads (the negatives' logsumexp per row, or DV's over all; InfoNCE's shift
    log sum_p exp(lse - lse_p)), from the per-row partials, as csrc/dot_product_mi's finish."""
    zero = tl.zeros((), ACC)
    num_pos = zero + batch * locations
    num_neg = num_pos * (num_globals - 1)
    row_block = tl.arange(0, BLOCK_R)
    sums = tl.zeros((BLOCK_R,), dtype=ACC)
    neg_sums = tl.zeros((BLOCK_R,), dtype=ACC)
    lane_top = tl.full((BLOCK_R,), -float("inf"), dtype=ACC)
    lane_total = tl.zeros((BLOCK_R,), dtype=ACC)
    for r0 in range(0, num_globals, BLOCK_R):
        rows = r0 + row_block
        in_rows = rows < num_globals
        pos, neg, neg_lse = _row_totals(partial_ptr, rows, in_rows, partial_splits, splits, ACC)
        if EST == INFONCE:  # G == B: row b's positives are image b's L scores
            row_lse = neg_lse
            if OFFICIAL:  # the official code keeps the L self pairs at score -10
                row_lse = _logaddexp(row_lse, -10.0 + tl.log(zero + locations))
            top = tl.full((BLOCK_R,), -float("inf"), dtype=ACC)
            total = tl.zeros((BLOCK_R,), dtype=ACC)
            for l0 in range(0, locations, BLOCK_L):
                ls = l0 + tl.arange(0, BLOCK_L)
                valid = in_rows[:, None] & (ls < locations)[None, :]
                p = tl.load(positives_ptr + rows[:, None] * locations + ls[None, :], mask=valid, other=0.0)
                candidates = _logaddexp(p, row_lse[:, None])
                sums += tl.sum(tl.where(valid, p - candidates, 0.0), axis=1)
                x = tl.where(valid, row_lse[:, None] - candidates, -float("inf"))
                new_top = tl.maximum(top, tl.max(x, axis=1))
                total = lse_rescaled(total, top, new_top) + tl.sum(tl.exp(x - lse_shift(new_top)[:, None]), axis=1)
                top = new_top
            tl.store(stats_ptr + rows * 2, row_lse, mask=in_rows)
            tl.store(stats_ptr + rows * 2 + 1, lse_of(total, top), mask=in_rows)
        else:
            sums += tl.where(in_rows, pos, 0.0)
            neg_sums += tl.where(in_rows, neg, 0.0)
            x = tl.where(in_rows, neg_lse, -float("inf"))
            new_top = tl.maximum(lane_top, x)
            lane_total = lse_rescaled(lane_total, lane_top, new_top) + tl.exp(x - lse_shift(new_top))
            lane_top = new_top
    pos_mean = tl.sum(sums, axis=0) / num_pos
    if EST == INFONCE:
        estimate = pos_mean
        if not OFFICIAL:
            estimate += tl.log(zero + 1 + (batch - 1) * locations)
    elif EST == DV:
        top = tl.max(lane_top, axis=0)
        lse = lse_of(tl.sum(lse_rescaled(lane_total, lane_top, top), axis=0), top)
        estimate = pos_mean - (lse - tl.log(num_neg))
        if OFFICIAL:
            estimate -= tl.log(zero + locations)
        for r0 in range(0, num_globals, BLOCK_R):
            rows = r0 + row_block
            tl.store(stats_ptr + rows * 2, tl.zeros((BLOCK_R,), dtype=ACC) + lse, mask=rows < num_globals)
            tl.store(stats_ptr + rows * 2 + 1, tl.zeros((BLOCK_R,), dtype=ACC), mask=rows < num_globals)
    else:
        estimate = pos_mean - tl.sum(neg_sums, axis=0) / num_neg
        for r0 in range(0, num_globals, BLOCK_R):
            rows = r0 + row_block
            tl.store(stats_ptr + rows * 2, tl.zeros((BLOCK_R,), dtype=ACC), mask=rows < num_globals)
            tl.store(stats_ptr + rows * 2 + 1, tl.zeros((BLOCK_R,), dtype=ACC), mask=rows < num_globals)
    tl.store(out_ptr, estimate.to(out_ptr.dtype.element_ty))


@tuned(key=["num_globals", "tile_columns", "units", "ALLOW_TF32", "AFFINE", "WIDE"], dtype_arg="global_ptr")
@triton.jit
def _tile_gradients_kernel(
    tile_ptr, global_ptr, local_ptr, d_local_ptr, d_global_ptr, unscale, first, num_globals, tile_columns, units,
    locations, stride_global, stride_global_unit, stride_image, stride_unit, stride_location,
    stride_d_image, stride_d_unit, stride_d_location,
    ACCUMULATE: tl.constexpr, ACC: tl.constexpr, ALLOW_TF32: tl.constexpr, AFFINE: tl.constexpr, WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """A tile of dS (G, tile_columns; columns [first, first + tile_columns)) into both
    gradients, unscaled, one launch, two families of programs: d local[:, :, column] =
    dSᵀ global (written in the gradient's strides, in its dtype) for (BLOCK_M columns,
    BLOCK_N units) blocks, then d global += dS local for (BLOCK_M rows, BLOCK_N units)
    blocks (ACCUMULATE: added to what earlier tiles wrote)."""
    pid = tl.program_id(0)
    unit_blocks = tl.cdiv(units, BLOCK_N)
    local_programs = tl.cdiv(tile_columns, BLOCK_M) * unit_blocks
    us = (pid % unit_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_units = us < units
    if pid < local_programs:
        cs = (pid // unit_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        in_cs = cs < tile_columns
        acc = product(
            tile_ptr + cs[:, None], tile_columns, global_ptr + us[None, :] * stride_global_unit, stride_global,
            in_cs[:, None], in_units[None, :], num_globals, ACC, ALLOW_TF32, BLOCK_K,
        )  # fmt: skip
        cols = first + cs
        if WIDE:
            cols = cols.to(tl.int64)
        at = (cols // locations) * stride_d_image + (cols % locations) * stride_d_location
        d_local_out = d_local_ptr + at[:, None] + us[None, :] * stride_d_unit
        tl.store(d_local_out, (acc * unscale).to(d_local_ptr.dtype.element_ty), mask=in_cs[:, None] & in_units[None, :])
    else:
        rows = ((pid - local_programs) // unit_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        in_rows = rows < num_globals
        ks = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        d_ptrs = tile_ptr + rows[:, None].to(tl.int64) * tile_columns + ks[None, :]
        for k0 in range(0, tile_columns, BLOCK_K):
            in_k = ks < tile_columns - k0
            d = tl.load(d_ptrs, mask=in_rows[:, None] & in_k[None, :], other=0.0)
            d_ptrs += BLOCK_K
            cols = first + k0 + ks
            if WIDE:
                cols = cols.to(tl.int64)
            if AFFINE:
                x_at = cols * (stride_location if locations > 1 else stride_image)
            else:
                x_at = (cols // locations) * stride_image + (cols % locations) * stride_location
            x_mask = in_k[:, None] & in_units[None, :]
            x = tl.load(local_ptr + x_at[:, None] + us[None, :] * stride_unit, mask=x_mask, other=0.0)
            acc += dot(d.to(x.dtype), x, ACC, ALLOW_TF32)
        d_global_out = d_global_ptr + rows[:, None] * units + us[None, :]
        keep = in_rows[:, None] & in_units[None, :]
        acc = acc * unscale
        if ACCUMULATE:
            acc += tl.load(d_global_out, mask=keep, other=0.0).to(ACC)
        tl.store(d_global_out, acc.to(d_global_ptr.dtype.element_ty), mask=keep)


def _multiprocessors(device: torch.device) -> int:
    """The GPU's streaming multiprocessors (the interpreter runs as a 4-SM device)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def reduce_grid(num_globals: int, num_columns: int, multiprocessors: int, programs: int):
    """The forward's grid for a tile (meta): (row blocks, splits of each row block's column
    blocks), enough programs for two per multiprocessor where there are that many tiles,
    each split one column block at least (none idle), at most `programs` programs in all
    (DIM_FUSED_TRITON_PROGRAMS)."""

    def grid(meta):
        row_blocks = triton.cdiv(num_globals, meta["BLOCK_M"])
        column_blocks = triton.cdiv(num_columns, meta["BLOCK_N"])
        splits = min(column_blocks, triton.cdiv(2 * multiprocessors, row_blocks), programs // row_blocks)
        return row_blocks, max(1, splits)

    return grid


def gradient_grid(num_globals: int, columns: int):
    """The backward's grid for a tile (meta) of a (G, columns) score tile: column blocks on
    the first axis (up to 2^31 - 1 programs; B * L can be millions), row blocks on the
    second (at most 65535: G is a batch or a gathered one)."""
    return lambda meta: (triton.cdiv(columns, meta["BLOCK_N"]), triton.cdiv(num_globals, meta["BLOCK_M"]))


def _last_offset(tensor: torch.Tensor) -> int:
    """The largest element offset a kernel computes into `tensor`."""
    return sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True))


class _Problem:
    """The launch arguments both kernels share."""

    def __init__(self, local: torch.Tensor, global_codes: torch.Tensor, estimator: str, offset: int):
        self.batch, self.units = local.shape[:2]
        self.local = local.reshape(self.batch, self.units, -1)  # a view for the layouts critics produce
        self.global_codes = global_codes
        self.locations, self.num_globals = self.local.shape[2], global_codes.shape[0]
        self.num_columns = self.batch * self.locations
        self.acc = accumulation_dtype(local.dtype)
        self.shape = {
            "num_globals": self.num_globals,
            "num_columns": self.num_columns,
            "units": self.units,
            "locations": self.locations,
            "offset": offset,
            "stride_global": global_codes.stride(0),
            "stride_global_unit": global_codes.stride(1),
            "stride_image": self.local.stride(0),
            "stride_unit": self.local.stride(1),
            "stride_location": self.local.stride(2),
        }
        stride_image, _, stride_location = self.local.stride()
        affine = self.locations == 1 or stride_image == self.locations * stride_location
        self.meta = {
            "EST": ESTIMATORS.index(estimator),
            "ACC": tl_dtype(self.acc),
            "ALLOW_TF32": tf32_allowed(local),
            "AFFINE": affine,
            "WIDE": max(_last_offset(self.local), _last_offset(global_codes)) >= 2**31,
        }


def _reduce(p: _Problem, local: torch.Tensor, global_codes: torch.Tensor):
    """(per-row partial statistics (G, splits, ROW_STATS), positives (B * L; InfoNCE only))."""
    # Each tile splits its row blocks' column blocks its own way: room for the most any tile
    # takes, and the view of the splits the tile that ran wrote.
    grid = reduce_grid(p.num_globals, p.num_columns, _multiprocessors(local.device), tunables.triton_programs())
    most = max(grid(t.kwargs)[1] for t in ALL_TILES)
    partial = torch.empty(p.num_globals, most, ROW_STATS.value, dtype=p.acc, device=local.device)
    positives = torch.empty(p.num_columns, dtype=p.acc, device=local.device)
    with device_of(local):
        _reduce_kernel[grid](global_codes, p.local, partial, positives, most, **p.shape, **p.meta)
    ran = _reduce_kernel.last_config  # None only when a compile-only harness ran no tile
    return partial[:, : grid(ran.kwargs)[1] if ran is not None else most], positives


@no_autocast
def forward(local, global_codes, estimator: str, official: bool, offset: int, tile_scores: int, keep_scores=False):
    """(estimate, stats, scores): the backward's kernels score each tile again (the scores are
    a by-product of their gradient kernel's GEMM), so none are kept."""
    torch.ops.dim_fused.check_dot_product(local, global_codes, estimator, offset, tile_scores, True, None, None)
    p = _Problem(local, global_codes, estimator, offset)
    partial, positives = _reduce(p, local, global_codes)
    estimate = torch.empty((), dtype=local.dtype, device=local.device)
    stats = torch.empty(p.num_globals, 2, dtype=p.acc, device=local.device)
    with device_of(local):
        _finish_kernel[(1,)](
            partial, positives, estimate, stats, p.num_globals, partial.stride(0) // ROW_STATS.value,
            partial.shape[1], p.batch, p.locations,
            EST=p.meta["EST"], OFFICIAL=official, ACC=p.meta["ACC"], BLOCK_R=FINISH_ROWS, BLOCK_L=FINISH_LOCATIONS,
        )  # fmt: skip
    return estimate, stats, stats.new_empty(0)


@no_autocast
def statistics(local, global_codes, estimator: str, offset: int, tile_scores: int):
    """Each global row's totals over these local images, and InfoNCE's positives (the C++
    op dot_product_mi_statistics)."""
    torch.ops.dim_fused.check_dot_product(local, global_codes, estimator, offset, tile_scores, False, None, None)
    p = _Problem(local, global_codes, estimator, offset)
    partial, positives = _reduce(p, local, global_codes)
    if estimator != "infonce":
        positives = positives.new_zeros(0)
    return torch.ops.dim_fused.dot_product_mi_row_totals(partial), positives


@no_autocast
def backward(
    grad, local, global_codes, stats, estimator: str, official: bool, offset: int, tile_scores: int, scores=None
):
    torch.ops.dim_fused.check_dot_product(local, global_codes, estimator, offset, tile_scores, False, grad, stats)
    p = _Problem(local, global_codes, estimator, offset)
    d_local = gradient_like(local)
    d_flat = d_local.view(p.batch, p.units, p.locations)
    step = max(1, min(p.batch, tile_scores // (p.num_globals * p.locations)))  # whole images per tile
    # One tile: d global written in its dtype at once; several: summed over the tiles in the
    # accumulation dtype, cast at the end.
    one_tile = step >= p.batch
    d_global = torch.empty(p.num_globals, p.units, dtype=global_codes.dtype if one_tile else p.acc, device=local.device)
    unscale = 1.0 / p.num_columns  # the tile carries the gradient scale B * L
    strides = {f"stride_d_{k}": v for k, v in zip(("image", "unit", "location"), d_flat.stride(), strict=True)}
    with device_of(local):
        for first in range(0, p.batch, step):
            n = min(step, p.batch - first) * p.locations
            tile = torch.empty(p.num_globals, n, dtype=p.acc, device=local.device)
            _gradient_kernel[gradient_grid(p.num_globals, n)](
                global_codes, p.local, grad, stats, tile, first * p.locations, tile_columns=n, **p.shape, **p.meta
            )
            grid = lambda meta, n=n: (  # noqa: E731
                (triton.cdiv(n, meta["BLOCK_M"]) + triton.cdiv(p.num_globals, meta["BLOCK_M"]))
                * triton.cdiv(p.units, meta["BLOCK_N"]),
            )
            _tile_gradients_kernel[grid](
                tile, global_codes, p.local, d_flat, d_global, unscale, first * p.locations, p.num_globals, n,
                p.units, p.locations, **{k: v for k, v in p.shape.items() if k.startswith("stride")}, **strides,
                ACCUMULATE=first > 0, ACC=p.meta["ACC"], ALLOW_TF32=p.meta["ALLOW_TF32"], AFFINE=p.meta["AFFINE"],
                WIDE=p.meta["WIDE"],
            )  # fmt: skip
    return d_local, d_global if one_tile else d_global.to(global_codes.dtype)
