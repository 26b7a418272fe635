"""The plain PyTorch oracle of concat_conv_mi: the seed's tile-and-concat critic with
shuffled copies of the feature map, materialising every intermediate."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..mi_bound.reference import mi_bound


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
