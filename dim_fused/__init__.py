"""dim_fused: fused kernels for Deep InfoMax mutual-information scoring.

Each op validates its inputs, then runs on one backend: "reference" (plain
PyTorch), "cpu" (C++), "cuda" (C++/CUDA), "triton", or "auto" (the best one for
the tensors' device). ``dim_fused.models`` holds the DIM model; ``python -m
dim_fused.train`` and ``python -m dim_fused.evaluate`` train and probe it.
"""

from . import distributed, models, nn, official, reference
from ._dispatch import BACKENDS, available_backends
from .estimators import ESTIMATORS, F_MEASURES
from .functional import concat_conv_mi, dot_product_mi, local_shuffle, location_permutation, mi_bound

__all__ = [
    "BACKENDS",
    "ESTIMATORS",
    "F_MEASURES",
    "available_backends",
    "concat_conv_mi",
    "dot_product_mi",
    "local_shuffle",
    "location_permutation",
    "mi_bound",
    "distributed",
    "models",
    "nn",
    "official",
    "reference",
]
__version__ = "0.1.0"
