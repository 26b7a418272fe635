"""concat_conv_mi in Triton: the row-chunk scheme of csrc/concat_conv_mi.cpp with
Triton kernels for the first layer's gather + add + ReLU (the tiled concat and the
shuffled copies never exist) and for the gradient's scatter through each
permutation (no atomics: a permutation never hits a row twice); the hidden layers'
GEMMs are torch's."""

import os

import torch
import triton
import triton.language as tl

BLOCK_R, BLOCK_H = 32, 64


def _chunk_images(batch: int, locations: int, widest: int) -> int:
    rows = max(1, int(os.environ.get("DIM_FUSED_CHUNK_VALUES", 1 << 18)) // widest)
    return max(1, min(batch, rows // locations))


@triton.jit
def _first_layer_kernel(
    P, Q, src, out, first_row, locations, rows, width, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (r[:, None] < rows) & (h[None, :] < width)
    source = tl.load(src + r, mask=r < rows, other=0)
    image = (first_row + r) // locations
    p = tl.load(P + source[:, None] * width + h[None, :], mask=mask, other=0.0)
    q = tl.load(Q + image[:, None] * width + h[None, :], mask=mask, other=0.0)
    tl.store(out + r[:, None] * width + h[None, :], tl.maximum(p + q, 0.0).to(out.dtype.element_ty), mask=mask)


@triton.jit
def _scatter_rows_kernel(dP, dZ, src, rows, width, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (r[:, None] < rows) & (h[None, :] < width)
    source = tl.load(src + r, mask=r < rows, other=0)
    target = dP + source[:, None] * width + h[None, :]
    d_z = tl.load(dZ + r[:, None] * width + h[None, :], mask=mask, other=0.0)
    tl.store(target, tl.load(target, mask=mask, other=0.0) + d_z.to(dP.dtype.element_ty), mask=mask)


class _Problem:
    def __init__(self, feature_map, global_code, weights, biases, perm):
        biases = [b if b.numel() else None for b in biases]  # empty: no bias
        self.batch, self.channels = feature_map.shape[:2]
        flat = feature_map.reshape(self.batch, self.channels, -1)
        self.locations = flat.shape[2]
        self.local_rows = flat.transpose(1, 2).reshape(-1, self.channels).contiguous()
        self.global_code = global_code.contiguous()
        self.weights, self.biases = weights, biases
        rows = torch.arange(self.batch * self.locations, device=perm.device)
        negatives = perm.transpose(1, 2) * self.locations + torch.arange(self.locations, device=perm.device)
        self.sources = torch.cat([rows[None], negatives.reshape(perm.shape[0], -1)])
        w1 = weights[0]
        self.w1f, self.w1y = w1[:, : self.channels], w1[:, self.channels :]
        self.P = self.local_rows @ self.w1f.t()
        self.Q = global_code @ self.w1y.t() + (biases[0] if biases[0] is not None else 0)
        self.step = _chunk_images(self.batch, self.locations, max(w.shape[0] for w in weights))

    def chunks(self):
        for pairs in range(self.sources.shape[0]):
            for image in range(0, self.batch, self.step):
                images = min(self.step, self.batch - image)
                yield pairs, image, images, image * self.locations, images * self.locations

    def hidden(self, pairs: int, first_row: int, rows: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        width = self.P.shape[1]
        first = torch.empty(rows, width, dtype=self.P.dtype, device=self.P.device)
        grid = (triton.cdiv(rows, BLOCK_R), triton.cdiv(width, BLOCK_H))
        src = self.sources[pairs, first_row : first_row + rows]
        _first_layer_kernel[grid](
            self.P, self.Q, src, first, first_row, self.locations, rows, width, BLOCK_R=BLOCK_R, BLOCK_H=BLOCK_H
        )
        hidden = [first]
        for w, b in zip(self.weights[1:-1], self.biases[1:-1], strict=True):
            hidden.append(torch.relu(torch.nn.functional.linear(hidden[-1], w, b)))
        scores = torch.nn.functional.linear(hidden[-1], self.weights[-1], self.biases[-1])
        return hidden, scores.view(rows)


def forward(feature_map, global_code, weights, biases, perm, estimator: str, detach_negatives: bool):
    p = _Problem(feature_map, global_code, weights, biases, perm)
    scores = torch.empty(p.sources.shape[0], p.batch * p.locations, dtype=p.P.dtype, device=p.P.device)
    for pairs, _, _, first_row, rows in p.chunks():
        scores[pairs, first_row : first_row + rows] = p.hidden(pairs, first_row, rows)[1]
    scores = scores.view(-1, p.batch, p.locations)
    estimate = torch.ops.dim_fused.mi_bound_triton(scores[0], scores[1:], estimator)
    return estimate, scores


def backward(grad, feature_map, global_code, weights, biases, perm, scores, estimator, detach_negatives):
    p = _Problem(feature_map, global_code, weights, biases, perm)
    biases = p.biases
    d_pos, d_neg = torch.ops.dim_fused.mi_bound_triton_backward(grad, scores[0], scores[1:], estimator)
    d_scores = torch.cat([d_pos[None], d_neg]).view(scores.shape[0], -1)
    acc = torch.float64 if p.P.dtype == torch.float64 else torch.float32
    # dP feeds W1f's gradient (every pair); dP_features the features' (no detached negatives).
    dP = torch.zeros(p.P.shape, dtype=acc, device=p.P.device)
    dP_features = torch.zeros_like(dP) if detach_negatives else dP
    dQ = torch.zeros(p.Q.shape, dtype=acc, device=p.P.device)
    d_weights = [torch.zeros(w.shape, dtype=acc, device=w.device) for w in weights]
    d_biases = [torch.zeros(b.shape if b is not None else (0,), dtype=acc, device=p.P.device) for b in biases]
    last = len(weights) - 1
    for pairs, image, images, first_row, rows in p.chunks():
        hidden, _ = p.hidden(pairs, first_row, rows)
        d_t = d_scores[pairs, first_row : first_row + rows, None]
        d_weights[last] += d_t.t() @ hidden[-1]
        if biases[last] is not None:
            d_biases[last] += d_t.sum(0)
        d_hidden = d_t @ weights[last]
        for i in range(last - 1, -1, -1):
            d_z = torch.ops.aten.threshold_backward(d_hidden, hidden[i], 0)
            if i == 0:
                dQ[image : image + images] += d_z.view(images, p.locations, -1).sum(1)
                width = d_z.shape[1]
                grid = (triton.cdiv(rows, BLOCK_R), triton.cdiv(width, BLOCK_H))
                src = p.sources[pairs, first_row : first_row + rows]
                targets = [dP, dP_features] if pairs == 0 and detach_negatives else [dP]
                for target in targets:
                    _scatter_rows_kernel[grid](target, d_z, src, rows, width, BLOCK_R=BLOCK_R, BLOCK_H=BLOCK_H)
                break
            if biases[i] is not None:
                d_biases[i] += d_z.sum(0)
            d_weights[i] += d_z.t() @ hidden[i - 1]
            d_hidden = d_z @ weights[i]
    dP_in, dQ_in = dP.to(p.P.dtype), dQ.to(p.Q.dtype)
    d_weights[0][:, : p.channels] += dP_in.t() @ p.local_rows
    d_weights[0][:, p.channels :] += dQ_in.t() @ p.global_code
    if biases[0] is not None:
        d_biases[0] += dQ.sum(0)
    d_rows = dP_features.to(p.P.dtype) @ p.w1f  # (B * L, C)
    d_local = d_rows.view(p.batch, p.locations, p.channels).transpose(1, 2).contiguous().view(feature_map.shape)
    dtype = feature_map.dtype
    return d_local, dQ_in @ p.w1y, [d.to(dtype) for d in d_weights], [d.to(dtype) for d in d_biases]
