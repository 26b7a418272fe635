"""dim_fused: fused kernels for Deep InfoMax mutual-information scoring.

Each op validates its inputs, then runs on one backend: "reference" (plain
PyTorch), "cpu" (C++), "cuda" (C++/CUDA), "triton", or "auto" (the best one for
the tensors' device). ``dim_fused.nn`` holds the critic modules and
``dim_fused.distributed`` the cross-rank pieces. The DIM training application is
``dim_fused.training``, built on this public API (importing ``dim_fused`` does not
import it). The design: docs/design.md in the repository.
"""

from . import distributed, nn, official, reference
from ._dispatch import BACKENDS, available_backends, resolve_backend
from ._version import __version__
from .estimators import ESTIMATORS, F_MEASURES
from .functional import concat_conv_mi, dot_product_mi, local_shuffle, location_permutation, mi_bound

__all__ = [
    "BACKENDS",
    "ESTIMATORS",
    "F_MEASURES",
    "__version__",
    "available_backends",
    "concat_conv_mi",
    "distributed",
    "dot_product_mi",
    "local_shuffle",
    "location_permutation",
    "mi_bound",
    "nn",
    "official",
    "reference",
    "resolve_backend",
]
