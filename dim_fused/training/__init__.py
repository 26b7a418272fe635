"""The Deep InfoMax training application, built on the op library's public API only
(``dim_fused``, ``dim_fused.nn``, ``dim_fused.distributed``); the library never imports it.

- ``config``: the encoder architectures, ``DIMConfig`` (the model) and ``TrainConfig`` (a run).
- ``models``: the official encoders, the prior discriminator and ``DeepInfoMax``.
- ``data``: the datasets (digits built in; Fashion-MNIST from its idx files; CIFAR-10/100 and
  STL-10 read from a folder; the user's own images; ``ImageData.from_tensors`` for any other).
- ``trainer``: the training loop; ``checkpoint``: crash-safe files; ``plots``: the curves.
- ``evaluate``: the probes on frozen features.

Command lines: ``python -m dim_fused.training.train`` and ``python -m dim_fused.training.evaluate``.
"""

from .config import ENCODERS, PRESETS, DIMConfig, TrainConfig
from .data import ImageData
from .models import DeepInfoMax, Encoder, PriorDiscriminator, build_model
from .trainer import Trainer

__all__ = [
    "ENCODERS",
    "PRESETS",
    "DIMConfig",
    "DeepInfoMax",
    "Encoder",
    "ImageData",
    "PriorDiscriminator",
    "TrainConfig",
    "Trainer",
    "build_model",
]
