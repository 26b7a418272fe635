"""concat_conv_mi in Triton: the default critic's scoring MLP (two hidden layers) on chip.

Rows are (pair, image, location), pair 0 the positives and pairs 1..K the negatives; row r
reads row src[r] of P = f W1f^T (an index: the shuffle is never a copy) and image i(r)'s
row of Q = y W1y^T + b1 (the tiled concat never exists); P and Q are torch GEMMs.

- Forward, one kernel: per block of rows and block of the second layer's units, h1 =
  relu(P[src] + Q[i]) is built in registers one block of the first layer's units at a time
  and multiplied by W2 with tensor-core dots; bias, ReLU and the dot with the score layer's
  weights give per-block partial scores. Only the (1 + K) B L scores reach memory.
- Backward, three kernels, recomputing h1 and z2 on chip, never storing h1: (1) dZ2 =
  d(score) w3 relu'(z2), with per-row-block partials of dW3 and db2; (2) dW2 = dZ2^T h1, a
  GEMM whose prologue rebuilds h1 from P, Q and src, split over row ranges (partial sums
  merged in order: no float atomics); (3) per pair set, dZ1 = (dZ2 W2) relu'(h1), added
  into dP through src (atomically: right for any index map, and deterministic for a
  permutation, which writes each row once per launch) and summed per image into dQ.
  W1's and the inputs' gradients are then GEMMs on dP and dQ.

The C++ plan (csrc/concat_conv_mi/) is this op's host plan too: its two ends, the first
layer's split (the checks, the row sources, P and Q) and the first layer's gradients from
dP and dQ, are ops these launchers call around the fused kernels. Other depths run the
C++ plan on the device (dim_fused.resolve_backend says so). See docs/design.md
("Concat-and-conv")."""

import torch
import triton
import triton.language as tl

from ..common import dispatch, library
from ..common.precision import accumulation_dtype, tf32_allowed
from ..common.triton_launch import device_of, no_autocast, relu, tl_dtype, tuned

TUNING_KEY = ["rows", "hidden1", "hidden2", "ALLOW_TF32", "WIDE"]  # + the dtypes


@triton.jit
def _wide(offsets, WIDE: tl.constexpr):
    return offsets.to(tl.int64) if WIDE else offsets


@triton.jit
def _first_layer(P_ptr, Q_ptr, source, image, valid, in_rows, ks, hidden1, ACC: tl.constexpr):
    """h1 = relu(P[source] + Q[image]) for a (rows, units ks) block, in ACC; a row whose
    source is -1 (an index outside the batch) is NaN."""
    in_units = ks < hidden1
    p = tl.load(P_ptr + source[:, None] * hidden1 + ks[None, :], mask=(in_rows & valid)[:, None] & in_units[None, :])
    q = tl.load(Q_ptr + image[:, None] * hidden1 + ks[None, :], mask=in_rows[:, None] & in_units[None, :])
    h = tl.where(valid[:, None], p.to(ACC) + q.to(ACC), float("nan"))
    return relu(h)


@triton.jit
def _rows(src_ptr, rows_block, rows, rows_per_pair, locations, WIDE: tl.constexpr):
    """The block's sources (-1 kept apart as `valid`), images and bounds. WIDE: offsets can
    pass 2^31 elements and stay 64-bit (else 32-bit, half the address registers)."""
    in_rows = rows_block < rows
    source = tl.load(src_ptr + rows_block, mask=in_rows, other=0)
    valid = source >= 0
    source = tl.where(valid, source, 0)
    if not WIDE:
        source = source.to(tl.int32)
    image = (rows_block % rows_per_pair) // locations
    return source, image, valid, in_rows


