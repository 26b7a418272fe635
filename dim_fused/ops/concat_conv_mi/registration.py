"""concat_conv_mi's torch.library registrations: the fake kernels and the autograd
formula of dim_fused::concat_conv_mi (C++) and dim_fused::concat_conv_mi_triton (whose
kept tensors are the first layer's halves instead of the hidden activations)."""

import torch

from ..common import library
from ..common.precision import accumulation_dtype


def _check_shapes(op, feature_map, global_code, weights, biases, perm) -> None:
    library.one_device(op, feature_map, global_code, perm, *weights, *biases)
    batch, locations = feature_map.shape[0], feature_map[0, 0].numel()
    torch._check_value(
        perm.dim() == 3 and perm.shape[1:] == (locations, batch) and global_code.shape[0] == batch,
        lambda: f"dim_fused.{op}: need perm (K, L, B) and global_code (B, D) for a (B, C, L) feature map",
    )


def _fake(feature_map, global_code, weights, biases, perm, estimator, detach_negatives, keep_activations, chunk):
    _check_shapes("concat_conv_mi", feature_map, global_code, weights, biases, perm)
    shape = (perm.shape[0] + 1, feature_map.shape[0], feature_map[0, 0].numel())
    rows = shape[0] * shape[1] * shape[2]
    kept = []
    if keep_activations:  # every hidden layer's activations over all (1 + K) B L rows
        kept = [feature_map.new_empty((rows, w.shape[0])) for w in weights[:-1]]
    return feature_map.new_empty(()), feature_map.new_empty(shape, dtype=accumulation_dtype(feature_map.dtype)), kept


def _triton_fake(feature_map, global_code, weights, biases, perm, estimator, detach_negatives, keep_activations, chunk):
    """The Triton op keeps the first layer's halves P (B L, H1) and Q (B, H1) and the
    bound's normaliser (0-dim, in the scores' dtype) instead."""
    estimate, scores, _ = _fake(
        feature_map, global_code, weights, biases, perm, estimator, detach_negatives, False, chunk
    )
    batch, hidden = feature_map.shape[0], weights[0].shape[0]
    kept = [
        feature_map.new_empty((batch * feature_map[0, 0].numel(), hidden)),
        feature_map.new_empty((batch, hidden)),
        scores.new_empty(()),
    ]
    return estimate, scores, kept


def _backward_fake(
    grad, feature_map, global_code, weights, biases, perm, scores, activations, estimator, detach_negatives, chunk
):
    _check_shapes("concat_conv_mi_backward", feature_map, global_code, weights, biases, perm)
    library.one_device("concat_conv_mi_backward", grad, feature_map, scores, *activations)
    return (
        feature_map.new_empty(feature_map.shape),
        global_code.new_empty(global_code.shape),
        [w.new_empty(w.shape) for w in weights],
        [b.new_empty(b.shape) for b in biases],
    )


def _setup_context(ctx, inputs, output) -> None:
    feature_map, global_code, weights, biases, perm, estimator, detach_negatives, _, chunk_values = inputs
    _, scores, activations = output
    ctx.save_for_backward(feature_map, global_code, perm, scores, *weights, *biases, *activations)
    ctx.args = (len(weights), estimator, detach_negatives, chunk_values)


def _gradients(backward_op, ctx, grad, _grad_scores, _grad_activations):
    layers, estimator, detach_negatives, chunk_values = ctx.args
    feature_map, global_code, perm, scores, *rest = ctx.saved_tensors
    weights, biases, activations = rest[:layers], rest[layers : 2 * layers], rest[2 * layers :]
    d_map, d_code, d_weights, d_biases = backward_op(
        grad, feature_map, global_code, weights, biases, perm, scores, activations, estimator, detach_negatives,
        chunk_values,
    )  # fmt: skip
    return d_map, d_code, list(d_weights), list(d_biases), None, None, None, None, None


library.register(
    "concat_conv_mi",
    fake=_fake,
    triton_fake=_triton_fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    gradients=_gradients,
    triton_kernels=f"{__package__}.triton_kernels",
)
