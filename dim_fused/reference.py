"""Plain PyTorch oracle: every bound and both critics' full losses, materialising
every intermediate the way the seed and the official DIM code do. Boring on
purpose: tests compare each fused kernel against this in float64, and the
benchmarks use it as the baseline.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .estimators import F_MEASURES, negative_term, positive_term


def mi_bound(pos_scores: torch.Tensor, neg_scores: torch.Tensor, estimator: str = "jsd") -> torch.Tensor:
    """MI lower bound from critic scores (see dim_fused.mi_bound)."""
    if estimator == "infonce":
        candidates = torch.cat([pos_scores.unsqueeze(0), neg_scores], dim=0)
        num_candidates = neg_scores.shape[0] + 1
        return (pos_scores - torch.logsumexp(candidates, dim=0)).mean() + math.log(num_candidates)
    if estimator == "dv":
        log_mean_exp = torch.logsumexp(neg_scores.flatten(), dim=0) - math.log(neg_scores.numel())
        return pos_scores.mean() - log_mean_exp
    return positive_term(pos_scores, estimator).mean() - negative_term(neg_scores, estimator).mean()


def local_shuffle(feature_map: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """out[b, :, l] = feature_map[perm[l, b], :, l] for a (B, C, ...) map and an (L, B) perm."""
    batch, channels = feature_map.shape[:2]
    flat = feature_map.reshape(batch, channels, -1)
    index = perm.t().unsqueeze(1).expand(batch, channels, flat.shape[-1])
    return flat.gather(0, index).reshape(feature_map.shape)


def concat_conv_scores(
    local: torch.Tensor,
    global_code: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
) -> torch.Tensor:
    """The seed's concat-and-conv critic: tile the global code over every location,
    concatenate it after the local channels, run the 1x1 convs. (B, C, L) -> (B, L)."""
    batch, _, locations = local.shape
    tiled = global_code.unsqueeze(-1).expand(batch, global_code.shape[1], locations)
    hidden = torch.cat([local, tiled], dim=1)
    for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        hidden = F.conv1d(hidden, weight.reshape(weight.shape[0], -1, 1), bias)
        if i < len(weights) - 1:
            hidden = F.relu(hidden)
    return hidden[:, 0]


def concat_conv_mi(
    feature_map: torch.Tensor,
    global_code: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    perm: torch.Tensor,
    estimator: str = "jsd",
    detach_negatives: bool = False,
) -> torch.Tensor:
    """Local MI of the concat-and-conv critic with negatives from `perm` (K, L, B):
    negative k of (b, l) scores feature_map[perm[k, l, b], :, l] against global_code[b]."""
    batch, channels = feature_map.shape[:2]
    local = feature_map.reshape(batch, channels, -1)
    pos = concat_conv_scores(local, global_code, weights, biases)
    negatives = []
    for perm_k in perm:
        shuffled = local_shuffle(local, perm_k)
        if detach_negatives:
            shuffled = shuffled.detach()
        negatives.append(concat_conv_scores(shuffled, global_code, weights, biases))
    return mi_bound(pos, torch.stack(negatives), estimator)


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
    images = torch.arange(batch, device=u.device)
    positive = torch.zeros(num_globals, batch, dtype=torch.bool, device=u.device)
    positive[images + positive_offset, images] = True
    pos = u[positive]  # (B, L), row j = local image j
    neg = u[~positive]  # ((G - 1) * B, L)
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
