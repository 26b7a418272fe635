"""concat_conv_mi in Triton: the default critic (two hidden layers) as a handful of kernel
launches, every intermediate on chip or in a buffer a kernel fills whole.

Rows are (pair, image, location), pair 0 the positives and pairs 1..K the negatives; row r
reads row src(r) of P = f W1f^T, where src is the row itself for a positive and
perm[k - 1, l, b] * L + l for a negative (computed from perm in the kernels: the shuffle
is never a copy), and image i(r)'s row of Q = y W1y^T + b1 (the tiled concat never exists).

Forward, 4 launches: (1) P and Q, one kernel for both GEMMs; (2) per block of rows, the
score: h1 = relu(P[src] + Q[i]) built in registers one block of the first layer's units at
a time, multiplied by W2 with tensor-core dots, bias, ReLU and the dot with the score
layer's weights, over all of the second layer's units; only the (1 + K) B L scores reach
memory; (3, 4) the estimate (the bound's partials and merge, ops/common/triton_bound.py).
P and Q are kept for the backward.

Backward, 7 launches (DV 8), recomputing h1 and z2 on chip, never storing h1: (1) d(score)
(the bound's gradient); (2) dZ2 = d(score) w3 relu'(z2), with per-row-block partial sums of
dW3, db2 and db3; (3) dW2 = dZ2^T h1, a GEMM whose prologue rebuilds h1, split over row
ranges; (4, 5) dZ1 = (dZ2 W2) relu'(h1) per image, stored for the positives into dP
(each row once) and dQ, then added for all the negatives (dP atomically); (6) the first
layer's and the inputs' gradients from dP and dQ, one kernel for its four GEMMs (W1's
split over images); (7) every split and partial merged in order, unscaled and cast. No
float atomics but the negatives' adds into dP: one add onto a stored value is
deterministic (K = 1), several are not, so under torch.use_deterministic_algorithms each
negative pair set gets a launch of its own. Other depths run the C++ plan on the device
(dim_fused.resolve_backend says so). See docs/design.md ("Concat-and-conv")."""

import torch
import triton
import triton.language as tl

from ..common import dispatch, library, triton_bound
from ..common.precision import accumulation_dtype, tf32_allowed
from ..common.triton_launch import device_of, dot, no_autocast, product, relu, tl_dtype, tuned

TUNING_KEY = ["rows", "hidden1", "hidden2", "ALLOW_TF32", "WIDE"]  # + the dtypes
FIRST_LAYER_KEY = ["rows", "images", "channels", "dim", "hidden1", "ALLOW_TF32", "WIDE"]
PARTIAL_ROWS = 32  # rows per partial sum of the backward (the narrowest tile's row block; 32 in the kernels)


@triton.jit
def _wide(offsets, WIDE: tl.constexpr):
    return offsets.to(tl.int64) if WIDE else offsets


@triton.jit
def _rows(perm_ptr, rows_block, rows, images, locations, WIDE: tl.constexpr):
    """The block's sources (rows of P; a negative's index outside [0, B) kept apart as
    `valid`), images and bounds. WIDE: offsets can pass 2^31 elements and stay 64-bit
    (else 32-bit, half the address registers)."""
    in_rows = rows_block < rows
    rows_per_pair = images * locations
    pair = rows_block // rows_per_pair
    row = rows_block % rows_per_pair
    image, location = row // locations, row % locations
    negative = pair > 0
    other = tl.load(
        perm_ptr + _wide(pair - 1, WIDE) * rows_per_pair + location * images + image,
        mask=in_rows & negative,
        other=0,
    )
    valid = ~negative | ((other >= 0) & (other < images))
    source = tl.where(negative & valid, other * locations + location, row)
    if not WIDE:
        source = source.to(tl.int32)
    return source, image, valid, in_rows


@triton.jit
def _first_layer(P_ptr, Q_ptr, source, image, valid, in_rows, ks, hidden1, ACC: tl.constexpr):
    """h1 = relu(P[source] + Q[image]) for a (rows, units ks) block, in ACC; a row whose
    source is invalid (an index outside the batch) is NaN."""
    in_units = ks < hidden1
    p = tl.load(P_ptr + source[:, None] * hidden1 + ks[None, :], mask=(in_rows & valid)[:, None] & in_units[None, :])
    q = tl.load(Q_ptr + image[:, None] * hidden1 + ks[None, :], mask=in_rows[:, None] & in_units[None, :])
    h = tl.where(valid[:, None], p.to(ACC) + q.to(ACC), float("nan"))
    return relu(h)


