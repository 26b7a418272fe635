"""dot_product_mi: the encode-and-dot critic's local MI, streamed tile by tile.

function.py (the public op and its checks), reference.py (the plain PyTorch oracle),
registration.py (torch.library), triton_kernels.py (Triton), layout.py (the gradient's
memory layout); the C++ op and its tile plan are in csrc/dot_product_mi/."""

from . import registration  # noqa: F401  (registers the op's fakes and autograd)
from .function import dot_product_mi

__all__ = ["dot_product_mi"]
