"""torch.library registrations: the compiled C++/CUDA ops (schemas in
csrc/dim_fused.cpp) and the Triton ops (custom_op), each with a fake kernel for
torch.compile and an autograd formula whose backward is itself a registered op.

Every fused op exists as `dim_fused::<op>` (CPU and CUDA kernels from C++) and
`dim_fused::<op>_triton` with the same schema."""

import functools
import os
import warnings

import torch

C_IMPORT_ERROR: str | None = None
try:
    from . import _C  # noqa: F401  (importing it registers the C++ ops)
except ImportError as error:
    C_IMPORT_ERROR = str(error)
    if not os.environ.get("DIM_FUSED_QUIET"):
        warnings.warn(
            f"dim_fused: the compiled extension is missing ({error}); only the 'reference' and "
            "'triton' backends are available. Build it with: pip install --no-build-isolation -e .",
            stacklevel=2,
        )

TRITON_IMPORT_ERROR: str | None = None
try:
    from .triton import concat_conv_mi as triton_concat_conv_mi
    from .triton import dot_product_mi as triton_dot_product_mi
    from .triton import mi_bound as triton_mi_bound
except ImportError as error:  # triton missing or unusable on this platform
    TRITON_IMPORT_ERROR = str(error)


@functools.cache  # registrations are fixed once _C is imported; dispatch asks on every call
def has_cpp_kernel(op: str, dispatch_key: str) -> bool:
    return C_IMPORT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(f"dim_fused::{op}", dispatch_key)


# --- mi_bound -----------------------------------------------------------------


def _mi_bound_fake(pos_scores: torch.Tensor, neg_scores: torch.Tensor, estimator: str) -> torch.Tensor:
    return pos_scores.new_empty(())


