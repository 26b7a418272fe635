"""dot_product_mi over the whole batch of every torch.distributed rank, exactly, without
moving local codes: each rank scores its own local images against the gathered global
codes (its per-row statistics, dim_fused::dot_product_mi_statistics), the ranks merge
those statistics (O(R B) floats), and every rank finishes the estimate of the whole
batch. The backward is the op's own (dot_product_mi_backward) on the merged statistics,
with no communication beyond the gather's. docs/design.md, "Across ranks"."""

import math

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from ... import distributed
from ..common import library, tunables
from ..common.estimators import ESTIMATORS, F_MEASURES
from . import reference

# The columns of a global row's totals, as csrc/dot_product_mi/dot_product_mi.h's RowTotal.
TOTAL_POS, TOTAL_NEG, TOTAL_NEG_LSE, TOTALS = range(4)


def _all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    dist.all_reduce(tensor, op=op)
    return tensor


def _merged_logsumexp(lse: torch.Tensor) -> torch.Tensor:
    """log sum over the ranks of exp(lse), elementwise: one max, then one sum of the terms
    rescaled by it (never an overflow, whatever the magnitudes; -inf where every rank's is)."""
    top = _all_reduce(lse.clone(), dist.ReduceOp.MAX)
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return shift + _all_reduce(torch.exp(lse - shift)).log()


def finish(
    totals: torch.Tensor,
    positives: torch.Tensor,
    estimator: str,
    official: bool,
    batch: int,
    locations: int,
    rank: int,
    world: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the whole batch's estimate, the backward's stats (G, 2)) from this rank's totals
    (G, TOTALS) over its `batch` local images and, for InfoNCE, its positive scores. The
    stats make each rank's gradient `world` times its share of the whole batch's, so that
    averaging the ranks' gradients (DDP) gives the single-process gradient."""
    globals_ = batch * world
    num_pos = globals_ * locations  # every rank's positives
    stats = totals.new_zeros(globals_, 2)
    if estimator in F_MEASURES:
        sums = _all_reduce(totals[:, [TOTAL_POS, TOTAL_NEG]].sum(0))
        return sums[0] / num_pos - sums[1] / ((globals_ - 1) * num_pos), stats
    row_lse = _merged_logsumexp(totals[:, TOTAL_NEG_LSE])  # each global row's negatives, every rank's
    if estimator == "dv":
        pos_sum = _all_reduce(totals[:, TOTAL_POS].sum())
        lse = torch.logsumexp(row_lse, 0)
        estimate = pos_sum / num_pos - (lse - math.log((globals_ - 1) * num_pos))
        # d/d(negative) = -exp(s - lse); the backward's per-rank share is world times it.
        stats[:, 0] = lse - math.log(world)
        return (estimate - math.log(locations) if official else estimate), stats
    if official:  # the official code keeps the L self pairs at score -10
        row_lse = torch.logaddexp(row_lse, torch.full_like(row_lse, -10.0 + math.log(locations)))
    mine = slice(rank * batch, (rank + 1) * batch)
    pos = positives.view(batch, locations)
    candidates_lse = torch.logaddexp(pos, row_lse[mine, None])
    # Every rank's rows' shifts (see dot_negative_grad) and the sum of the terms, in one sum.
    shared = totals.new_zeros(globals_ + 1)
    shared[mine] = torch.logsumexp(row_lse[mine, None] - candidates_lse, 1)
    shared[-1] = (pos - candidates_lse).sum()
    _all_reduce(shared)
    estimate = shared[-1] / num_pos
    if not official:
        estimate = estimate + math.log1p((globals_ - 1) * locations)
    stats[:, 0], stats[:, 1] = row_lse, shared[:-1]
    return estimate, stats


class _AcrossRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local_codes, gathered, estimator, official, backend, rank, world):
        batch = local_codes.shape[0]
        offset, tile_scores = rank * batch, tunables.tile_scores(local_codes.device)
        statistics = library.registered("dot_product_mi_statistics", backend)
        totals, positives = statistics(local_codes, gathered, estimator, offset, tile_scores)
        locations = local_codes[0, 0].numel()
        estimate, stats = finish(totals, positives, estimator, official, batch, locations, rank, world)
        ctx.save_for_backward(local_codes, gathered, stats)
        ctx.args = (estimator, official, offset, tile_scores)
        ctx.backward_op = library.registered_backward("dot_product_mi", backend)
        return estimate.to(local_codes.dtype)

    @staticmethod
    @once_differentiable  # the backward op has no derivative: a double backward raises
    def backward(ctx, grad):
        local_codes, gathered, stats = ctx.saved_tensors
        d_local, d_global = ctx.backward_op(grad, local_codes, gathered, stats, *ctx.args)
        return d_local, d_global, None, None, None, None, None


def dot_product_mi_across_ranks(
    local_codes: torch.Tensor, global_codes: torch.Tensor, estimator: str, official: bool, backend: str
) -> torch.Tensor:
    """The estimate of every rank's batch from this rank's (B, E, ...) local and (B, E)
    global codes (checked by the caller), on every rank; gradients `world` times this
    rank's share (DDP's average is then the single-process gradient). The reference
    gathers every rank's codes and scores the whole batch on each rank."""
    rank, world = distributed.world()
    # The same (B, E, ...), dtype and collectives everywhere (a mismatch would hang them).
    settings = [("estimator", ESTIMATORS.index(estimator)), ("official", official)]
    distributed.check_agreement(local_codes, [*settings, ("backend 'reference'", backend == "reference")])
    gathered = distributed.gather_with_grad(global_codes, check=False)
    if backend == "reference":
        every_local = distributed.gather_with_grad(local_codes, check=False)
        return reference.dot_product_mi(every_local, gathered, estimator, official)
    return _AcrossRanks.apply(local_codes, gathered, estimator, official, backend, rank, world)
