"""Modules around the fused ops."""

from collections.abc import Sequence

import torch
from torch import nn

from .ops.concat_conv_mi import concat_conv_mi
from .ops.dot_product_mi import dot_product_mi


class MI1x1ConvNet(nn.Module):
    """The official DIM code's 1x1-conv encoder for the encode-and-dot critic:
    1x1 conv - BatchNorm - ReLU - 1x1 conv, plus a linear 1x1 shortcut initialised
    near the identity, then LayerNorm over channels. (B, C, H, W) -> (B, units, H, W)."""

    def __init__(self, in_channels: int, units: int) -> None:
        super().__init__()
        self.block_nonlinear = nn.Sequential(
            nn.Conv2d(in_channels, units, kernel_size=1, bias=False),
            nn.BatchNorm2d(units),
            nn.ReLU(),
            nn.Conv2d(units, units, kernel_size=1, bias=True),
        )
        self.layer_norm = nn.LayerNorm(units)
        self.linear_shortcut = nn.Conv2d(in_channels, units, kernel_size=1, bias=False)
        if units >= in_channels:
            with torch.no_grad():
                self.linear_shortcut.weight.uniform_(-0.01, 0.01)
                eye = torch.eye(units, in_channels, dtype=torch.bool)[:, :, None, None]
                self.linear_shortcut.weight.masked_fill_(eye, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last throughout: the LayerNorm over channels then reads the convolutions'
        # output in place, and their gradients come back in the layout they were computed in
        # (from NCHW, a transposing copy each way, forward and backward: a fifth of the
        # critic's time at 2048 units on a CPU). The codes come out channels-last, the rows
        # layout dot_product_mi reads in place.
        x = x.contiguous(memory_format=torch.channels_last)
        h = self.block_nonlinear(x) + self.linear_shortcut(x)
        return self.layer_norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class EncodeAndDotCritic(nn.Module):
    """DIM's encode-and-dot local critic (Figure 4 of the paper; the official code's
    default): local codes phi(f) and global codes psi(y) from MI1x1ConvNets, every
    (global, local) pair scored by a dot product, the estimate streamed by
    ``dim_fused.dot_product_mi``."""

    def __init__(self, local_channels: int, global_dim: int, units: int = 2048) -> None:
        super().__init__()
        self.local_net = MI1x1ConvNet(local_channels, units)
        self.global_net = MI1x1ConvNet(global_dim, units)

    def encode(self, feature_map: torch.Tensor, global_code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) or (B, C, L) map and (B, D) code -> (B, units, ...) and (B, units)."""
        local_in = feature_map.unsqueeze(-1) if feature_map.dim() == 3 else feature_map
        local_codes = self.local_net(local_in).reshape(feature_map.shape[0], -1, *feature_map.shape[2:])
        global_codes = self.global_net(global_code[:, :, None, None]).flatten(1)
        return local_codes, global_codes

    def forward(
        self,
        feature_map: torch.Tensor,
        global_code: torch.Tensor,
        *,
        estimator: str = "jsd",
        official: bool = False,
        across_ranks: bool = False,
        backend: str = "auto",
    ) -> torch.Tensor:
        """``across_ranks=True``: under torch.distributed, the estimate of every rank's
        batch, exactly, for every estimator (see ``dim_fused.dot_product_mi``). One
        process: no difference."""
        local_codes, global_codes = self.encode(feature_map, global_code)
        return dot_product_mi(
            local_codes,
            global_codes,
            estimator=estimator,
            official=official,
            across_ranks=across_ranks,
            backend=backend,
        )


class ConcatConvDiscriminator(nn.Sequential):
    """DIM's concat-and-conv local critic (Figure 3 of the paper, the seed's
    ``_local_discriminator``): 1x1 convs C + D -> hidden... -> 1 with ReLU between,
    scored by the fused ``dim_fused.concat_conv_mi``.

    It *is* the ``nn.Sequential`` of ``nn.Conv2d(kernel_size=1)`` and ``nn.ReLU``
    layers, so its state_dict loads from and saves to that layout unchanged.
    """

    def __init__(self, local_channels: int, global_dim: int, hidden: Sequence[int] = (512, 512)) -> None:
        sizes = [local_channels + global_dim, *hidden, 1]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
            layers.append(nn.Conv2d(fan_in, fan_out, kernel_size=1))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)

    @property
    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self if isinstance(m, nn.Conv2d)]

    def forward(
        self,
        feature_map: torch.Tensor,
        global_code: torch.Tensor,
        *,
        estimator: str = "jsd",
        num_negatives: int = 1,
        perm: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        derangement: bool = False,
        detach_negatives: bool = False,
        backend: str = "auto",
    ) -> torch.Tensor:
        """``dim_fused.concat_conv_mi`` of this critic's layers (see its Args): (B, C, H, W) or
        (B, C, L) features and (B, D) codes in, a 0-dim estimate out."""
        convs = self.convs
        return concat_conv_mi(
            feature_map,
            global_code,
            [c.weight for c in convs],
            [c.bias for c in convs],
            estimator=estimator,
            num_negatives=None if perm is not None else num_negatives,
            perm=perm,
            generator=generator,
            derangement=derangement,
            detach_negatives=detach_negatives,
            backend=backend,
        )
