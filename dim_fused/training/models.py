"""The Deep InfoMax model: the official code's encoders and the full objective

    alpha * global MI + beta * mean local MI - gamma * prior-matching loss

with the local and global critics scored by the fused ops, and the prior
discriminator as a proper adversary with its own loss (see ``DeepInfoMax``). As in the
official code (rdevon/DIM, cortex_DIM), the critics and the probes see the linear global
code Y; only prior matching squashes it with a sigmoid, onto the uniform prior's [0, 1].
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import dim_fused
from dim_fused.nn import ConcatConvDiscriminator, EncodeAndDotCritic

from .config import ENCODERS, ConvSpec, DIMConfig


class Features(NamedTuple):
    """What an encoder exposes: the M x M local map (after its ReLU), the last conv
    layer's output and the last fc layer's (after their BatchNorm and ReLU), and the
    global code Y (linear, no output nonlinearity)."""

    local_map: torch.Tensor
    conv: torch.Tensor
    fc: torch.Tensor
    code: torch.Tensor


def _output_size(size: int, spec: ConvSpec) -> int:
    size = (size + 2 * spec.padding - spec.kernel) // spec.stride + 1
    return (size - 3) // 2 + 1 if spec.max_pool else size


def conv_block(fan_in: int, spec: ConvSpec) -> nn.Sequential:
    """conv - BatchNorm - ReLU [- 3x3/2 max-pool], as the official encoders' layers."""
    layers = [nn.Conv2d(fan_in, spec.channels, spec.kernel, spec.stride, spec.padding, bias=False)]
    layers += [nn.BatchNorm2d(spec.channels), nn.ReLU()]
    if spec.max_pool:
        layers.append(nn.MaxPool2d(3, 2))
    return nn.Sequential(*layers)


def fc_block(fan_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(fan_in, width, bias=False), nn.BatchNorm1d(width), nn.ReLU())


class Encoder(nn.Module):
    """Conv layers (conv - BatchNorm - ReLU [- max-pool]), fc layers (linear - BatchNorm
    - ReLU), then the linear global code Y. Input (B, in_channels, S, S) with S =
    image_size."""

    def __init__(self, architecture: str = "basic32x32", in_channels: int = 3, code_dim: int = 64) -> None:
        super().__init__()
        if architecture not in ENCODERS:
            raise ValueError(f"architecture must be one of {', '.join(ENCODERS)}; got {architecture!r}")
        if in_channels < 1 or code_dim < 1:
            raise ValueError(f"in_channels and code_dim must be positive, got {in_channels} and {code_dim}")
        spec = ENCODERS[architecture]
        self.architecture, self.in_channels, self.image_size = architecture, in_channels, spec.image_size
        self.local_layer = spec.local_layer
        self.convs = nn.ModuleList()
        channels, size = in_channels, spec.image_size
        for i, conv in enumerate(spec.convs):
            self.convs.append(conv_block(channels, conv))
            channels, size = conv.channels, _output_size(size, conv)
            if i == spec.local_layer:
                self.local_shape = (channels, size, size)
        self.conv_shape = (channels, size, size)
        fan_in = channels * size * size
        self.fcs = nn.ModuleList()
        for width in spec.fcs:
            self.fcs.append(fc_block(fan_in, width))
            fan_in = width
        self.fc_dim = fan_in
        self.code_dim = code_dim
        self.to_code = nn.Linear(fan_in, code_dim)

    def forward(self, images: torch.Tensor) -> Features:
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"{self.architecture} encodes images of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(images.shape)}"
            )
        h = images
        for i, layer in enumerate(self.convs):
            h = layer(h)
            if i == self.local_layer:
                local_map = h
        conv = h
        h = h.flatten(1)
        for layer in self.fcs:
            h = layer(h)
        return Features(local_map, conv, h, self.to_code(h))


class GlobalDotCritic(nn.Module):
    """The official code's global critic (cortex_DIM's GlobalDIM): the encoder's own layers
    from the local map on, re-run as a network of their own (its convs from the local
    layer, then its fc layers) ending in a linear layer to ``units``, and a linear layer
    from Y to ``units``; every (code, image) pair is scored by a dot product
    (``dot_product_mi`` with one location)."""

    def __init__(self, architecture: str, local_shape: tuple[int, int, int], code_dim: int, units: int = 2048):
        super().__init__()
        spec = ENCODERS[architecture]
        channels, size, _ = local_shape
        layers: list[nn.Module] = []
        for conv in spec.convs[spec.local_layer :]:
            layers.append(conv_block(channels, conv))
            channels, size = conv.channels, _output_size(size, conv)
        layers.append(nn.Flatten())
        fan_in = channels * size * size
        for width in spec.fcs:
            layers.append(fc_block(fan_in, width))
            fan_in = width
        layers.append(nn.Linear(fan_in, units))
        self.local_net = nn.Sequential(*layers)
        self.global_net = nn.Linear(code_dim, units)

    def forward(
        self,
        feature_map: torch.Tensor,
        code: torch.Tensor,
        *,
        estimator: str = "jsd",
        across_ranks: bool = False,
        backend: str = "auto",
    ) -> torch.Tensor:
        local_codes = self.local_net(feature_map).unsqueeze(-1)  # (B, units, one location)
        return dim_fused.dot_product_mi(
            local_codes, self.global_net(code), estimator=estimator, across_ranks=across_ranks, backend=backend
        )


