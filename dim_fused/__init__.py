"""dim_fused: fused kernels for Deep InfoMax mutual-information scoring.

Each op checks its inputs, then runs on one backend: "reference" (plain PyTorch), "cpu"
(C++), "cuda" (C++/CUDA), "triton", or "auto" (the best one for the tensors' device).
Each op's whole story is one folder, ``dim_fused/ops/<op>/`` (and ``csrc/<op>/``);
``dim_fused.reference`` gathers the oracles, ``dim_fused.nn`` holds the critic modules and
``dim_fused.distributed`` the cross-rank pieces. The DIM training application is
``dim_fused.training``, built on this public API (importing ``dim_fused`` does not import
it). The design: docs/design.md in the repository.
"""

from . import distributed, nn, official, reference
from ._version import __version__
from .ops.common.dispatch import BACKENDS, available_backends, resolve_backend
from .ops.common.estimators import ESTIMATORS, F_MEASURES
from .ops.concat_conv_mi import concat_conv_mi, local_shuffle, location_permutation
from .ops.dot_product_mi import dot_product_mi
from .ops.mi_bound import mi_bound

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