@triton.jit
def _second_layer(
    P_ptr, Q_ptr, W2_ptr, source, image, valid, in_rows, units, hidden1, hidden2, ACC, ALLOW_TF32, BLOCK_K
):
    """z2 = h1 W2^T (without bias) for a (rows, units) block, h1 rebuilt on chip."""
    in_units = units < hidden2
    ks = tl.arange(0, BLOCK_K)
    z2 = tl.zeros((source.shape[0], units.shape[0]), dtype=ACC)
    for k0 in range(0, hidden1, BLOCK_K):
        k = k0 + ks
        w = tl.load(W2_ptr + units[None, :] * hidden1 + k[:, None], mask=(k < hidden1)[:, None] & in_units[None, :])
        h1 = _first_layer(P_ptr, Q_ptr, source, image, valid, in_rows, k, hidden1, ACC).to(w.dtype)
        if ALLOW_TF32:
            z2 += tl.dot(h1, w, out_dtype=ACC)
        else:
            z2 += tl.dot(h1, w, input_precision="ieee", out_dtype=ACC)
    return z2


@triton.jit
def _program_z2(
    P_ptr, Q_ptr, src_ptr, W2_ptr, b2_ptr, rows, rows_per_pair, locations, hidden1, hidden2,
    HAS_B2, ACC, ALLOW_TF32, WIDE, BLOCK_M, BLOCK_N, BLOCK_K,
):  # fmt: skip
    """This program's (rows, second-layer units) block: z2 = h1 W2^T + b2, and its bounds."""
    rows_block = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    units = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_units = units < hidden2
    source, image, valid, in_rows = _rows(src_ptr, rows_block, rows, rows_per_pair, locations, WIDE)
    z2 = _second_layer(
        P_ptr, Q_ptr, W2_ptr, source, image, valid, in_rows, units, hidden1, hidden2, ACC, ALLOW_TF32, BLOCK_K
    )
    if HAS_B2:
        z2 += tl.load(b2_ptr + units, mask=in_units, other=0.0).to(ACC)[None, :]
    return rows_block, units, in_rows, in_units, z2


