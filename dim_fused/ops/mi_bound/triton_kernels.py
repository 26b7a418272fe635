"""mi_bound in Triton: the shared bound kernels (ops/common/triton_bound.py), 3 launches
forward+backward for every estimator (the backward reads the forward's normaliser), after
the C++ op's checks (dim_fused::check_mi_bound)."""

import torch

from ..common.triton_bound import estimate, gradient
from ..common.triton_launch import no_autocast


@no_autocast
def forward(pos: torch.Tensor, neg: torch.Tensor, estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.ops.dim_fused.check_mi_bound(pos, neg, estimator, None, None)  # the C++ kernels' checks
    return estimate(pos.contiguous(), neg.contiguous(), estimator)


@no_autocast
def backward(grad: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, normaliser: torch.Tensor | None, estimator: str):
    torch.ops.dim_fused.check_mi_bound(pos, neg, estimator, grad, normaliser)
    pos, neg = pos.contiguous(), neg.contiguous()
    dpos, dneg = torch.empty_like(pos), torch.empty_like(neg)
    gradient(grad, pos, neg, estimator, dpos, dneg, normaliser)
    return dpos, dneg
