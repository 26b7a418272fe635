"""Ports of the official DIM code's encode-and-dot losses (rdevon/DIM,
cortex_DIM/functions/dim_losses.py), kept the way the official code computes
them — materialising an N x N x L score tensor, or an N*L x (1 + N*L) logit
tensor for InfoNCE — as a test oracle for ``official=True`` and as the
"official formulation" peer of the benchmarks. Their arguments follow the
official code: l is (N, units, n_locals), m is (N, units, n_multis = 1). Also the
seed's concat-and-conv formulation, the benchmarks' materialising peer for it.
"""

import math

import torch
import torch.nn.functional as F

from . import reference
from .ops.common.estimators import negative_term, positive_term


def fenchel_dual_loss(l, m, measure):
    N, units, n_locals = l.size()
    n_multis = m.size(2)
    l = l.view(N, units, n_locals).permute(0, 2, 1).reshape(-1, units)
    m = m.view(N, units, n_multis).permute(0, 2, 1).reshape(-1, units)
    u = torch.mm(m, l.t()).reshape(N, n_multis, N, n_locals).permute(0, 2, 3, 1)
    mask = torch.eye(N, dtype=l.dtype, device=l.device)
    n_mask = 1 - mask
    E_pos = positive_term(u, measure).mean(2).mean(2)
    E_neg = negative_term(u, measure).mean(2).mean(2)
    E_pos = (E_pos * mask).sum() / mask.sum()
    E_neg = (E_neg * n_mask).sum() / n_mask.sum()
    return E_neg - E_pos


def infonce_loss(l, m):
    N, units, n_locals = l.size()
    _, _, n_multis = m.size()
    l_p = l.permute(0, 2, 1)
    m_p = m.permute(0, 2, 1)
    l_n = l_p.reshape(-1, units)
    m_n = m_p.reshape(-1, units)
    u_p = torch.matmul(l_p, m).unsqueeze(2)
    u_n = torch.mm(m_n, l_n.t())
    u_n = u_n.reshape(N, n_multis, N, n_locals).permute(0, 2, 3, 1)
    mask = torch.eye(N, dtype=l.dtype, device=l.device)[:, :, None, None]
    n_mask = 1 - mask
    u_n = (n_mask * u_n) - (10.0 * (1 - n_mask))
    u_n = u_n.reshape(N, N * n_locals, n_multis).unsqueeze(dim=1).expand(-1, n_locals, -1, -1)
    pred_lgt = torch.cat([u_p, u_n], dim=2)
    pred_log = F.log_softmax(pred_lgt, dim=2)
    return -pred_log[:, :, 0].mean()


def donsker_varadhan_loss(l, m):
    """The Jan-2019 version with its shapes made consistent (mask broadcast per location)."""
    N, units, n_locals = l.size()
    n_multis = m.size(2)
    l = l.view(N, units, n_locals).permute(0, 2, 1).reshape(-1, units)
    m = m.view(N, units, n_multis).permute(0, 2, 1).reshape(-1, units)
    u = torch.mm(m, l.t()).reshape(N, n_multis, N, n_locals).permute(0, 2, 3, 1)[..., 0]
    mask = torch.eye(N, dtype=l.dtype, device=l.device)
    n_mask = 1 - mask
    E_pos = (u.mean(2) * mask).sum() / mask.sum()
    u = u - 100 * (1 - n_mask)[:, :, None]
    u_max = torch.max(u)
    E_neg = torch.log((n_mask[:, :, None] * torch.exp(u - u_max)).sum() + 1e-6) + u_max - math.log(n_mask.sum())
    return E_neg - E_pos


def dot_product_mi(local_codes: torch.Tensor, global_codes: torch.Tensor, estimator: str) -> torch.Tensor:
    """The estimate (minus the official loss) for (B, E, ...) local and (B, E) global codes."""
    l = local_codes.reshape(local_codes.shape[0], local_codes.shape[1], -1)
    m = global_codes.unsqueeze(-1)
    if estimator == "infonce":
        return -infonce_loss(l, m)
    if estimator == "dv":
        return -donsker_varadhan_loss(l, m)
    return -fenchel_dual_loss(l, m, estimator)


def seed_local_mi(feature_map, global_code, weights, biases, perm, estimator: str) -> torch.Tensor:
    """The seed's local-MI loss (its TensorFlow sketch, with its bugs fixed: each conv
    reads the previous layer, no ReLU on the score), materialising as it does: the
    global code tiled over every location and concatenated, one (B, C + D, H, W) map
    for the positives and one per shuffled copy for the negatives, 1x1 conv2d layers."""
    batch = feature_map.shape[0]
    fmap = feature_map.reshape(batch, feature_map.shape[1], feature_map[0, 0].numel(), 1)
    tiled = global_code[:, :, None, None].expand(-1, -1, fmap.shape[2], 1)

    def scores(local: torch.Tensor) -> torch.Tensor:
        x = torch.cat([local, tiled], dim=1)
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            x = F.conv2d(x, w.reshape(w.shape[0], -1, 1, 1), b)
            if i < len(weights) - 1:
                x = F.relu(x)
        return x.reshape(batch, -1)

    shuffled = [
        fmap.reshape(batch, fmap.shape[1], -1).gather(0, p.t().unsqueeze(1).expand(-1, fmap.shape[1], -1)) for p in perm
    ]
    neg = torch.stack([scores(s.unsqueeze(-1)) for s in shuffled])
    return reference.mi_bound(scores(fmap), neg, estimator)