@triton.jit
def _second_layer(
    P_ptr, Q_ptr, W2_ptr, b2_ptr, source, image, valid, in_rows, units, hidden1, hidden2,
    HAS_B2, ACC, ALLOW_TF32, BLOCK_K,
):  # fmt: skip
    """z2 = h1 W2^T + b2 for a (rows, units) block, h1 rebuilt on chip."""
    in_units = units < hidden2
    ks = tl.arange(0, BLOCK_K)
    z2 = tl.zeros((source.shape[0], units.shape[0]), dtype=ACC)
    for k0 in range(0, hidden1, BLOCK_K):
        k = k0 + ks
        w = tl.load(W2_ptr + units[None, :] * hidden1 + k[:, None], mask=(k < hidden1)[:, None] & in_units[None, :])
        h1 = _first_layer(P_ptr, Q_ptr, source, image, valid, in_rows, k, hidden1, ACC).to(w.dtype)
        z2 += dot(h1, w, ACC, ALLOW_TF32)
    if HAS_B2:
        z2 += tl.load(b2_ptr + units, mask=in_units, other=0.0).to(ACC)[None, :]
    return z2


@tuned(key=FIRST_LAYER_KEY, dtype_arg="f_ptr")  # writes every element
@triton.jit
def _split_kernel(
    f_ptr, y_ptr, w1_ptr, b1_ptr, P_ptr, Q_ptr, rows, images, locations, channels, dim, hidden1,
    stride_fb, stride_fc, stride_fl, stride_yb, stride_yd, stride_wo, stride_wi,
    HAS_B1: tl.constexpr, ACC: tl.constexpr, ALLOW_TF32: tl.constexpr, WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """The first layer's split, both GEMMs in one launch: P = f W1f^T per location (row
    b * L + l; the first programs) and Q = y W1y^T + b1 per image (the rest)."""
    p_blocks = tl.cdiv(rows, BLOCK_M)
    pid = tl.program_id(0)
    units = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_units = units[None, :] < hidden1
    if pid < p_blocks:
        m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        at = _wide(m // locations, WIDE) * stride_fb + _wide(m % locations, WIDE) * stride_fl
        acc = product(
            f_ptr + at[:, None], stride_fc, w1_ptr + units[None, :] * stride_wo, stride_wi,
            (m < rows)[:, None], in_units, channels, ACC, ALLOW_TF32, BLOCK_K,
        )  # fmt: skip
        tl.store(P_ptr + _wide(m[:, None], WIDE) * hidden1 + units[None, :], acc, mask=(m < rows)[:, None] & in_units)
    else:
        m = (pid - p_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        acc = product(
            y_ptr + _wide(m[:, None], WIDE) * stride_yb, stride_yd,
            w1_ptr + units[None, :] * stride_wo + channels * stride_wi, stride_wi,
            (m < images)[:, None], in_units, dim, ACC, ALLOW_TF32, BLOCK_K,
        )  # fmt: skip
        if HAS_B1:
            acc += tl.load(b1_ptr + units, mask=units < hidden1, other=0.0).to(ACC)[None, :]
        tl.store(Q_ptr + m[:, None] * hidden1 + units[None, :], acc, mask=(m < images)[:, None] & in_units)


@tuned(key=TUNING_KEY, dtype_arg="P_ptr")  # writes every score of its rows
@triton.jit
def _score_kernel(
    P_ptr, Q_ptr, perm_ptr, W2_ptr, b2_ptr, w3_ptr, b3_ptr, scores_ptr, rows, images, locations, hidden1, hidden2,
    HAS_B2: tl.constexpr, HAS_B3: tl.constexpr, ACC: tl.constexpr, ALLOW_TF32: tl.constexpr, WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """score[r] = relu(h1 W2^T + b2) w3 + b3 for a block of rows, over all units."""
    rows_block = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    source, image, valid, in_rows = _rows(perm_ptr, rows_block, rows, images, locations, WIDE)
    score = tl.zeros((BLOCK_M,), dtype=ACC)
    for n0 in range(0, hidden2, BLOCK_N):
        units = n0 + tl.arange(0, BLOCK_N)
        z2 = _second_layer(
            P_ptr, Q_ptr, W2_ptr, b2_ptr, source, image, valid, in_rows, units, hidden1, hidden2,
            HAS_B2, ACC, ALLOW_TF32, BLOCK_K,
        )  # fmt: skip
        w3 = tl.load(w3_ptr + units, mask=units < hidden2, other=0.0).to(ACC)
        score += tl.sum(tl.where((units < hidden2)[None, :], relu(z2) * w3[None, :], 0.0), axis=1)
    if HAS_B3:
        score += tl.load(b3_ptr).to(ACC)
    tl.store(scores_ptr + rows_block, score, mask=in_rows)


@triton.jit
def _store_partial(partial_ptr, block, slots, width, columns, values, in_columns, BLOCK_M: tl.constexpr):
    """A row block's partial sums into its rows of the partial buffer, one per PARTIAL_ROWS
    rows (`slots` in all): the first gets the values, the others (a block wider than
    PARTIAL_ROWS) zeros, so the buffer needs no fill whichever tile ran."""
    first = block * (BLOCK_M // 32)
    for slot in tl.static_range(BLOCK_M // 32):
        at = partial_ptr + (first + slot).to(tl.int64) * width + columns
        tl.store(at, values if slot == 0 else tl.zeros_like(values), mask=in_columns & (first + slot < slots))


@tuned(key=TUNING_KEY, dtype_arg="P_ptr")  # writes every element of its tile and partial slots
@triton.jit
def _dz2_kernel(
    P_ptr, Q_ptr, perm_ptr, W2_ptr, b2_ptr, w3_ptr, d_scores_ptr, dz2_ptr, partial_ptr, scale,
    rows, images, locations, hidden1, hidden2,
    HAS_B2: tl.constexpr, ACC: tl.constexpr, ALLOW_TF32: tl.constexpr, WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """dZ2 = d(score) w3 relu'(z2) for a (rows, units) block (d(score) times `scale`), and
    this row block's partial sums of dW3 = sum d(score) h2, db2 = sum dZ2 and db3 =
    sum d(score): partial row (dW3 | db2 | db3) of width 2 H2 + 1."""
    rows_block = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    units = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_units = units < hidden2
    source, image, valid, in_rows = _rows(perm_ptr, rows_block, rows, images, locations, WIDE)
    z2 = _second_layer(
        P_ptr, Q_ptr, W2_ptr, b2_ptr, source, image, valid, in_rows, units, hidden1, hidden2,
        HAS_B2, ACC, ALLOW_TF32, BLOCK_K,
    )  # fmt: skip
    d_score = tl.load(d_scores_ptr + rows_block, mask=in_rows, other=0.0).to(ACC) * scale
    w3 = tl.load(w3_ptr + units, mask=in_units, other=0.0).to(ACC)
    dz2 = tl.where(z2 > 0, d_score[:, None] * w3[None, :], 0.0)
    keep = in_rows[:, None] & in_units[None, :]
    out = dz2_ptr + _wide(rows_block, WIDE)[:, None] * hidden2 + units[None, :]
    tl.store(out, dz2.to(dz2_ptr.dtype.element_ty), mask=keep)
    width, block, slots = 2 * hidden2 + 1, tl.program_id(0), tl.cdiv(rows, 32)
    dw3 = tl.sum(tl.where(keep, d_score[:, None] * relu(z2), 0.0), axis=0)
    _store_partial(partial_ptr, block, slots, width, units, dw3, in_units, BLOCK_M)
    db2 = tl.sum(tl.where(keep, dz2, 0.0), axis=0)
    _store_partial(partial_ptr, block, slots, width, hidden2 + units, db2, in_units, BLOCK_M)
    if tl.program_id(1) == 0:
        one = tl.arange(0, 1)
        d_b3 = tl.broadcast_to(tl.sum(tl.where(in_rows, d_score, 0.0), axis=0), (1,))
        _store_partial(partial_ptr, block, slots, width, 2 * hidden2 + one, d_b3, one < 1, BLOCK_M)


@tuned(key=TUNING_KEY, dtype_arg="P_ptr")  # writes every element of its partials
@triton.jit
def _dw2_kernel(
    P_ptr, Q_ptr, perm_ptr, dz2_ptr, partial_ptr, rows, rows_per_split, images, locations, hidden1, hidden2,
    ACC: tl.constexpr, ALLOW_TF32: tl.constexpr, WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """partial[split] = dZ2^T h1 over the split's rows for a (second-layer units BLOCK_M,
    first-layer units BLOCK_N) block of dW2; h1 rebuilt from P, Q and the sources."""
    units2 = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    units1 = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(2)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    first = split * rows_per_split
    for r0 in range(first, tl.minimum(first + rows_per_split, rows), BLOCK_K):
        rows_block = r0 + tl.arange(0, BLOCK_K)
        source, image, valid, in_rows = _rows(perm_ptr, rows_block, rows, images, locations, WIDE)
        in_rows = in_rows & (rows_block < first + rows_per_split)
        dz2 = tl.load(
            dz2_ptr + _wide(rows_block, WIDE)[None, :] * hidden2 + units2[:, None],
            mask=in_rows[None, :] & (units2 < hidden2)[:, None],
            other=0.0,
        )
        h1 = _first_layer(P_ptr, Q_ptr, source, image, valid, in_rows, units1, hidden1, ACC).to(dz2.dtype)
        acc += dot(dz2, h1, ACC, ALLOW_TF32)
    keep = (units2 < hidden2)[:, None] & (units1 < hidden1)[None, :]
    out = partial_ptr + (split.to(tl.int64) * hidden2 + units2[:, None]) * hidden1 + units1[None, :]
    tl.store(out, acc, mask=keep)


@tuned(
    key=["images", "locations", "hidden1", "hidden2", "ALLOW_TF32", "WIDE"],
    dtype_arg="P_ptr",
    spills=lambda tile, dtype: dtype == torch.float32 and tile.kwargs["BLOCK_N"] > 64,
    restore_value=["dP_ptr", "dQ_ptr"],  # negatives add into them
)
@triton.jit
def _dz1_kernel(
    P_ptr, Q_ptr, perm_ptr, dz2_ptr, W2_ptr, dP_ptr, dP_features_ptr, dQ_ptr, first_pair, pairs,
    images, locations, hidden1, hidden2,
    POSITIVES: tl.constexpr, DETACH: tl.constexpr, ACC: tl.constexpr, ALLOW_TF32: tl.constexpr,
    WIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """For one image (the grid's first axis) of `pairs` pair sets from `first_pair`, and a
    block of first-layer units: dZ1 = (dZ2 W2) relu'(h1) over the image's rows, into dP at
    each row's source and, summed, into dQ at the image. POSITIVES (pair set 0, whose
    sources are the rows themselves): stored, also into dP_features when DETACH (the
    features' gradient without the negatives); else added, dP atomically."""
    image = tl.program_id(0)
    units1 = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_units1 = units1 < hidden1
    rows_per_pair = images * locations
    d_q = tl.zeros((BLOCK_N,), dtype=ACC)
    for pair in range(first_pair, first_pair + pairs):
        first = pair * rows_per_pair + image * locations
        for l0 in range(0, locations, BLOCK_M):
            rows_block = first + l0 + tl.arange(0, BLOCK_M)
            source, _, valid, in_rows = _rows(perm_ptr, rows_block, first + locations, images, locations, WIDE)
            dh1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
            for k0 in range(0, hidden2, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                in_k = k < hidden2
                dz2 = tl.load(
                    dz2_ptr + _wide(rows_block, WIDE)[:, None] * hidden2 + k[None, :],
                    mask=in_rows[:, None] & in_k[None, :],
                    other=0.0,
                )
                w = tl.load(W2_ptr + k[:, None] * hidden1 + units1[None, :], mask=in_k[:, None] & in_units1[None, :])
                dh1 += dot(dz2, w.to(dz2.dtype), ACC, ALLOW_TF32)
            h1 = _first_layer(
                P_ptr, Q_ptr, source, tl.broadcast_to(image, (BLOCK_M,)), valid, in_rows, units1, hidden1, ACC
            )
            keep = (in_rows & valid)[:, None] & in_units1[None, :]
            dz1 = tl.where(keep & (h1 > 0), dh1, 0.0)
            at = source[:, None] * hidden1 + units1[None, :]
            if POSITIVES:
                tl.store(dP_ptr + at, dz1, mask=keep)
                if DETACH:
                    tl.store(dP_features_ptr + at, dz1, mask=keep)
            else:
                tl.atomic_add(dP_ptr + at, dz1, mask=keep)
            d_q += tl.sum(dz1, axis=0)
    at = dQ_ptr + image.to(tl.int64) * hidden1 + units1
    if POSITIVES:
        tl.store(at, d_q, mask=in_units1)
    else:
        tl.store(at, tl.load(at, mask=in_units1, other=0.0) + d_q, mask=in_units1)


@tuned(key=FIRST_LAYER_KEY, dtype_arg="f_ptr")  # writes every element
@triton.jit
def _first_layer_gradients_kernel(
    f_ptr, y_ptr, w1_ptr, dP_ptr, dP_features_ptr, dQ_ptr, dw1_ptr, d_map_ptr, d_code_ptr, unscale,
    rows, images, locations, channels, dim, hidden1, images_per_split,
    stride_fb, stride_fc, stride_fl, stride_yb, stride_yd, stride_wo, stride_wi,
    stride_mb, stride_mc, stride_ml, stride_cb, stride_cd,
    ACC: tl.constexpr, ALLOW_TF32: tl.constexpr, WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """The first layer's four GEMMs from dP and dQ (times the gradient scale), one launch,
    the programs in three families: (a) per split of the images, a (BLOCK_M units, BLOCK_N
    inputs) block of dW1 = [dP^T f | dQ^T y] over the split's rows into partial[split]
    (merged by _merge_kernel); (b) d feature_map[b, c, l] = dP_features W1f, unscaled,
    written in the feature map's strides; (c) d global_code = dQ W1y, unscaled."""
    pid = tl.program_id(0)
    unit_blocks = tl.cdiv(hidden1, BLOCK_M)
    input_blocks = tl.cdiv(channels, BLOCK_N) + tl.cdiv(dim, BLOCK_N)
    splits = tl.cdiv(images, images_per_split)
    weight_programs = splits * unit_blocks * input_blocks
    map_programs = tl.cdiv(rows, BLOCK_M) * tl.cdiv(channels, BLOCK_N)
    if pid < weight_programs:
        split, rest = pid // (unit_blocks * input_blocks), pid % (unit_blocks * input_blocks)
        units = (rest // input_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        column_block = rest % input_blocks
        first_image = split * images_per_split
        split_images = tl.minimum(images_per_split, images - first_image)
        in_units = (units < hidden1)[:, None]
        if column_block < tl.cdiv(channels, BLOCK_N):  # dP^T f over the split's rows
            inputs = column_block * BLOCK_N + tl.arange(0, BLOCK_N)
            ks = tl.arange(0, BLOCK_K)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
            first_row = first_image * locations
            for k0 in range(0, split_images * locations, BLOCK_K):
                m = first_row + k0 + ks
                in_m = k0 + ks < split_images * locations
                d_rows = dP_ptr + _wide(m[None, :], WIDE) * hidden1 + units[:, None]
                d = tl.load(d_rows, mask=in_units & in_m[None, :], other=0.0)
                f_rows = _wide(m // locations, WIDE) * stride_fb + _wide(m % locations, WIDE) * stride_fl
                x = tl.load(
                    f_ptr + f_rows[:, None] + inputs[None, :] * stride_fc,
                    mask=in_m[:, None] & (inputs < channels)[None, :],
                    other=0.0,
                )
                acc += dot(d.to(x.dtype), x, ACC, ALLOW_TF32)
            column = inputs
            in_columns = inputs < channels
        else:  # dQ^T y over the split's images
            inputs = (column_block - tl.cdiv(channels, BLOCK_N)) * BLOCK_N + tl.arange(0, BLOCK_N)
            acc = product(
                dQ_ptr + first_image * hidden1 + units[:, None], hidden1,
                y_ptr + first_image * stride_yb + inputs[None, :] * stride_yd, stride_yb,
                in_units, (inputs < dim)[None, :], split_images, ACC, ALLOW_TF32, BLOCK_K,
            )  # fmt: skip
            column = channels + inputs
            in_columns = inputs < dim
        width = channels + dim
        w1_out = dw1_ptr + (_wide(split, WIDE) * hidden1 + units[:, None]) * width + column[None, :]
        tl.store(w1_out, acc, mask=in_units & in_columns[None, :])
    elif pid < weight_programs + map_programs:  # d feature_map
        tile = pid - weight_programs
        m = (tile // tl.cdiv(channels, BLOCK_N)) * BLOCK_M + tl.arange(0, BLOCK_M)
        inputs = (tile % tl.cdiv(channels, BLOCK_N)) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = product(
            dP_features_ptr + _wide(m[:, None], WIDE) * hidden1, 1, w1_ptr + inputs[None, :] * stride_wi, stride_wo,
            (m < rows)[:, None], (inputs < channels)[None, :], hidden1, ACC, ALLOW_TF32, BLOCK_K,
        )  # fmt: skip
        map_rows = _wide(m // locations, WIDE) * stride_mb + _wide(m % locations, WIDE) * stride_ml
        map_out = d_map_ptr + map_rows[:, None] + inputs[None, :] * stride_mc
        tl.store(map_out, acc * unscale, mask=(m < rows)[:, None] & (inputs < channels)[None, :])
    else:  # d global_code
        tile = pid - weight_programs - map_programs
        b = (tile // tl.cdiv(dim, BLOCK_N)) * BLOCK_M + tl.arange(0, BLOCK_M)
        inputs = (tile % tl.cdiv(dim, BLOCK_N)) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = product(
            dQ_ptr + b[:, None] * hidden1, 1, w1_ptr + (channels + inputs[None, :]) * stride_wi, stride_wo,
            (b < images)[:, None], (inputs < dim)[None, :], hidden1, ACC, ALLOW_TF32, BLOCK_K,
        )  # fmt: skip
        code_out = d_code_ptr + b[:, None] * stride_cb + inputs[None, :] * stride_cd
        tl.store(code_out, acc * unscale, mask=(b < images)[:, None] & (inputs < dim)[None, :])


@triton.jit
def _merge_region(
    pid, first_block, parts_ptr, parts, stride, width, out_ptr, unscale, ACC: tl.constexpr, BLOCK: tl.constexpr
):
    """If the program is one of this region's (from first_block on): out[c] = unscale * sum
    over the parts of parts[p, c] (rows `stride` apart), in order, in out's dtype. Returns
    the next region's first block."""
    blocks = tl.cdiv(width, BLOCK)
    if (pid >= first_block) & (pid < first_block + blocks):
        columns = (pid - first_block) * BLOCK + tl.arange(0, BLOCK)
        acc = tl.zeros((BLOCK,), dtype=ACC)
        row = parts_ptr + columns
        for _ in range(0, parts):
            acc += tl.load(row, mask=columns < width, other=0.0)
            row += stride  # 64-bit pointer steps
        tl.store(out_ptr + columns, (acc * unscale).to(out_ptr.dtype.element_ty), mask=columns < width)
    return first_block + blocks


@triton.jit
def _merge_kernel(
    w1_parts_ptr, w1_parts, dw1_ptr, w2_parts_ptr, w2_parts, dw2_ptr, later_ptr, later_parts, dw3_ptr, db2_ptr,
    db3_ptr, dQ_ptr, db1_ptr, unscale, images, hidden1, hidden2, inputs,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, HAS_B3: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Every split and partial sum merged in order, unscaled, in the weights' dtype, one
    launch over ranges of programs: dW1, dW2, dW3, db2, db3 (the partial buffer's columns
    dW3 | db2 | db3) and db1 = the sum of dQ over the images."""
    pid = tl.program_id(0)
    w1_width, w2_width, later = hidden1 * inputs, hidden2 * hidden1, 2 * hidden2 + 1
    first = _merge_region(pid, 0, w1_parts_ptr, w1_parts, w1_width, w1_width, dw1_ptr, unscale, ACC, BLOCK)
    first = _merge_region(pid, first, w2_parts_ptr, w2_parts, w2_width, w2_width, dw2_ptr, unscale, ACC, BLOCK)
    first = _merge_region(pid, first, later_ptr, later_parts, later, hidden2, dw3_ptr, unscale, ACC, BLOCK)
    if HAS_B2:
        first = _merge_region(
            pid, first, later_ptr + hidden2, later_parts, later, hidden2, db2_ptr, unscale, ACC, BLOCK
        )
    if HAS_B3:
        first = _merge_region(pid, first, later_ptr + 2 * hidden2, later_parts, later, 1, db3_ptr, unscale, ACC, BLOCK)
    if HAS_B1:
        _merge_region(pid, first, dQ_ptr, images, hidden1, hidden1, db1_ptr, unscale, ACC, BLOCK)


MERGE_BLOCK = 1024


class _Problem:
    """The kernels' view of the critic, after the C++ op's checks (the same as the C++
    plan's): the feature map as (B, C, L), the layers, the sizes and the launch meta."""

    def __init__(self, feature_map, global_code, weights, biases, perm, estimator, grad=None, scores=None):
        torch._check_value(
            len(weights) == dispatch.TRITON_CONCAT_LAYERS,
            lambda: (
                f"dim_fused.concat_conv_mi_triton: the fused kernels take {dispatch.TRITON_CONCAT_LAYERS} "
                f"layers (two hidden), got {len(weights)}; other depths run backend 'cpu' or 'cuda'"
            ),
        )
        torch.ops.dim_fused.check_concat_conv(feature_map, global_code, weights, biases, perm, estimator, grad, scores)
        self.batch, self.channels = feature_map.shape[:2]
        self.fmap = feature_map.reshape(self.batch, self.channels, -1)  # a view when the layout allows
        self.code, self.perm = global_code, perm.contiguous()
        self.locations = self.fmap.shape[2]
        self.dim = global_code.shape[1]
        self.rows_per_pair = self.batch * self.locations
        self.rows = self.rows_per_pair * (perm.shape[0] + 1)
        self.w1 = weights[0]
        self.w2, self.w3 = weights[1].contiguous(), weights[2].contiguous()
        self.b1, self.b2, self.b3 = (library.bias_or_none(b) for b in biases)
        self.hidden1, self.hidden2 = self.w2.shape[1], self.w2.shape[0]
        self.dtype, self.acc = feature_map.dtype, accumulation_dtype(feature_map.dtype)
        # Offsets past 2^31 elements: of dZ2, P and dP, the feature map (and its gradient), and
        # the first layer's weight partials (at most 64 splits).
        span = 1 + sum((n - 1) * abs(stride) for n, stride in zip(self.fmap.shape, self.fmap.stride(), strict=True))
        largest = (self.rows * self.hidden2, self.rows_per_pair * self.hidden1, span, feature_map.numel())
        wide = max(*largest, 64 * self.hidden1 * (self.channels + self.dim)) >= 2**31
        self.meta = {"ACC": tl_dtype(self.acc), "ALLOW_TF32": tf32_allowed(feature_map), "WIDE": wide}
        self.sizes = {"images": self.batch, "locations": self.locations, "hidden1": self.hidden1}

    def any_bias(self, bias: torch.Tensor | None) -> torch.Tensor:
        """The kernels' pointer for a bias: the bias, or any tensor when it is absent."""
        return self.w3 if bias is None else bias

    def strides(self) -> dict:
        return dict(
            zip(
                ("stride_fb", "stride_fc", "stride_fl", "stride_yb", "stride_yd", "stride_wo", "stride_wi"),
                (*self.fmap.stride(), *self.code.stride(), *self.w1.stride()),
                strict=True,
            )
        )

    def check_kept(self, activations) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The forward's P, Q and the bound's normaliser, which the backward reads: checked,
        they are pointers."""
        kinds = [
            ((self.rows_per_pair, self.hidden1), self.dtype),
            ((self.batch, self.hidden1), self.dtype),
            ((), self.acc),
        ]
        torch._check_value(
            len(activations) == 3
            and all(
                a.shape == shape and a.dtype == dtype and a.device == self.fmap.device and a.is_contiguous()
                for a, (shape, dtype) in zip(activations, kinds, strict=True)
            ),
            lambda: (
                "dim_fused.concat_conv_mi_triton_backward: activations must be the forward's [P, Q, normaliser], "
                f"contiguous tensors of shapes and dtypes {kinds}, got "
                f"{[(tuple(a.shape), a.dtype, a.is_contiguous()) for a in activations]}"
            ),
        )
        return activations[0], activations[1], activations[2]

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """P (B * L, H1) and Q (B, H1), in the inputs' dtype."""
        P = torch.empty(self.rows_per_pair, self.hidden1, dtype=self.dtype, device=self.fmap.device)
        Q = torch.empty(self.batch, self.hidden1, dtype=self.dtype, device=self.fmap.device)
        grid = lambda meta: (  # noqa: E731
            triton.cdiv(self.rows_per_pair, meta["BLOCK_M"]) + triton.cdiv(self.batch, meta["BLOCK_M"]),
            triton.cdiv(self.hidden1, meta["BLOCK_N"]),
        )
        with device_of(self.fmap):
            _split_kernel[grid](
                self.fmap, self.code, self.w1, self.any_bias(self.b1), P, Q, self.rows_per_pair, self.batch,
                self.locations, self.channels, self.dim, self.hidden1, **self.strides(),
                HAS_B1=self.b1 is not None, **self.meta,
            )  # fmt: skip
        return P, Q


@no_autocast
def forward(
    feature_map, global_code, weights, biases, perm, estimator: str, detach_negatives: bool, keep: bool, chunk: int
):
    """(estimate, scores, [P, Q, normaliser]): the kernels keep the first layer's halves
    for the backward (B L x H1 + B x H1 values) and the bound's normaliser (one value), and
    recompute the rest on chip, so `keep` (the C++
    plan's hidden activations) must be False; `chunk` (its row chunks) does not apply."""
    torch._check_value(not keep, lambda: "dim_fused.concat_conv_mi_triton keeps no hidden activations: pass False")
    p = _Problem(feature_map, global_code, weights, biases, perm, estimator)
    scores = torch.empty(p.rows // p.rows_per_pair, p.batch, p.locations, dtype=p.acc, device=feature_map.device)
    with device_of(feature_map):
        P, Q = p.split()
        _score_kernel[lambda meta: (triton.cdiv(p.rows, meta["BLOCK_M"]),)](
            P, Q, p.perm, p.w2, p.any_bias(p.b2), p.w3, p.any_bias(p.b3), scores, p.rows, **p.sizes,
            hidden2=p.hidden2, HAS_B2=p.b2 is not None, HAS_B3=p.b3 is not None, **p.meta,
        )  # fmt: skip
        estimate, normaliser = triton_bound.estimate(scores[0], scores[1:], estimator, dtype=p.dtype)
    return estimate, scores, [P, Q, normaliser]


@no_autocast
def backward(
    grad, feature_map, global_code, weights, biases, perm, scores, activations, estimator, detach_negatives, chunk
):
    p = _Problem(feature_map, global_code, weights, biases, perm, estimator, grad, scores)
    P, Q, normaliser = p.check_kept(activations)
    device, acc = feature_map.device, p.acc
    pairs = p.rows // p.rows_per_pair
    # d(score) times the gradient scale B * L, undone at the end (as in the C++ plan):
    # half-precision dZ2 then holds values near 1 instead of underflowing (1 / (B L) is
    # below fp16's normal range).
    scale = float(p.rows_per_pair)
    d_scores = torch.empty(p.rows, dtype=acc, device=device)
    dz2 = torch.empty(p.rows, p.hidden2, dtype=p.dtype, device=device)
    later = torch.empty(triton.cdiv(p.rows, PARTIAL_ROWS), 2 * p.hidden2 + 1, dtype=acc, device=device)
    splits = max(1, min(64, triton.cdiv(p.rows, 256)))
    rows_per_split = triton.cdiv(p.rows, splits)
    dw2 = torch.empty(splits, p.hidden2, p.hidden1, dtype=acc, device=device)
    dP = torch.empty(p.rows_per_pair, p.hidden1, dtype=acc, device=device)
    # dP feeds W1f's gradient (every pair set), dP_features the features' gradient: the same
    # buffer, or the positive pairs' own when the negatives are detached.
    dP_features = torch.empty_like(dP) if detach_negatives else dP
    dQ = torch.empty(p.batch, p.hidden1, dtype=acc, device=device)
    images_per_split = triton.cdiv(p.batch, max(1, min(p.batch, 64, triton.cdiv(p.rows_per_pair, 256))))
    w1_splits = triton.cdiv(p.batch, images_per_split)
    dw1 = torch.empty(w1_splits, p.hidden1, p.channels + p.dim, dtype=acc, device=device)
    d_map = torch.empty(feature_map.shape, dtype=p.dtype, device=device)
    d_map_3d = d_map.view(p.batch, p.channels, p.locations)
    d_code = torch.empty(p.batch, p.dim, dtype=p.dtype, device=device)
    with device_of(feature_map):
        d3 = d_scores.view(scores.shape)
        triton_bound.gradient(grad, scores[0], scores[1:], estimator, d3[0], d3[1:], normaliser)
        common = {**p.sizes, "hidden2": p.hidden2, **p.meta}
        _dz2_kernel[lambda meta: (triton.cdiv(p.rows, meta["BLOCK_M"]), triton.cdiv(p.hidden2, meta["BLOCK_N"]))](
            P, Q, p.perm, p.w2, p.any_bias(p.b2), p.w3, d_scores, dz2, later, scale, p.rows,
            HAS_B2=p.b2 is not None, **common,
        )  # fmt: skip
        _dw2_kernel[
            lambda meta: (triton.cdiv(p.hidden2, meta["BLOCK_M"]), triton.cdiv(p.hidden1, meta["BLOCK_N"]), splits)
        ](P, Q, p.perm, dz2, dw2, p.rows, rows_per_split, **common)
        negatives = pairs - 1
        launches = [(0, 1)] + ([(k, 1) for k in range(1, pairs)] if torch.are_deterministic_algorithms_enabled()
                               else [(1, negatives)] if negatives else [])  # fmt: skip
        for first_pair, count in launches:
            _dz1_kernel[lambda meta: (p.batch, triton.cdiv(p.hidden1, meta["BLOCK_N"]))](
                P, Q, p.perm, dz2, p.w2, dP, dP_features, dQ, first_pair, count, p.batch, p.locations, p.hidden1,
                p.hidden2, POSITIVES=first_pair == 0, DETACH=detach_negatives, **p.meta,
            )  # fmt: skip
        unscale = 1.0 / scale
        grid = lambda meta: (  # noqa: E731
            w1_splits * triton.cdiv(p.hidden1, meta["BLOCK_M"])
            * (triton.cdiv(p.channels, meta["BLOCK_N"]) + triton.cdiv(p.dim, meta["BLOCK_N"]))
            + triton.cdiv(p.rows_per_pair, meta["BLOCK_M"]) * triton.cdiv(p.channels, meta["BLOCK_N"])
            + triton.cdiv(p.batch, meta["BLOCK_M"]) * triton.cdiv(p.dim, meta["BLOCK_N"]),
        )  # fmt: skip
        _first_layer_gradients_kernel[grid](
            p.fmap, p.code, p.w1, dP, dP_features, dQ, dw1, d_map_3d, d_code, unscale, p.rows_per_pair, p.batch,
            p.locations, p.channels, p.dim, p.hidden1, images_per_split, **p.strides(), stride_mb=d_map_3d.stride(0),
            stride_mc=d_map_3d.stride(1), stride_ml=d_map_3d.stride(2), stride_cb=d_code.stride(0),
            stride_cd=d_code.stride(1), **p.meta,
        )  # fmt: skip
        d_weights = [torch.empty(w.shape, dtype=p.dtype, device=device) for w in (p.w1, p.w2, p.w3)]
        d_biases = [
            library.no_bias(feature_map) if b is None else torch.empty(b.shape, dtype=p.dtype, device=device)
            for b in (p.b1, p.b2, p.b3)
        ]
        has = {"HAS_B1": p.b1 is not None, "HAS_B2": p.b2 is not None, "HAS_B3": p.b3 is not None}
        widths = [d.numel() for d in d_weights] + [p.hidden2 if has["HAS_B2"] else 0, 1 if has["HAS_B3"] else 0]
        widths.append(p.hidden1 if has["HAS_B1"] else 0)
        _merge_kernel[(sum(triton.cdiv(w, MERGE_BLOCK) for w in widths),)](
            dw1, w1_splits, d_weights[0], dw2, splits, d_weights[1], later, later.shape[0], d_weights[2],
            d_biases[1], d_biases[2], dQ, d_biases[0], unscale, p.batch, p.hidden1, p.hidden2, p.channels + p.dim,
            **has, ACC=p.meta["ACC"], BLOCK=MERGE_BLOCK,
        )  # fmt: skip
    return d_map, d_code, d_weights, d_biases
