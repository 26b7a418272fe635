"""Negatives from every rank: gather tensors across torch.distributed ranks while
keeping gradients, so each rank can score its local codes against the global
codes of the whole (multi-GPU or multi-process) batch."""

from collections.abc import Sequence

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


_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64)
_MAX_DIMS = 8
# Every dtype this torch knows, in a fixed order (the same on every rank of one torch
# version): a rank names its dtype by its index here, supported or not.
_ALL_DTYPES = tuple(sorted({v for v in vars(torch).values() if isinstance(v, torch.dtype)}, key=str))


def _dtype_name(index: int) -> str:
    return str(_ALL_DTYPES[index]).removeprefix("torch.") if 0 <= index < len(_ALL_DTYPES) else "an unknown dtype"


def check_agreement(tensor: torch.Tensor, settings: Sequence[tuple[str, int]] = ()) -> None:
    """Raise ValueError on every rank, with the same message, unless every rank holds a
    tensor of the same shape and of a supported dtype and rank (all_gather would abort the
    process inside the backend instead). Nothing is refused before the exchange: a rank
    alone with a bad tensor would leave the others waiting in a collective. One small
    all_gather of a fixed-size descriptor: on NCCL a host sync. ``settings``: (name, value)
    pairs every rank must agree on too (the caller's choices that decide its collectives)."""
    device = tensor.device if dist.get_backend() == "nccl" else torch.device("cpu")
    dims = list(tensor.shape[:_MAX_DIMS])  # a rank with more dims sends its first ones and its count
    padded = [*dims, *([-1] * (_MAX_DIMS - len(dims)))]
    dtype = _ALL_DTYPES.index(tensor.dtype) if tensor.dtype in _ALL_DTYPES else -1
    values = [value for _, value in settings]
    mine = torch.tensor([tensor.dim(), dtype, *padded, *values], dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    every = [e.tolist() for e in every]
    for position, (name, _) in enumerate(settings, start=2 + _MAX_DIMS):
        if len({e[position] for e in every}) > 1:
            ranks = ", ".join(f"rank {r}: {e[position]}" for r, e in enumerate(every))
            raise ValueError(f"the ranks disagree on {name} ({ranks}): every rank must make the same call")
    described, unsupported = [], []
    for rank, (ndim, dtype, *shape) in enumerate(e[: 2 + _MAX_DIMS] for e in every):
        name = _dtype_name(dtype)
        described.append((f"{ndim} dims" if ndim > _MAX_DIMS else str(tuple(shape[:ndim])), name))
        if ndim > _MAX_DIMS:
            unsupported.append(f"rank {rank}: {ndim} dims")
        if not (0 <= dtype < len(_ALL_DTYPES) and _ALL_DTYPES[dtype] in _DTYPES):
            unsupported.append(f"rank {rank}: {name}")
    if unsupported:
        supported = ", ".join(str(d).removeprefix("torch.") for d in _DTYPES)
        raise ValueError(
            f"gather_with_grad takes tensors of up to {_MAX_DIMS} dims and dtypes {supported}; "
            f"got {', '.join(unsupported)}"
        )
    if len(set(described)) > 1:
        ranks = ", ".join(f"rank {r}: {shape} {dtype}" for r, (shape, dtype) in enumerate(described))
        raise ValueError(f"gather_with_grad: the ranks disagree on the tensor's shape or dtype ({ranks})")


def gather_with_grad(tensor: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """all_gather along dim 0 (every rank contributes the same number of rows, in rank
    order) that is differentiable: each rank gets the gradient of every rank's loss
    with respect to its own rows (summed; DDP's averaging then divides by the world
    size, as it does for parameters).

    With one process, or without an initialised process group, returns ``tensor``.

    Use with ``dot_product_mi(local, gather_with_grad(global_codes),
    positive_offset=rank * batch)``: under an f-measure each rank then sees every
    (global, local) pair of the whole batch exactly once, and the mean of the ranks'
    estimates is the single-process estimate. For every estimator, ``dv`` and
    ``infonce`` included, ``dot_product_mi(local, global_codes, across_ranks=True)``
    gathers the global codes itself and returns the whole batch's estimate exactly.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    if check:
        check_agreement(tensor)
    return _GatherWithGrad.apply(tensor)


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def average_gradients(parameters) -> None:
    """Average ``.grad`` over ranks with one all-reduce (for parameters outside DDP)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    _, size = world()
    if size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class CrossRankBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span every rank's batch, on any device and
    process-group backend (``torch.nn.SyncBatchNorm`` needs GPUs). The per-channel sums
    travel through ``gather_with_grad``, so the gradient is that of one process on the
    whole batch. Same parameters and buffers as BatchNorm1d/2d: state_dicts interchange."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        _, size = world()
        if not self.training or size == 1:
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        x = input.float()
        sums = torch.cat([x.sum(dims), (x * x).sum(dims)])
        totals = gather_with_grad(sums[None], check=False).sum(0)  # (1, 2C): the same model on every rank
        count = (input.numel() // input.shape[1]) * size
        mean, mean_sq = totals.chunk(2)
        mean, var = mean / count, mean_sq / count - (mean / count) ** 2
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                unbiased = var * count / max(count - 1, 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = [1, -1] + [1] * (input.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def convert_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm1d/2d/3d in ``module`` by a CrossRankBatchNorm sharing its
    parameters and buffers (so optimisers built before still hold them), in place;
    returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(child, CrossRankBatchNorm):
            synced = CrossRankBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            for tensor_name, tensor in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
                setattr(synced, tensor_name, tensor)
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            convert_batchnorm(child)
    return module
