"""torch.library registrations: the compiled C++/CUDA ops (schemas in
csrc/dim_fused.cpp) and the Triton ops (custom_op), each with a fake kernel for
torch.compile and an autograd formula whose backward is itself a registered op.

Every fused op exists as `dim_fused::<op>` (CPU and CUDA kernels from C++) and
`dim_fused::<op>_triton` with the same schema."""

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
    from .triton import dot_product_mi as triton_dot_product_mi
    from .triton import mi_bound as triton_mi_bound
except ImportError as error:  # triton missing or unusable on this platform
    TRITON_IMPORT_ERROR = str(error)


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

if TRITON_IMPORT_ERROR is None:

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
    return local_codes.new_empty(local_codes.shape), global_codes.new_empty(global_codes.shape)


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

if TRITON_IMPORT_ERROR is None:

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
