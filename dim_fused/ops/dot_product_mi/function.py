"""The public dot_product_mi: check the arguments, then run the chosen backend."""

import torch

from ... import distributed
from ..common import checks, dispatch, library, precision, tunables
from ..common.estimators import check_estimator
from . import reference
from .across_ranks import dot_product_mi_across_ranks


def dot_product_mi(
    local_codes: torch.Tensor,
    global_codes: torch.Tensor,
    *,
    estimator: str = "jsd",
    official: bool = False,
    positive_offset: int = 0,
    across_ranks: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Local MI of the encode-and-dot critic (the paper's Figure 4), streamed: never a
    G x B x L score tensor.

    Scores ``u[i, j, p] = <global_codes[i], local_codes[j, :, p]>``; local image j's
    positive global is row ``positive_offset + j`` and every other pair is a negative.
    f-measures average Ep over the B*L positives and Eq over the (G-1)*B*L negatives;
    ``dv`` is ``mean(pos) - log mean exp(neg)``; ``infonce`` contrasts each positive
    (i, p) with the (B-1)*L local vectors of the other images:
    ``mean(u_pos - logsumexp(candidates)) + log(1 + (B-1)*L)``. Under autocast the codes
    are cast to autocast's dtype (the scores are GEMMs; the reductions stay float32).

    Args:
        local_codes: the local codes, any layout (channels-last codes are read in place).
        global_codes: the global codes; rows beyond the batch (gathered from other ranks)
            are negatives of every local image.
        estimator: one of ``dim_fused.ESTIMATORS``; ``dv`` and ``infonce`` need G == B
            (across ranks: ``across_ranks=True``).
        official: return exactly the negative of the official DIM code's loss: its
            InfoNCE keeps the L self pairs in the denominator at score -10 and has no log
            term; its Jan-2019 DV normalises by log(B(B-1)) (log L below the default).
            Across ranks: that formulation on the whole batch, as the official code
            computes it under DataParallel (which gathers every code on one device).
        positive_offset: the global row of local image 0's positive (rank * B when the
            globals of every rank are gathered by the caller, f-measures only).
        across_ranks: under torch.distributed, the estimate of every rank's batch as one
            process would compute it on all R * B images, for every estimator (InfoNCE's
            and DV's normalisers span every rank's negatives): ``global_codes`` are this
            rank's own (G == B), gathered here with their gradient; the ranks exchange
            per-row statistics, never local codes. Every rank returns the same value;
            each rank's gradients are R times its share, so that averaging them over
            the ranks (what DDP does) gives the single-process gradient. Every rank must
            call it alike (shapes, dtype, estimator, backend). One process: no difference.
        backend: one of ``dim_fused.BACKENDS`` (see ``dim_fused.resolve_backend``).

    Shape:
        local_codes: (B, E, H, W) or (B, E, L), B >= 2. global_codes: (G, E), G >= B.

    Returns:
        A 0-dim tensor of the codes' dtype (accumulated in float32, float64 for float64).
    """
    device = checks.tensor(local_codes, "local_codes", min_dim=3, max_dim=4).device
    local_codes, global_codes = precision.autocast([local_codes, global_codes], device)
    ranks = across_ranks and distributed.world()[1] > 1
    check_codes(local_codes, global_codes, estimator, positive_offset, ranks)
    name = dispatch.resolve_backend(backend, local_codes.device, "dot_product_mi")
    if ranks:
        return dot_product_mi_across_ranks(local_codes, global_codes, estimator, official, name)
    if name == "reference":
        return reference.dot_product_mi(local_codes, global_codes, estimator, official, positive_offset)
    op = library.registered("dot_product_mi", name)
    tile_scores, keep_scores = tunables.tile_scores(local_codes.device), _keep_scores(local_codes, global_codes)
    return op(local_codes, global_codes, estimator, official, positive_offset, tile_scores, keep_scores)[0]


def _keep_scores(local_codes: torch.Tensor, global_codes: torch.Tensor) -> bool:
    """Whether the forward should keep its scores for the backward (which then skips a third of
    its GEMM work): when a gradient will be taken and the (G, B * L) scores fit the budget of
    kept activations (DIM_FUSED_KEEP_BYTES)."""
    if not (torch.is_grad_enabled() and (local_codes.requires_grad or global_codes.requires_grad)):
        return False
    scores = global_codes.shape[0] * local_codes.shape[0] * local_codes[0, 0].numel()
    return scores * precision.accumulation_dtype(local_codes.dtype).itemsize <= tunables.keep_bytes()


def check_codes(
    local_codes: torch.Tensor,
    global_codes: torch.Tensor,
    estimator: str,
    positive_offset: int,
    across_ranks: bool = False,
) -> None:
    check_estimator(estimator)
    checks.tensor(local_codes, "local_codes", min_dim=3, max_dim=4)
    checks.tensor(global_codes, "global_codes", min_dim=2, max_dim=2)
    checks.same_dtype_and_device([("local_codes", local_codes), ("global_codes", global_codes)])
    batch, units = local_codes.shape[:2]
    num_globals = global_codes.shape[0]
    checks.batch_size(batch, "local_codes.shape[0] (the batch)")
    if global_codes.shape[1] != units:
        raise ValueError(
            f"global_codes must have E = {units} columns like local_codes (B, E, ...), got {tuple(global_codes.shape)}"
        )
    if across_ranks and (num_globals != batch or positive_offset != 0):
        raise ValueError(
            f"across_ranks=True takes this rank's own global codes (G == B = {batch}, positive_offset 0) and "
            f"gathers them itself; got G = {num_globals}, positive_offset = {positive_offset}"
        )
    if num_globals < batch:
        raise ValueError(f"global_codes must have at least B = {batch} rows, got G = {num_globals}")
    if not 0 <= positive_offset <= num_globals - batch:
        raise ValueError(
            f"positive_offset must be in [0, G - B] = [0, {num_globals - batch}] so that every local image has "
            f"its positive global row, got {positive_offset}"
        )
    if estimator in ("dv", "infonce") and num_globals != batch:
        raise ValueError(
            f"estimator {estimator!r} couples all pairs through its normaliser and needs G == B; got G = "
            f"{num_globals}, B = {batch} (under torch.distributed, pass this rank's own globals with "
            "across_ranks=True: the ranks then merge the normalisers exactly)"
        )
