"""dot_product_mi in Triton. Forward: one fused kernel per (row block, split of the
column blocks) of the score matrix — tl.dot over E, then the estimator epilogue
with running sums and an online logsumexp — writes per-row partial statistics;
nothing of size G x B x L reaches memory. Backward: the same score tile, recomputed
exactly as the forward computed it (so its softmax weights match the forward's
statistics at any magnitude), becomes d(estimate)/d(score) for a group of images.
The statistics finish, the gradient coefficients and the tile backward (the GEMMs
that turn a gradient tile into the inputs' gradients, for either layout of the
codes) are the C++ plan's ops (csrc/dot_product_mi/), and so are the argument
checks, so they exist once (docs/design.md, "Encode-and-dot")."""

import torch
import triton
import triton.language as tl

from ..common import tunables
from ..common.estimators import ESTIMATORS
from ..common.precision import accumulation_dtype, tf32_allowed
from ..common.triton_launch import ALL_TILES, device_of, no_autocast, tl_dtype, tuned
from ..common.triton_math import (
    DV,
    INFONCE,
    NEG_MAX,
    NEG_SUM,
    NEG_SUM_EXP,
    POS_SUM,
    ROW_STATS,
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


# Columns of the coefficients the backward reads per row, as csrc/common/estimators.h's DotCoef.
POS_SCALE, NEG_SCALE, NEG_LSE, SHIFT, COEFS = (tl.constexpr(i) for i in range(5))


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
        if ALLOW_TF32:
            scores += tl.dot(g, x, out_dtype=ACC)
        else:
            scores += tl.dot(g, x, input_precision="ieee", out_dtype=ACC)
        g_ptrs += BLOCK_K * stride_global_unit
        x_ptrs += BLOCK_K * stride_unit
    return scores


# The partials hold as many splits as the tile with the most (identity where a tile has fewer):
# restored after every timing run, so that only the winner's splits remain.
@tuned(key=TUNING_KEY, dtype_arg="global_ptr", restore_value=["partial_ptr"])
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
    coef_ptr,
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
    """The (G, tile_columns) tile of d(estimate)/d(score), times the coefficients'
    gradient scale, for the columns [first, first + tile_columns). The column blocks are on
    the grid's first axis, whose extent is not limited to 65535: B * L can be millions."""
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
    coef = coef_ptr + rows * COEFS
    pos_scale = tl.load(coef + POS_SCALE, mask=in_rows, other=0.0)[:, None]
    neg_scale = tl.load(coef + NEG_SCALE, mask=in_rows, other=0.0)[:, None]
    neg_lse = tl.load(coef + NEG_LSE, mask=in_rows, other=0.0)[:, None]
    shift = tl.load(coef + SHIFT, mask=in_rows, other=0.0)[:, None]
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
    # Each tile splits its row blocks' column blocks its own way (_splits); the partials hold
    # the most any tile takes, the rest at the identity, which the finish merges harmlessly.
    grid = reduce_grid(p.num_globals, p.num_columns, _multiprocessors(local.device), tunables.triton_programs())
    most = max(grid(t.kwargs)[1] for t in ALL_TILES)
    partial = torch.zeros(p.num_globals, most, ROW_STATS.value, dtype=p.acc, device=local.device)
    partial[:, :, NEG_MAX.value] = -float("inf")
    positives = torch.empty(p.num_columns, dtype=p.acc, device=local.device)
    with device_of(local):
        _reduce_kernel[grid](global_codes, p.local, partial, positives, most, **p.shape, **p.meta)
    return partial, positives


@no_autocast
def forward(local, global_codes, estimator: str, official: bool, offset: int, tile_scores: int):
    torch.ops.dim_fused.check_dot_product(local, global_codes, estimator, offset, tile_scores, True, None, None)
    p = _Problem(local, global_codes, estimator, offset)
    partial, positives = _reduce(p, local, global_codes)
    estimate, stats = torch.ops.dim_fused.dot_product_mi_finish(
        partial, positives, estimator, official, p.batch, p.locations
    )
    return estimate.to(local.dtype), stats


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
def backward(grad, local, global_codes, stats, estimator: str, official: bool, offset: int, tile_scores: int):
    torch.ops.dim_fused.check_dot_product(local, global_codes, estimator, offset, tile_scores, False, grad, stats)
    p = _Problem(local, global_codes, estimator, offset)
    ops = torch.ops.dim_fused
    coef = ops.dot_product_mi_coefficients(grad, stats, estimator, p.batch, p.locations)
    d_global = torch.zeros(p.num_globals, p.units, dtype=p.acc, device=local.device)
    d_local = gradient_like(local)
    step = max(1, min(p.batch, tile_scores // (p.num_globals * p.locations)))  # whole images per tile
    with device_of(local):
        for first in range(0, p.batch, step):
            n = min(step, p.batch - first) * p.locations
            tile = torch.empty(p.num_globals, n, dtype=p.acc, device=local.device)
            _gradient_kernel[gradient_grid(p.num_globals, n)](
                global_codes, p.local, coef, tile, first * p.locations, tile_columns=n, **p.shape, **p.meta
            )
            ops.dot_product_mi_tile_backward(tile, local, global_codes, first, d_local, d_global)
    unscale = 1.0 / p.num_columns  # the coefficients carry the gradient scale B * L
    return d_local.mul_(unscale), d_global.mul_(unscale).to(global_codes.dtype)
