"""concat_conv_mi: the concat-and-conv critic's local MI, fused (no concatenated, tiled
or shuffled tensor), and the per-location permutations that make its negatives.

function.py (the public op, its checks and memory policy), permutation.py
(location_permutation, local_shuffle), reference.py (the plain PyTorch oracle),
registration.py (torch.library), triton_kernels.py (the scoring MLP on chip); the C++
op and its row-chunk plan are in csrc/concat_conv_mi/."""

from . import registration  # noqa: F401  (registers the op's fakes and autograd)
from .function import concat_conv_mi
from .permutation import local_shuffle, location_permutation

__all__ = ["concat_conv_mi", "local_shuffle", "location_permutation"]
