"""torch.library registrations: the compiled C++/CUDA ops (schemas in
csrc/dim_fused.cpp) and the Triton ops (custom_op), each with a fake kernel for
torch.compile and an autograd formula whose backward is itself a registered op.

Every fused op exists as `dim_fused::<op>` (CPU and CUDA kernels from C++) and
`dim_fused::<op>_triton` with the same schema."""

import functools
import os
import warnings

import torch

from ._layout import gradient_like

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


# --- checks every fake kernel and backward formula shares ------------------------


def _one_device(op: str, *tensors: torch.Tensor) -> None:
    """A fake kernel also answers for real tensors when one of them is on the meta device:
    it must refuse a mix instead of returning uninitialised memory."""
    devices = {t.device for t in tensors}
    torch._check_value(
        len(devices) == 1, lambda: f"dim_fused.{op}: tensors on several devices {sorted(map(str, devices))}"
    )


def _no_double_backward(op: str) -> None:
    """The backward ops have no derivative of their own: a gradient of a gradient through
    them (create_graph=True, e.g. a gradient penalty through the critic) would silently be
    zero, so it is refused."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"dim_fused.{op}: double backward (a gradient of this op's gradient, create_graph=True) is not "
            "supported; compute that term with backend='reference'"
        )


# --- mi_bound -----------------------------------------------------------------


def _mi_bound_fake(pos_scores: torch.Tensor, neg_scores: torch.Tensor, estimator: str) -> torch.Tensor:
    _one_device("mi_bound", pos_scores, neg_scores)
    if estimator == "infonce":
        torch._check_value(
            neg_scores.dim() == pos_scores.dim() + 1 and neg_scores.shape[1:] == pos_scores.shape,
            lambda: "dim_fused.mi_bound: infonce needs neg_scores of shape (K, *pos_scores.shape)",
        )
    return pos_scores.new_empty(())


def _mi_bound_backward_fake(
    grad: torch.Tensor, pos_scores: torch.Tensor, neg_scores: torch.Tensor, estimator: str
) -> tuple[torch.Tensor, torch.Tensor]:
    _one_device("mi_bound_backward", grad, pos_scores, neg_scores)
    torch._check_value(grad.numel() == 1, lambda: "dim_fused.mi_bound_backward: grad must be one element")
    return pos_scores.new_empty(pos_scores.shape), neg_scores.new_empty(neg_scores.shape)


def _register_mi_bound(op: str, backward_op) -> None:
    def setup_context(ctx, inputs, output):
        pos_scores, neg_scores, estimator = inputs
        ctx.save_for_backward(pos_scores, neg_scores)
        ctx.estimator = estimator

    def backward(ctx, grad):
        _no_double_backward("mi_bound")
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


def _check_dot_product_shapes(op: str, local_codes: torch.Tensor, global_codes: torch.Tensor) -> None:
    torch._check_value(
        local_codes.dim() >= 3
        and global_codes.dim() == 2
        and global_codes.shape[1] == local_codes.shape[1]
        and global_codes.shape[0] >= local_codes.shape[0],
        lambda: f"dim_fused.{op}: need local_codes (B, E, ...) and global_codes (G >= B, E)",
    )


def _dot_product_mi_fake(
    local_codes: torch.Tensor, global_codes: torch.Tensor, estimator: str, official: bool, positive_offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    _one_device("dot_product_mi", local_codes, global_codes)
    _check_dot_product_shapes("dot_product_mi", local_codes, global_codes)
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
    _one_device("dot_product_mi_backward", grad, local_codes, global_codes, stats)
    _check_dot_product_shapes("dot_product_mi_backward", local_codes, global_codes)
    torch._check_value(
        stats.shape == (global_codes.shape[0], 2), lambda: "dim_fused.dot_product_mi_backward: stats must be (G, 2)"
    )
    return gradient_like(local_codes), global_codes.new_empty(global_codes.shape)


def _register_dot_product_mi(op: str, backward_op) -> None:
    def setup_context(ctx, inputs, output):
        local_codes, global_codes, estimator, official, positive_offset = inputs
        ctx.save_for_backward(local_codes, global_codes, output[1])
        ctx.args = (estimator, official, positive_offset)

    def backward(ctx, grad, _grad_stats):
        _no_double_backward("dot_product_mi")
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


def _check_concat_conv_shapes(op, feature_map, global_code, weights, biases, perm) -> None:
    _one_device(op, feature_map, global_code, perm, *weights, *biases)
    batch, locations = feature_map.shape[0], feature_map[0, 0].numel()
    torch._check_value(
        perm.dim() == 3 and perm.shape[1:] == (locations, batch) and global_code.shape[0] == batch,
        lambda: f"dim_fused.{op}: need perm (K, L, B) and global_code (B, D) for a (B, C, L) feature map",
    )


def _concat_conv_mi_fake_keeping(keeps):
    """The forward's fake kernel; `keeps(weights)` says whether the op keeps activations when
    asked to (the Triton op's fused kernels never do: they recompute on chip)."""

    def fake(feature_map, global_code, weights, biases, perm, estimator, detach_negatives, keep_activations):
        _check_concat_conv_shapes("concat_conv_mi", feature_map, global_code, weights, biases, perm)
        shape = (perm.shape[0] + 1, feature_map.shape[0], feature_map[0, 0].numel())
        rows = shape[0] * shape[1] * shape[2]
        kept = []
        if keep_activations and keeps(weights):
            kept = [feature_map.new_empty((rows, w.shape[0])) for w in weights[1:-1]]
        return feature_map.new_empty(()), feature_map.new_empty(shape, dtype=_stats_dtype(feature_map)), kept

    return fake


def _concat_conv_mi_backward_fake(
    grad, feature_map, global_code, weights, biases, perm, scores, activations, estimator, detach_negatives
):
    _check_concat_conv_shapes("concat_conv_mi_backward", feature_map, global_code, weights, biases, perm)
    _one_device("concat_conv_mi_backward", grad, feature_map, scores, *activations)
    return (
        feature_map.new_empty(feature_map.shape),
        global_code.new_empty(global_code.shape),
        [w.new_empty(w.shape) for w in weights],
        [b.new_empty(b.shape) for b in biases],
    )


def _register_concat_conv_mi(op: str, backward_op, keeps=lambda weights: True) -> None:
    # Layers without a bias carry an empty tensor: torch.library differentiates
    # through lists of tensors only, not through lists with None in them.
    def setup_context(ctx, inputs, output):
        feature_map, global_code, weights, biases, perm, estimator, detach_negatives, _ = inputs
        _, scores, activations = output
        ctx.save_for_backward(feature_map, global_code, perm, scores, *weights, *biases, *activations)
        ctx.args = (len(weights), estimator, detach_negatives)

    def backward(ctx, grad, _grad_scores, _grad_activations):
        _no_double_backward("concat_conv_mi")
        num_layers, estimator, detach_negatives = ctx.args
        feature_map, global_code, perm, scores, *rest = ctx.saved_tensors
        weights, biases, activations = rest[:num_layers], rest[num_layers : 2 * num_layers], rest[2 * num_layers :]
        d_map, d_code, d_weights, d_biases = backward_op(
            grad, feature_map, global_code, weights, biases, perm, scores, activations, estimator, detach_negatives
        )
        return d_map, d_code, list(d_weights), list(d_biases), None, None, None, None

    torch.library.register_fake(op)(_concat_conv_mi_fake_keeping(keeps))
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
        activations: list[torch.Tensor],
        estimator: str,
        detach_negatives: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        return triton_concat_conv_mi.backward(
            grad, feature_map, global_code, weights, biases, perm, scores, activations, estimator, detach_negatives
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
        keep_activations: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        return triton_concat_conv_mi.forward(
            feature_map, global_code, weights, biases, perm, estimator, detach_negatives, keep_activations
        )

    concat_conv_mi_triton_backward.register_fake(_concat_conv_mi_backward_fake)
    _register_concat_conv_mi(
        "dim_fused::concat_conv_mi_triton",
        concat_conv_mi_triton_backward,
        keeps=lambda weights: not triton_concat_conv_mi.fused(weights),
    )
