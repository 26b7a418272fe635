"""The plain PyTorch oracle of dot_product_mi: the full G x B x L score tensor."""

import math

import torch

from ..common.estimators import F_MEASURES
from ..mi_bound.reference import mi_bound


def dot_product_scores(local_codes: torch.Tensor, global_codes: torch.Tensor) -> torch.Tensor:
    """u[i, j, p] = <global_codes[i], local_codes[j, :, p]>: (G, B, L)."""
    batch, units = local_codes.shape[:2]
    return torch.einsum("ge,bel->gbl", global_codes, local_codes.reshape(batch, units, -1))


def dot_product_mi(
    local_codes: torch.Tensor,
    global_codes: torch.Tensor,
    estimator: str = "jsd",
    official: bool = False,
    positive_offset: int = 0,
) -> torch.Tensor:
    """Local MI of the encode-and-dot critic (see dim_fused.dot_product_mi), from the
    full G x B x L score tensor; official DV without the official 1e-6 epsilon."""
    u = dot_product_scores(local_codes, global_codes)
    num_globals, batch, locations = u.shape
    flat = u.reshape(num_globals * batch, locations)
    images = torch.arange(batch, device=u.device)
    positives = (images + positive_offset) * batch + images  # flat (global, image) rows, increasing
    pos = flat[positives]  # (B, L), row j = local image j
    # The k-th negative row, in (global, image) order, skips the positives before it: an
    # index, not a boolean mask (which would read the mask on the host).
    k = torch.arange(num_globals * batch - batch, device=u.device)
    neg = flat[k + torch.searchsorted(positives - images, k, right=True)]  # ((G - 1) * B, L)
    if estimator in F_MEASURES:
        return mi_bound(pos, neg, estimator)
    if estimator == "dv":
        estimate = mi_bound(pos, neg, "dv")
        return estimate - math.log(locations) if official else estimate
    # InfoNCE (G == B, offset 0): positive (i, p) against u[i, j != i, every q].
    row_negatives = neg.reshape(batch, (batch - 1) * locations)
    if official:
        self_entries = torch.full((batch, locations), -10.0, dtype=u.dtype, device=u.device)
        row_negatives = torch.cat([row_negatives, self_entries], dim=1)
    candidates = torch.cat([pos.unsqueeze(-1), row_negatives.unsqueeze(1).expand(batch, locations, -1)], dim=-1)
    estimate = (pos - torch.logsumexp(candidates, dim=-1)).mean()
    return estimate if official else estimate + math.log(1 + (batch - 1) * locations)
