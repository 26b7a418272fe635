"""mi_bound: the mutual-information lower bound of critic scores.

function.py (the public op and its checks), reference.py (the plain PyTorch oracle),
registration.py (torch.library), triton_kernels.py (Triton); the C++ op is in
csrc/mi_bound/."""

from . import registration  # noqa: F401  (registers the op's fakes and autograd)
from .function import mi_bound

__all__ = ["mi_bound"]
