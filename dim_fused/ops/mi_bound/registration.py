"""mi_bound's torch.library registrations: the fake kernels and the autograd formula of
dim_fused::mi_bound (C++) and dim_fused::mi_bound_triton."""

import torch

from ..common import library
from ..common.precision import accumulation_dtype


def _fake(pos_scores: torch.Tensor, neg_scores: torch.Tensor, estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
    library.one_device("mi_bound", pos_scores, neg_scores)
    if estimator == "infonce":
        torch._check_value(
            neg_scores.dim() == pos_scores.dim() + 1 and neg_scores.shape[1:] == pos_scores.shape,
            lambda: "dim_fused.mi_bound: infonce needs neg_scores of shape (K, *pos_scores.shape)",
        )
    return pos_scores.new_empty(()), pos_scores.new_empty((), dtype=accumulation_dtype(pos_scores.dtype))


def _backward_fake(
    grad: torch.Tensor,
    pos_scores: torch.Tensor,
    neg_scores: torch.Tensor,
    normaliser: torch.Tensor | None,
    estimator: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    library.one_device("mi_bound_backward", grad, pos_scores, neg_scores)
    torch._check_value(grad.numel() == 1, lambda: "dim_fused.mi_bound_backward: grad must be one element")
    return pos_scores.new_empty(pos_scores.shape), neg_scores.new_empty(neg_scores.shape)


def _setup_context(ctx, inputs, output) -> None:
    pos_scores, neg_scores, estimator = inputs
    ctx.save_for_backward(pos_scores, neg_scores, output[1])
    ctx.estimator = estimator


def _gradients(backward_op, ctx, grad, _grad_normaliser):
    pos_scores, neg_scores, normaliser = ctx.saved_tensors
    d_pos, d_neg = backward_op(grad, pos_scores, neg_scores, normaliser, ctx.estimator)
    return d_pos, d_neg, None


library.register(
    "mi_bound",
    fake=_fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    gradients=_gradients,
    triton_kernels=f"{__package__}.triton_kernels",
)