class PriorDiscriminator(nn.Module):
    """Tells samples of the prior (uniform on [0, 1]^D) from squashed global codes
    sigmoid(Y): D - 1000 - 200 - 1."""

    def __init__(self, code_dim: int, hidden: Sequence[int] = (1000, 200)) -> None:
        super().__init__()
        sizes = [code_dim, *hidden, 1]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.net(codes).squeeze(-1)


class Output(NamedTuple):
    """One forward pass: the encoder's loss and its terms (MI estimates are bounds,
    higher = more MI; ``prior`` is the encoder's non-saturating prior-matching loss)."""

    loss: torch.Tensor
    global_mi: torch.Tensor
    local_mi: torch.Tensor
    prior: torch.Tensor
    code: torch.Tensor


class DeepInfoMax(nn.Module):
    """Encoder + critics + prior discriminator.

    ``forward(images)`` returns the encoder's loss
    ``-(alpha * global_mi + beta * local_mi) + gamma * prior``, where
    ``prior = mean softplus(-D(sigmoid(Y)))`` is the non-saturating GAN loss of the encoder
    against the prior discriminator D. Minimise it over ``encoder_parameters()``
    (encoder and critics: the critics maximise the MI bounds with the encoder).
    ``prior_loss(codes, samples)`` is D's own loss (the GAN bound between prior samples and
    the detached squashed codes, negated, plus the gradient penalty): minimise it over
    ``prior_parameters()`` in a separate step. D plays against the encoder.
    Terms with a zero weight are not built and cost nothing.
    """

    def __init__(self, config: DIMConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DIMConfig()
        self.encoder = Encoder(config.architecture, config.in_channels, config.code_dim)
        channels, size, _ = self.encoder.local_shape
        self.local_critic = self._critic(channels) if config.beta > 0 else None
        self.global_critic = None
        if config.alpha > 0 and config.global_critic == "official":
            self.global_critic = GlobalDotCritic(
                config.architecture, self.encoder.local_shape, config.code_dim, config.units
            )
        elif config.alpha > 0:
            self.global_critic = self._critic(channels * size * size)
        self.prior = PriorDiscriminator(config.code_dim) if config.gamma > 0 else None

    def _critic(self, local_channels: int) -> nn.Module:
        config = self.config
        if config.critic == "dot":
            return EncodeAndDotCritic(local_channels, config.code_dim, units=config.units)
        return ConcatConvDiscriminator(local_channels, config.code_dim, hidden=config.hidden)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("prior.")]

    def prior_parameters(self) -> list[nn.Parameter]:
        return [] if self.prior is None else list(self.prior.parameters())

    def mutual_information(
        self, critic: nn.Module, feature_map: torch.Tensor, code: torch.Tensor, perms: Sequence[torch.Tensor] = ()
    ) -> torch.Tensor:
        """The critic's MI bound between codes and feature maps: of the same images (one
        view), or of each view's codes against the other view's maps, both ways averaged.
        ``perms``: a concat critic's negatives, one per pairing (see ``negatives``)."""
        if self.config.views == 2:
            (map_1, map_2), (code_1, code_2) = feature_map.chunk(2), code.chunk(2)
            perm_1, perm_2 = perms or (None, None)
            return 0.5 * (self._score(critic, map_2, code_1, perm_1) + self._score(critic, map_1, code_2, perm_2))
        return self._score(critic, feature_map, code, perms[0] if perms else None)

    def _score(
        self, critic: nn.Module, feature_map: torch.Tensor, code: torch.Tensor, perm: torch.Tensor | None
    ) -> torch.Tensor:
        config = self.config
        if isinstance(critic, ConcatConvDiscriminator):
            return critic(feature_map, code, estimator=config.estimator, perm=perm, backend=config.backend)
        return critic(feature_map, code, estimator=config.estimator, across_ranks=True, backend=config.backend)

    def negatives(
        self, images: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> dict[str, list[torch.Tensor]]:
        """The concat critics' negatives for a batch of ``images`` images (per view): for
        each (``"local"``, ``"global"``), one ``location_permutation`` per pairing of codes
        and maps, drawn from ``generator`` in the order ``forward`` would draw them. Drawn
        before a compiled ``forward`` (a torch.Generator does not trace) and passed to it, they
        give what ``forward(images, generator)`` gives; the dot critic draws none."""
        drawn = {}
        for name, critic, locations in (
            ("local", self.local_critic, self.encoder.local_shape[1] * self.encoder.local_shape[2]),
            ("global", self.global_critic, 1),
        ):
            if isinstance(critic, ConcatConvDiscriminator):
                drawn[name] = [
                    dim_fused.location_permutation(
                        images, locations, num_negatives=self.config.num_negatives, generator=generator, device=device
                    )
                    for _ in range(self.config.views)
                ]
        return drawn

    def forward(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        negatives: dict[str, list[torch.Tensor]] | None = None,
    ) -> Output:
        """``images`` (B, C, S, S); with ``views`` 2, the two views stacked, ``images[:B]``
        and ``images[B:]`` two augmentations of the same B images. ``generator`` draws the
        concat critics' negatives (on the images' device), unless they are given drawn
        (``negatives``, from ``negatives()``: what a ``torch.compile(fullgraph=True)`` of the
        forward takes)."""
        config = self.config
        if images.shape[0] % config.views:
            raise ValueError(f"with views 2 the batch holds two views of each image: got {images.shape[0]} images")
        if images.shape[0] // config.views < 2:
            raise ValueError(
                f"DIM needs a batch of at least 2 images (negatives come from other images), "
                f"got {images.shape[0] // config.views}"
            )
        if negatives is None:
            negatives = self.negatives(images.shape[0] // config.views, generator, images.device)
        features = self.encoder(images)
        zero = features.code.new_zeros(())
        local_mi = global_mi = prior = zero
        if self.local_critic is not None:
            local_mi = self.mutual_information(
                self.local_critic, features.local_map, features.code, negatives.get("local", ())
            )
        if self.global_critic is not None:
            local_input = features.local_map
            if not isinstance(self.global_critic, GlobalDotCritic):
                local_input = features.local_map.flatten(1).unsqueeze(-1)  # the whole map as one location
            global_mi = self.mutual_information(
                self.global_critic, local_input, features.code, negatives.get("global", ())
            )
        if self.prior is not None:
            prior = F.softplus(-self.prior(torch.sigmoid(features.code.float()))).mean()
        loss = -(config.alpha * global_mi.float() + config.beta * local_mi.float()) + config.gamma * prior
        return Output(loss, global_mi, local_mi, prior, features.code)

    def prior_loss(self, codes: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The prior discriminator's loss on the global codes Y (detached here, squashed by
        a sigmoid as the encoder's prior term sees them) against ``samples`` of the prior
        (uniform on [0, 1]^D, e.g. ``torch.rand_like(codes)``), and its accuracy and bound
        (a dict of 0-dim tensors). The gradient penalty is the official code's:
        prior_penalty * 0.5 * (E_P |grad D|^2 + E_Q |grad D|^2)."""
        if self.prior is None:
            raise RuntimeError("this model has gamma = 0: there is no prior discriminator")
        if samples.shape != codes.shape:
            raise ValueError(f"samples must have the codes' shape {tuple(codes.shape)}, got {tuple(samples.shape)}")
        squashed = torch.sigmoid(codes.detach().float()).requires_grad_()
        samples = samples.detach().float().requires_grad_()
        real, fake = self.prior(samples), self.prior(squashed)
        bound = dim_fused.mi_bound(real, fake, "gan", backend=self.config.backend)
        loss = -bound
        if self.config.prior_penalty > 0:
            grads = torch.autograd.grad(real.sum() + fake.sum(), [samples, squashed], create_graph=True)
            penalty = 0.5 * sum(g.pow(2).sum(-1).mean() for g in grads)
            loss = loss + self.config.prior_penalty * penalty
        accuracy = 0.5 * ((real > 0).float().mean() + (fake < 0).float().mean())
        return loss, {"prior_bound": bound.detach(), "prior_accuracy": accuracy}


def build_model(config: DIMConfig, seed: int) -> DeepInfoMax:
    """The model's initial weights follow ``seed`` alone (the untrained baseline of the
    probe is rebuilt from it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DeepInfoMax(config)


__all__ = [
    "DeepInfoMax",
    "GlobalDotCritic",
    "Encoder",
    "Features",
    "Output",
    "PriorDiscriminator",
    "build_model",
]
