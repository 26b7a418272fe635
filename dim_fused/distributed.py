"""Negatives from every rank: gather tensors across torch.distributed ranks while
keeping gradients, so each rank can score its local codes against the global
codes of the whole (multi-GPU or multi-process) batch."""

import torch
import torch.distributed as dist


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss used this rank's rows: their gradient is the sum over ranks.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """all_gather along dim 0 (every rank contributes the same number of rows, in rank
    order) that is differentiable: each rank gets the gradient of every rank's loss
    with respect to its own rows (summed; DDP's averaging then divides by the world
    size, as it does for parameters).

    With one process, or without an initialised process group, returns ``tensor``.

    Use with ``dot_product_mi(local, gather_with_grad(global_codes),
    positive_offset=rank * batch)``: under an f-measure each rank then sees every
    (global, local) pair of the whole batch exactly once, and the mean of the ranks'
    estimates is the single-process estimate. ``dv`` and ``infonce`` need G == B and
    so use each rank's own negatives under DDP.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)
