"""What defines a DIM run: the encoder architectures, the model (``DIMConfig``) and the
training run (``TrainConfig``). Both configs are saved in checkpoints and validate every
field, so a bad value fails before anything is built."""

import dataclasses
import math
from typing import NamedTuple

import dim_fused

from . import data as datasets

# (alpha, beta, gamma) of the paper's named settings.
PRESETS: dict[str, tuple[float, float, float]] = {"dim-local": (0.0, 1.0, 0.1), "dim-global": (1.0, 0.0, 1.0)}
CRITICS: tuple[str, ...] = ("concat", "dot")
# The global MI term's critic: "official" is the official code's GlobalDIM (the encoder's
# layers from the local map on, re-run as a small network, and a linear layer on Y, scored
# by a dot product); "flat" scores the flattened local map as one location of `critic`.
GLOBAL_CRITICS: tuple[str, ...] = ("official", "flat")


class ConvSpec(NamedTuple):
    channels: int
    kernel: int
    stride: int
    padding: int
    max_pool: bool = False  # a 3x3, stride-2 max-pool after the activation


class EncoderSpec(NamedTuple):
    image_size: int
    convs: tuple[ConvSpec, ...]
    fcs: tuple[int, ...]
    local_layer: int  # index of the conv layer whose output is the M x M local map


# The official DIM code's encoders (cortex_DIM configs "basic32x32" and "alex64x64").
ENCODERS: dict[str, EncoderSpec] = {
    "basic32x32": EncoderSpec(32, (ConvSpec(64, 4, 2, 1), ConvSpec(128, 4, 2, 1), ConvSpec(256, 4, 2, 1)), (1024,), 1),
    "alex64x64": EncoderSpec(
        64,
        (
            ConvSpec(96, 3, 1, 1, True),
            ConvSpec(192, 3, 1, 1, True),
            ConvSpec(384, 3, 1, 1),
            ConvSpec(384, 3, 1, 1),
            ConvSpec(192, 3, 1, 1, True),
        ),
        (4096, 4096),
        2,
    ),
}


@dataclasses.dataclass
class DIMConfig:
    """Everything that defines a DeepInfoMax model (saved in checkpoints). The defaults are
    the paper's headline configuration, DIM(L) with InfoNCE (Hjelm et al., ICLR 2019,
    Table 1), and the official code's critics.

    ``critic`` scores the local MI term: ``dot`` (encode-and-dot, the official code's
    default, ``dot_product_mi``; ``units``-wide codes, every other image is a negative, and
    under several processes every other image of every rank for an f-measure) or
    ``concat`` (concat-and-conv, the paper's Figure 3, ``concat_conv_mi``; ``hidden`` units,
    ``num_negatives`` shuffled negatives per positive). ``global_critic`` scores the global
    term (see GLOBAL_CRITICS). ``prior_penalty`` weighs the prior discriminator's gradient
    penalty, 0.5 (P + Q) as in the official code.

    ``views``: 1 scores each image's global code against its own local features (the
    paper's DIM); 2 takes two random crops/flips of each image and scores the global code of
    each against the local features of the other, both ways averaged (the cross-view
    pairing of Bachman et al., NeurIPS 2019, "AMDIM"): the code must then carry what the
    augmentations leave unchanged, which is what makes it label-efficient. Twice the
    encoder's work per step."""

    alpha: float = 0.0
    beta: float = 1.0
    gamma: float = 0.1
    estimator: str = "infonce"
    critic: str = "dot"
    global_critic: str = "official"
    num_negatives: int = 1
    backend: str = "auto"
    architecture: str = "basic32x32"
    in_channels: int = 3
    code_dim: int = 64
    hidden: tuple[int, ...] = (512, 512)
    units: int = 2048
    prior_penalty: float = 1.0
    views: int = 1

    @classmethod
    def preset(cls, name: str, **overrides) -> "DIMConfig":
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}")
        alpha, beta, gamma = PRESETS[name]
        return cls(**{"alpha": alpha, "beta": beta, "gamma": gamma, **overrides})

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)
        for name in ("alpha", "beta", "gamma", "prior_penalty"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite weight >= 0, got {value}")
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta are both 0: there is no mutual-information term to train")
        if self.estimator not in dim_fused.ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(dim_fused.ESTIMATORS)}; got {self.estimator!r}")
        if self.critic not in CRITICS:
            raise ValueError(f"critic must be one of {', '.join(CRITICS)}; got {self.critic!r}")
        if self.global_critic not in GLOBAL_CRITICS:
            raise ValueError(f"global_critic must be one of {', '.join(GLOBAL_CRITICS)}; got {self.global_critic!r}")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be at least 1, got {self.num_negatives}")
        if self.units < 1 or not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"units and hidden sizes must be positive, got {self.units} and {self.hidden}")
        if self.backend not in dim_fused.BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(dim_fused.BACKENDS)}; got {self.backend!r}")
        if self.architecture not in ENCODERS:
            raise ValueError(f"architecture must be one of {', '.join(ENCODERS)}; got {self.architecture!r}")
        if self.views not in (1, 2):
            raise ValueError(f"views must be 1 (the paper's DIM) or 2 (cross-view), got {self.views}")


@dataclasses.dataclass
class TrainConfig:
    """A training run (saved in its checkpoints). ``steps`` counts optimizer steps;
    ``batch_size`` is per process. Adam with ``betas`` (0.5, 0.999), the official code's, for
    every network (encoder and critics at ``lr``, the prior discriminator at ``prior_lr``).
    ``amp`` (bfloat16 autocast) is off by default: no GPU measurement has shown bfloat16
    training to match float32 yet. ``augment`` draws the training views (data.AUGMENTATIONS:
    "crop", a random crop and flip; "strong", also a random zoom, contrast and brightness)."""

    model: DIMConfig
    data: str = "digits"
    data_dir: str = "data"
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-4
    prior_lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0
    amp: bool = False
    augment: str = "crop"
    log_every: int = 10
    checkpoint_every: int = 250
    probe_samples: int = 60000

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = DIMConfig(**self.model)
        if not (isinstance(self.data, str) and self.data):
            raise ValueError(
                f"data must name a dataset ({', '.join(datasets.DATASETS)}, or an ImageData's), got {self.data!r}"
            )
        if self.augment not in datasets.AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(datasets.AUGMENTATIONS)}, got {self.augment!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch size must be at least 2 (DIM's negatives are other images), got {self.batch_size}")
        for name in ("steps", "log_every", "checkpoint_every", "probe_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "prior_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive learning rate, got {value}")
        self.betas = tuple(self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
