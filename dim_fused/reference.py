"""The plain PyTorch oracle of every op, in one namespace: each materialises every
intermediate the way the seed and the official DIM code do. Boring on purpose: the tests
compare each fused kernel against it in float64 and the benchmarks use it as the
baseline. Each op's reference lives beside its kernels (dim_fused/ops/<op>/reference.py)."""

from .ops.concat_conv_mi.reference import concat_conv_mi, concat_conv_scores, local_shuffle
from .ops.dot_product_mi.reference import dot_product_mi, dot_product_scores
from .ops.mi_bound.reference import mi_bound

__all__ = [
    "concat_conv_mi",
    "concat_conv_scores",
    "dot_product_mi",
    "dot_product_scores",
    "local_shuffle",
    "mi_bound",
]