@tuned(key=TUNING_KEY, dtype_arg="P_ptr", reset_to_zero=["partial_ptr"])  # written per unit block of the tile
@triton.jit
def _score_kernel(
    P_ptr,
    Q_ptr,
    src_ptr,
    W2_ptr,
    b2_ptr,
    w3_ptr,
    partial_ptr,
    rows,
    rows_per_pair,
    locations,
    hidden1,
    hidden2,
    HAS_B2: tl.constexpr,
    ACC: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """partial[u, r] = sum over the units u-block of relu(z2 + b2) w3: the score of row r
    without b3, split over the blocks of the second layer's units."""
    rows_block, units, in_rows, in_units, z2 = _program_z2(
        P_ptr, Q_ptr, src_ptr, W2_ptr, b2_ptr, rows, rows_per_pair, locations, hidden1, hidden2,
        HAS_B2, ACC, ALLOW_TF32, WIDE, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    w3 = tl.load(w3_ptr + units, mask=in_units, other=0.0).to(ACC)
    partial = tl.sum(tl.where(in_units[None, :], relu(z2) * w3[None, :], 0.0), axis=1)
    tl.store(partial_ptr + tl.program_id(1).to(tl.int64) * rows + rows_block, partial, mask=in_rows)


@tuned(key=TUNING_KEY, dtype_arg="P_ptr", reset_to_zero=["dw3_ptr", "db2_ptr"])  # partials per row block
@triton.jit
def _dz2_kernel(
    P_ptr,
    Q_ptr,
    src_ptr,
    W2_ptr,
    b2_ptr,
    w3_ptr,
    d_scores_ptr,
    dz2_ptr,
    dw3_ptr,
    db2_ptr,
    rows,
    rows_per_pair,
    locations,
    hidden1,
    hidden2,
    HAS_B2: tl.constexpr,
    ACC: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dZ2 = d(score) w3 relu'(z2) for a (rows, units) block, and this row block's partial
    sums of dW3 = sum d(score) h2 and db2 = sum dZ2."""
    rows_block, units, in_rows, in_units, z2 = _program_z2(
        P_ptr, Q_ptr, src_ptr, W2_ptr, b2_ptr, rows, rows_per_pair, locations, hidden1, hidden2,
        HAS_B2, ACC, ALLOW_TF32, WIDE, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    d_score = tl.load(d_scores_ptr + rows_block, mask=in_rows, other=0.0).to(ACC)
    w3 = tl.load(w3_ptr + units, mask=in_units, other=0.0).to(ACC)
    dz2 = tl.where(z2 > 0, d_score[:, None] * w3[None, :], 0.0)
    keep = in_rows[:, None] & in_units[None, :]
    out = dz2_ptr + _wide(rows_block, WIDE)[:, None] * hidden2 + units[None, :]
    tl.store(out, dz2.to(dz2_ptr.dtype.element_ty), mask=keep)
    partials = tl.program_id(0).to(tl.int64) * hidden2 + units
    tl.store(dw3_ptr + partials, tl.sum(tl.where(keep, d_score[:, None] * relu(z2), 0.0), axis=0), mask=in_units)
    tl.store(db2_ptr + partials, tl.sum(tl.where(keep, dz2, 0.0), axis=0), mask=in_units)


@tuned(key=TUNING_KEY, dtype_arg="P_ptr")  # writes every element of its partials
@triton.jit
def _dw2_kernel(
    P_ptr,
    Q_ptr,
    src_ptr,
    dz2_ptr,
    partial_ptr,
    rows,
    rows_per_split,
    rows_per_pair,
    locations,
    hidden1,
    hidden2,
    ACC: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """partial[split] = dZ2^T h1 over the split's rows for a (second-layer units BLOCK_M,
    first-layer units BLOCK_N) block of dW2; h1 rebuilt from P, Q and the sources."""
    units2 = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    units1 = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(2)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    first = split * rows_per_split
    for r0 in range(first, tl.minimum(first + rows_per_split, rows), BLOCK_K):
        rows_block = r0 + tl.arange(0, BLOCK_K)
        source, image, valid, in_rows = _rows(src_ptr, rows_block, rows, rows_per_pair, locations, WIDE)
        in_rows = in_rows & (rows_block < first + rows_per_split)
        dz2 = tl.load(
            dz2_ptr + _wide(rows_block, WIDE)[None, :] * hidden2 + units2[:, None],
            mask=in_rows[None, :] & (units2 < hidden2)[:, None],
            other=0.0,
        )
        h1 = _first_layer(P_ptr, Q_ptr, source, image, valid, in_rows, units1, hidden1, ACC).to(dz2.dtype)
        if ALLOW_TF32:
            acc += tl.dot(dz2, h1, out_dtype=ACC)
        else:
            acc += tl.dot(dz2, h1, input_precision="ieee", out_dtype=ACC)
    keep = (units2 < hidden2)[:, None] & (units1 < hidden1)[None, :]
    out = partial_ptr + (split.to(tl.int64) * hidden2 + units2[:, None]) * hidden1 + units1[None, :]
    tl.store(out, acc, mask=keep)


@tuned(
    key=["images", "locations", "hidden1", "hidden2", "ALLOW_TF32", "WIDE"],
    dtype_arg="P_ptr",
    spills=lambda tile, dtype: dtype == torch.float32 and tile.kwargs["BLOCK_N"] > 64,
    restore_value=["dP_ptr", "dQ_ptr"],  # added into
)
@triton.jit
def _dz1_kernel(
    P_ptr,
    Q_ptr,
    src_ptr,
    dz2_ptr,
    W2_ptr,
    dP_ptr,
    dQ_ptr,
    pair_first_row,
    images,
    locations,
    hidden1,
    hidden2,
    ACC: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """For one image of one pair set (of `images`: the grid's first axis) and a block of
    first-layer units: dZ1 = (dZ2 W2) relu'(h1) over the image's L rows, added into dP at
    each row's source and, summed over the rows, into dQ at the image."""
    image = tl.program_id(0)
    units1 = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_units1 = units1 < hidden1
    d_q = tl.zeros((BLOCK_N,), dtype=ACC)
    first = pair_first_row + image * locations
    for l0 in range(0, locations, BLOCK_M):
        rows_block = first + l0 + tl.arange(0, BLOCK_M)
        in_rows = l0 + tl.arange(0, BLOCK_M) < locations
        source = tl.load(src_ptr + rows_block, mask=in_rows, other=0)
        valid = source >= 0
        source = tl.where(valid, source, 0)
        if not WIDE:
            source = source.to(tl.int32)
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
            if ALLOW_TF32:
                dh1 += tl.dot(dz2, w.to(dz2.dtype), out_dtype=ACC)
            else:
                dh1 += tl.dot(dz2, w.to(dz2.dtype), input_precision="ieee", out_dtype=ACC)
        h1 = _first_layer(
            P_ptr, Q_ptr, source, tl.broadcast_to(image, (BLOCK_M,)), valid, in_rows, units1, hidden1, ACC
        )
        keep = (in_rows & valid)[:, None] & in_units1[None, :]
        dz1 = tl.where(keep & (h1 > 0), dh1, 0.0)
        tl.atomic_add(dP_ptr + source[:, None] * hidden1 + units1[None, :], dz1, mask=keep)
        d_q += tl.sum(dz1, axis=0)
    at = dQ_ptr + image.to(tl.int64) * hidden1 + units1
    tl.store(at, tl.load(at, mask=in_units1, other=0.0) + d_q, mask=in_units1)


class _Problem:
    """The fused kernels' view of the critic: the C++ plan's first-layer split (P, Q and
    the row sources, after its checks), the later layers and the sizes."""

    def __init__(self, feature_map, global_code, weights, biases, perm, estimator, grad=None, scores=None):
        torch._check_value(
            len(weights) == dispatch.TRITON_CONCAT_LAYERS,
            lambda: (
                f"dim_fused.concat_conv_mi_triton: the fused kernels take {dispatch.TRITON_CONCAT_LAYERS} "
                f"layers (two hidden), got {len(weights)}; other depths run backend 'cpu' or 'cuda'"
            ),
        )
        self.local_rows, self.sources, self.P, self.Q = torch.ops.dim_fused.concat_conv_mi_first_layer(
            feature_map, global_code, weights, biases, perm, estimator, grad, scores
        )
        self.biases = [library.bias_or_none(b) for b in biases]
        self.batch = feature_map.shape[0]
        self.locations = feature_map[0, 0].numel()
        self.rows_per_pair = self.batch * self.locations
        self.rows = self.sources.numel()
        self.w2, self.w3 = weights[1].contiguous(), weights[2].contiguous()
        self.hidden1, self.hidden2 = self.w2.shape[1], self.w2.shape[0]
        self.acc = accumulation_dtype(feature_map.dtype)
        self.shape = {
            "rows_per_pair": self.rows_per_pair,
            "locations": self.locations,
            "hidden1": self.hidden1,
            "hidden2": self.hidden2,
        }
        wide = max(self.rows * self.hidden2, self.rows_per_pair * self.hidden1) >= 2**31
        self.meta = {"ACC": tl_dtype(self.acc), "ALLOW_TF32": tf32_allowed(feature_map), "WIDE": wide}
        self.b2 = self.biases[1] if self.biases[1] is not None else self.w3  # any pointer when HAS_B2 is off
        self.has_b2 = self.biases[1] is not None


@no_autocast
def forward(
    feature_map, global_code, weights, biases, perm, estimator: str, detach_negatives: bool, keep: bool, chunk: int
):
    """(estimate, scores, []): the fused kernels keep no activations (they recompute on
    chip), so `keep` must be False; `chunk` (the C++ plan's row chunks) does not apply."""
    torch._check_value(not keep, lambda: "dim_fused.concat_conv_mi_triton keeps no activations: pass False")
    p = _Problem(feature_map, global_code, weights, biases, perm, estimator)
    partial_blocks = triton.cdiv(p.hidden2, 32)  # as many as the narrowest tile's unit blocks
    partial = torch.zeros(partial_blocks, p.rows, dtype=p.acc, device=feature_map.device)
    with device_of(feature_map):
        _score_kernel[lambda meta: (triton.cdiv(p.rows, meta["BLOCK_M"]), triton.cdiv(p.hidden2, meta["BLOCK_N"]))](
            p.P, p.Q, p.sources, p.w2, p.b2, p.w3, partial, p.rows, **p.shape, HAS_B2=p.has_b2, **p.meta
        )
    scores = partial.sum(0)
    if p.biases[2] is not None:
        scores = scores + p.biases[2].to(p.acc)
    scores = scores.view(-1, p.batch, p.locations)
    estimate = torch.ops.dim_fused.mi_bound_triton(scores[0], scores[1:], estimator)
    return estimate.to(feature_map.dtype), scores, []


@no_autocast
def backward(
    grad, feature_map, global_code, weights, biases, perm, scores, activations, estimator, detach_negatives, chunk
):
    torch._check_value(not activations, lambda: "dim_fused.concat_conv_mi_triton_backward takes no activations")
    p = _Problem(feature_map, global_code, weights, biases, perm, estimator, grad, scores)
    dtype, device = feature_map.dtype, feature_map.device
    d_pos, d_neg = torch.ops.dim_fused.mi_bound_triton_backward(grad.to(p.acc), scores[0], scores[1:], estimator)
    # Times the gradient scale B * L, undone at the end (as in the C++ plan): half-precision
    # dZ2 then holds values near 1 instead of underflowing (1 / (B L) is below fp16's
    # normal range).
    scale = float(p.rows_per_pair)
    d_scores = (torch.cat([d_pos[None], d_neg]) * scale).reshape(-1)
    row_blocks = triton.cdiv(p.rows, 32)  # partials per the narrowest tile's row blocks
    dz2 = torch.empty(p.rows, p.hidden2, dtype=dtype, device=device)
    dw3 = torch.zeros(row_blocks, p.hidden2, dtype=p.acc, device=device)
    db2 = torch.zeros(row_blocks, p.hidden2, dtype=p.acc, device=device)
    splits = max(1, min(64, triton.cdiv(p.rows, 256)))
    rows_per_split = triton.cdiv(p.rows, splits)
    dw2 = torch.empty(splits, p.hidden2, p.hidden1, dtype=p.acc, device=device)
    # dP feeds W1f's gradient (every pair), dP_features the features' gradient: the same
    # buffer, or the positive pairs' own when the negatives are detached (added in after).
    dP = torch.zeros(p.P.shape, dtype=p.acc, device=device)
    dP_features = torch.zeros_like(dP) if detach_negatives else dP
    dQ = torch.zeros(p.Q.shape, dtype=p.acc, device=device)
    with device_of(feature_map):
        _dz2_kernel[lambda meta: (triton.cdiv(p.rows, meta["BLOCK_M"]), triton.cdiv(p.hidden2, meta["BLOCK_N"]))](
            p.P, p.Q, p.sources, p.w2, p.b2, p.w3, d_scores, dz2, dw3, db2, p.rows, **p.shape, HAS_B2=p.has_b2, **p.meta
        )
        _dw2_kernel[
            lambda meta: (triton.cdiv(p.hidden2, meta["BLOCK_M"]), triton.cdiv(p.hidden1, meta["BLOCK_N"]), splits)
        ](p.P, p.Q, p.sources, dz2, dw2, p.rows, rows_per_split, **p.shape, **p.meta)
        for pair in range(p.rows // p.rows_per_pair):  # one launch per pair set: each writes a dP row once
            target = dP_features if pair == 0 else dP
            _dz1_kernel[lambda meta: (p.batch, triton.cdiv(p.hidden1, meta["BLOCK_N"]))](
                p.P, p.Q, p.sources, dz2, p.w2, target, dQ, pair * p.rows_per_pair,
                p.batch, p.locations, p.hidden1, p.hidden2, **p.meta,
            )  # fmt: skip
    if detach_negatives:
        dP += dP_features
    d_map, d_code, d_w1, d_b1 = torch.ops.dim_fused.concat_conv_mi_first_layer_backward(
        feature_map, p.local_rows, global_code, weights[0], p.biases[0] is not None, dP, dP_features, dQ, scale
    )
    unscale = 1.0 / scale
    d_weights = [d_w1, *((w * unscale).to(dtype) for w in (dw2.sum(0), dw3.sum(0)[None]))]
    d_b3 = d_scores.sum()[None].to(p.acc) if p.biases[2] is not None else None
    later = [db2.sum(0) if p.biases[1] is not None else None, d_b3]
    d_biases = [d_b1, *(library.no_bias(feature_map) if b is None else (b * unscale).to(dtype) for b in later)]
    return d_map, d_code, d_weights, d_biases