def _mi_bound_backward_fake(
    grad: torch.Tensor, pos_scores: torch.Tensor, neg_scores: torch.Tensor, estimator: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return pos_scores.new_empty(pos_scores.shape), neg_scores.new_empty(neg_scores.shape)


def _register_mi_bound(op: str, backward_op) -> None:
    def setup_context(ctx, inputs, output):
        pos_scores, neg_scores, estimator = inputs
        ctx.save_for_backward(pos_scores, neg_scores)
        ctx.estimator = estimator

    def backward(ctx, grad):
        pos_scores, neg_scores = ctx.saved_tensors
        dpos, dneg = backward_op(grad, pos_scores, neg_scores, ctx.estimator)
        return dpos, dneg, None

    torch.library.register_fake(op)(_mi_bound_fake)
    torch.library.register_autograd(op, backward, setup_context=setup_context)


if C_IMPORT_ERROR is None:
    torch.library.register_fake("dim_fused::mi_bound_backward")(_mi_bound_backward_fake)
    _register_mi_bound("dim_fused::mi_bound", torch.ops.dim_fused.mi_bound_backward)

if TRITON_IMPORT_ERROR is None and C_IMPORT_ERROR is None:

    @torch.library.custom_op("dim_fused::mi_bound_triton_backward", mutates_args=())
    def mi_bound_triton_backward(
        grad: torch.Tensor, pos_scores: torch.Tensor, neg_scores: torch.Tensor, estimator: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return triton_mi_bound.backward(grad, pos_scores, neg_scores, estimator)

    @torch.library.custom_op("dim_fused::mi_bound_triton", mutates_args=())
    def mi_bound_triton(pos_scores: torch.Tensor, neg_scores: torch.Tensor, estimator: str) -> torch.Tensor:
        return triton_mi_bound.forward(pos_scores, neg_scores, estimator)

    mi_bound_triton_backward.register_fake(_mi_bound_backward_fake)
    _register_mi_bound("dim_fused::mi_bound_triton", mi_bound_triton_backward)


# --- dot_product_mi -----------------------------------------------------------


def _stats_dtype(codes: torch.Tensor) -> torch.dtype:
    return torch.float64 if codes.dtype == torch.float64 else torch.float32


def _dot_product_mi_fake(
    local_codes: torch.Tensor, global_codes: torch.Tensor, estimator: str, official: bool, positive_offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    stats = global_codes.new_empty((global_codes.shape[0], 2), dtype=_stats_dtype(global_codes))
    return local_codes.new_empty(()), stats


def _dot_product_mi_backward_fake(
    grad: torch.Tensor,
    local_codes: torch.Tensor,
    global_codes: torch.Tensor,
    stats: torch.Tensor,
    estimator: str,
    official: bool,
    positive_offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(local_codes), global_codes.new_empty(global_codes.shape)


def _register_dot_product_mi(op: str, backward_op) -> None:
    def setup_context(ctx, inputs, output):
        local_codes, global_codes, estimator, official, positive_offset = inputs
        ctx.save_for_backward(local_codes, global_codes, output[1])
        ctx.args = (estimator, official, positive_offset)

    def backward(ctx, grad, _grad_stats):
        local_codes, global_codes, stats = ctx.saved_tensors
        d_local, d_global = backward_op(grad, local_codes, global_codes, stats, *ctx.args)
        return d_local, d_global, None, None, None

    torch.library.register_fake(op)(_dot_product_mi_fake)
    torch.library.register_autograd(op, backward, setup_context=setup_context)


if C_IMPORT_ERROR is None:
    torch.library.register_fake("dim_fused::dot_product_mi_backward")(_dot_product_mi_backward_fake)
    _register_dot_product_mi("dim_fused::dot_product_mi", torch.ops.dim_fused.dot_product_mi_backward)

if TRITON_IMPORT_ERROR is None and C_IMPORT_ERROR is None:

    @torch.library.custom_op("dim_fused::dot_product_mi_triton_backward", mutates_args=())
    def dot_product_mi_triton_backward(
        grad: torch.Tensor,
        local_codes: torch.Tensor,
        global_codes: torch.Tensor,
        stats: torch.Tensor,
        estimator: str,
        official: bool,
        positive_offset: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return triton_dot_product_mi.backward(
            grad, local_codes, global_codes, stats, estimator, official, positive_offset
        )

    @torch.library.custom_op("dim_fused::dot_product_mi_triton", mutates_args=())
    def dot_product_mi_triton(
        local_codes: torch.Tensor, global_codes: torch.Tensor, estimator: str, official: bool, positive_offset: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return triton_dot_product_mi.forward(local_codes, global_codes, estimator, official, positive_offset)

    dot_product_mi_triton_backward.register_fake(_dot_product_mi_backward_fake)
    _register_dot_product_mi("dim_fused::dot_product_mi_triton", dot_product_mi_triton_backward)


# --- concat_conv_mi -----------------------------------------------------------


def _concat_conv_mi_fake(feature_map, global_code, weights, biases, perm, estimator, detach_negatives):
    shape = (perm.shape[0] + 1, feature_map.shape[0], feature_map[0, 0].numel())
    return feature_map.new_empty(()), feature_map.new_empty(shape, dtype=_stats_dtype(feature_map))


def _concat_conv_mi_backward_fake(
    grad, feature_map, global_code, weights, biases, perm, scores, estimator, detach_negatives
):
    return (
        feature_map.new_empty(feature_map.shape),
        global_code.new_empty(global_code.shape),
        [w.new_empty(w.shape) for w in weights],
        [b.new_empty(b.shape) for b in biases],
    )


def _register_concat_conv_mi(op: str, backward_op) -> None:
    # Layers without a bias carry an empty tensor: torch.library differentiates
    # through lists of tensors only, not through lists with None in them.
    def setup_context(ctx, inputs, output):
        feature_map, global_code, weights, biases, perm, estimator, detach_negatives = inputs
        ctx.save_for_backward(feature_map, global_code, perm, output[1], *weights, *biases)
        ctx.args = (len(weights), estimator, detach_negatives)

    def backward(ctx, grad, _grad_scores):
        num_layers, estimator, detach_negatives = ctx.args
        feature_map, global_code, perm, scores, *params = ctx.saved_tensors
        weights, biases = params[:num_layers], params[num_layers:]
        d_map, d_code, d_weights, d_biases = backward_op(
            grad, feature_map, global_code, weights, biases, perm, scores, estimator, detach_negatives
        )
        return d_map, d_code, list(d_weights), list(d_biases), None, None, None

    torch.library.register_fake(op)(_concat_conv_mi_fake)
    torch.library.register_autograd(op, backward, setup_context=setup_context)


if C_IMPORT_ERROR is None:
    torch.library.register_fake("dim_fused::concat_conv_mi_backward")(_concat_conv_mi_backward_fake)
    _register_concat_conv_mi("dim_fused::concat_conv_mi", torch.ops.dim_fused.concat_conv_mi_backward)

if TRITON_IMPORT_ERROR is None and C_IMPORT_ERROR is None:

    @torch.library.custom_op("dim_fused::concat_conv_mi_triton_backward", mutates_args=())
    def concat_conv_mi_triton_backward(
        grad: torch.Tensor,
        feature_map: torch.Tensor,
        global_code: torch.Tensor,
        weights: list[torch.Tensor],
        biases: list[torch.Tensor],
        perm: torch.Tensor,
        scores: torch.Tensor,
        estimator: str,
        detach_negatives: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        return triton_concat_conv_mi.backward(
            grad, feature_map, global_code, weights, biases, perm, scores, estimator, detach_negatives
        )

    @torch.library.custom_op("dim_fused::concat_conv_mi_triton", mutates_args=())
    def concat_conv_mi_triton(
        feature_map: torch.Tensor,
        global_code: torch.Tensor,
        weights: list[torch.Tensor],
        biases: list[torch.Tensor],
        perm: torch.Tensor,
        estimator: str,
        detach_negatives: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return triton_concat_conv_mi.forward(
            feature_map, global_code, weights, biases, perm, estimator, detach_negatives
        )

    concat_conv_mi_triton_backward.register_fake(_concat_conv_mi_backward_fake)
    _register_concat_conv_mi("dim_fused::concat_conv_mi_triton", concat_conv_mi_triton_backward)
