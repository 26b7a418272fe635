"""The compiled extension, Triton, and how every op is registered with torch.library.

Each fused op exists as ``dim_fused::<op>`` (its schema in csrc/<op>/<op>.cpp, CPU and
CUDA kernels from C++) and, where Triton imports, ``dim_fused::<op>_triton`` with the
very same schema (a ``custom_op`` whose body launches the Triton kernels). Both get a
fake kernel for torch.compile and an autograd formula whose backward is the op's own
backward op (``<op>_backward``, ``<op>_triton_backward``); ``register`` writes that once."""

import functools
import importlib
import warnings
from collections.abc import Callable

import torch

from . import tunables

BUILD_HINT = "pip install --no-build-isolation -e .  (from the dim_fused repository root)"

C_IMPORT_ERROR: str | None = None
try:
    importlib.import_module("dim_fused._C")  # importing it registers the C++ ops
except ImportError as error:
    C_IMPORT_ERROR = str(error)
    if not tunables.quiet():
        warnings.warn(
            f"dim_fused: the compiled extension is missing ({error}); only the 'reference' backend is "
            f"available (the Triton backend shares the C++ plans). Build it with: {BUILD_HINT}",
            stacklevel=2,
        )

TRITON_IMPORT_ERROR: str | None = None
try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except ImportError as error:  # triton missing or unusable on this platform
    TRITON_IMPORT_ERROR = str(error)


@functools.cache  # registrations are fixed once _C is imported; dispatch asks on every call
def has_cpp_kernel(op: str, dispatch_key: str) -> bool:
    return C_IMPORT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(f"dim_fused::{op}", dispatch_key)


def registered(op: str, backend: str) -> Callable:
    """The registered op a fused backend runs: dim_fused::<op> for 'cpu' and 'cuda',
    dim_fused::<op>_triton for 'triton'."""
    return getattr(torch.ops.dim_fused, f"{op}_triton" if backend == "triton" else op)


def no_bias(like: torch.Tensor) -> torch.Tensor:
    """The ops' marker for a layer without a bias: an empty tensor (torch.library
    differentiates through lists of tensors only, not through lists with None in them)."""
    return like.new_empty(0)


def bias_or_none(bias: torch.Tensor) -> torch.Tensor | None:
    return bias if bias.numel() else None


def one_device(op: str, *tensors: torch.Tensor) -> None:
    """A fake kernel also answers for real tensors when one of them is on the meta device:
    it must refuse a mix instead of returning uninitialised memory."""
    devices = {t.device for t in tensors}
    torch._check_value(
        len(devices) == 1, lambda: f"dim_fused.{op}: tensors on several devices {sorted(map(str, devices))}"
    )


def _no_double_backward(op: str) -> None:
    """The backward ops have no derivative of their own: a gradient of a gradient through
    them (create_graph=True, e.g. a gradient penalty through the critic) would silently be
    zero, so it is refused."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"dim_fused.{op}: double backward (a gradient of this op's gradient, create_graph=True) is not "
            "supported; compute that term with backend='reference'"
        )


def _schema(op: str) -> str:
    """The argument and return part of dim_fused::<op>'s schema, as C++ defined it."""
    text = str(getattr(torch.ops.dim_fused, op).default._schema)
    return text[text.index("(") :]


def register(
    op: str,
    *,
    fake: Callable,
    backward_fake: Callable,
    setup_context: Callable,
    gradients: Callable,
    triton_kernels: str,
) -> None:
    """Registers op's fake kernels and autograd formula, for the C++ op and, where Triton
    imports, for the Triton op, defined here with the C++ op's schema from the module
    ``triton_kernels``'s ``forward`` and ``backward``. ``setup_context(ctx, inputs,
    output)`` saves what the backward needs; ``gradients(backward_op, ctx,
    *output_grads)`` calls the backward op and returns one gradient per input."""
    if C_IMPORT_ERROR is not None:
        return
    variants = [(op, getattr(torch.ops.dim_fused, f"{op}_backward"))]
    torch.library.register_fake(f"dim_fused::{op}_backward")(backward_fake)
    if TRITON_IMPORT_ERROR is None:
        kernels = importlib.import_module(triton_kernels)
        torch.library.custom_op(f"dim_fused::{op}_triton", kernels.forward, mutates_args=(), schema=_schema(op))
        backward_op = torch.library.custom_op(
            f"dim_fused::{op}_triton_backward", kernels.backward, mutates_args=(), schema=_schema(f"{op}_backward")
        )
        backward_op.register_fake(backward_fake)
        variants.append((f"{op}_triton", backward_op))
    for name, backward_op in variants:

        def backward(ctx, *grads, backward_op=backward_op):
            _no_double_backward(op)
            return gradients(backward_op, ctx, *grads)

        torch.library.register_fake(f"dim_fused::{name}")(fake)
        torch.library.register_autograd(f"dim_fused::{name}", backward, setup_context=setup_context)
