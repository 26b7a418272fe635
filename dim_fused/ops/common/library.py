"""The compiled extension, Triton, and how every op is registered with torch.library.

Each fused op exists as ``dim_fused::<op>`` (its schema in csrc/<op>/<op>.cpp, CPU and
CUDA kernels from C++) and, where Triton imports, ``dim_fused::<op>_triton`` with the
very same schema (a ``custom_op`` whose body launches the Triton kernels). Both get a
fake kernel for torch.compile and an autograd formula whose backward is the op's own
backward op (``<op>_backward``, ``<op>_triton_backward``); ``register`` writes that once."""

import functools
import importlib
import threading
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
    dim_fused::<op>_triton for 'triton' (the CPU plans' GEMM provider set first)."""
    if backend == "cpu":
        _apply_cpu_settings()
    return getattr(torch.ops.dim_fused, f"{op}_triton" if backend == "triton" else op)


def registered_backward(op: str, backend: str) -> Callable:
    """The backward op of ``registered(op, backend)``: dim_fused::<op>_backward, or
    dim_fused::<op>_triton_backward."""
    if backend == "cpu":
        _apply_cpu_settings()
    return getattr(torch.ops.dim_fused, f"{op}_triton_backward" if backend == "triton" else f"{op}_backward")


_cpu_settings: list[tuple[str, int]] = []  # DIM_FUSED_CPU_GEMM and _CPU_CACHE_BYTES as last handed down


def _apply_cpu_settings() -> None:
    """Hands DIM_FUSED_CPU_GEMM and DIM_FUSED_CPU_CACHE_BYTES to the C++ plans when they
    changed. Not while torch.compile traces (the settings are the process's, not a graph's:
    the last eager call's hold)."""
    if C_IMPORT_ERROR is not None or torch.compiler.is_compiling():
        return
    wanted = (tunables.cpu_gemm(), tunables.cpu_cache_bytes())
    if _cpu_settings != [wanted]:
        torch.ops.dim_fused.set_cpu_gemm(wanted[0])
        torch.ops.dim_fused.set_cpu_cache_bytes(wanted[1])
        _cpu_settings[:] = [wanted]


def cpu_gemm() -> str:
    """The GEMM provider the CPU plans run ('auto', 'onednn' or 'blas'), after handing them
    DIM_FUSED_CPU_GEMM (auto: per shape class, whichever was measured faster on this machine,
    of oneDNN and BLAS for fp32 products, of the project's AVX512-BF16 kernel and MKL's bf16
    GEMM for bf16 products with fp32 results, of oneDNN's products summed after and MKL's bf16
    GEMM on groups of images for bf16 sums into fp32; 'blas' where this torch has no oneDNN).
    docs/design.md, "GEMMs"."""
    _apply_cpu_settings()
    return torch.ops.dim_fused.cpu_gemm()


def cpu_gemm_choices() -> list[str]:
    """auto's measured choices so far: per shape class, the provider and both timings."""
    return list(torch.ops.dim_fused.cpu_gemm_choices())


def cpu_cache() -> tuple[int, int]:
    """(bytes of freed CPU-plan buffers held for reuse now, the most it keeps:
    DIM_FUSED_CPU_CACHE_BYTES). docs/design.md, "Host buffers"."""
    _apply_cpu_settings()
    idle, limit = torch.ops.dim_fused.cpu_cache_bytes()
    return idle, limit


def empty_cpu_cache() -> None:
    """Frees the CPU-plan buffers held for reuse (as torch.cuda.empty_cache does for CUDA's)."""
    torch.ops.dim_fused.empty_cpu_cache()


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


_INTERPRETER = threading.RLock()  # re-entrant: a Triton op may launch another


def _launcher(op: str, body: Callable) -> Callable:
    """A Triton op's body. Under Triton's CPU interpreter (TRITON_INTERPRET=1), which is a
    correctness tool: bfloat16 is refused before any launch (the interpreter's bf16
    arithmetic and ``tl.dot`` return wrong values), and launches are serialised (the
    interpreter's kernel state is per process: three threads at once fail or return wrong
    gradients). On a GPU the body runs as it is."""

    @functools.wraps(body)
    def launch(*args):
        if not tunables.triton_interpreted():
            return body(*args)
        tensors = [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a])]
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 for t in tensors):
            raise ValueError(
                f"dim_fused.{op}: backend 'triton' under the Triton interpreter (TRITON_INTERPRET=1) "
                "cannot compute in bfloat16 (the interpreter's bf16 results are wrong): use float32 or "
                "float64 there, backend 'cpu', or a CUDA GPU"
            )
        with _INTERPRETER:
            return body(*args)

    return launch


def _schema(op: str) -> str:
    """The argument and return part of dim_fused::<op>'s schema, as C++ defined it."""
    text = str(getattr(torch.ops.dim_fused, op).default._schema)
    return text[text.index("(") :]


def register_statistics(op: str, *, fake: Callable, triton_kernels: str, triton_body: str) -> None:
    """Registers a non-differentiable op's fake kernel, for the C++ op dim_fused::<op> and,
    where Triton imports, for dim_fused::<op>_triton, defined here with the C++ op's schema
    from the function ``triton_body`` of the module ``triton_kernels``."""
    if C_IMPORT_ERROR is not None:
        return
    torch.library.register_fake(f"dim_fused::{op}")(fake)
    if TRITON_IMPORT_ERROR is None:
        body = getattr(importlib.import_module(triton_kernels), triton_body)
        triton_op = torch.library.custom_op(
            f"dim_fused::{op}_triton", _launcher(op, body), mutates_args=(), schema=_schema(op)
        )
        triton_op.register_fake(fake)


def register(
    op: str,
    *,
    fake: Callable,
    backward_fake: Callable,
    setup_context: Callable,
    gradients: Callable,
    triton_kernels: str,
    triton_fake: Callable | None = None,
) -> None:
    """Registers op's fake kernels and autograd formula, for the C++ op and, where Triton
    imports, for the Triton op, defined here with the C++ op's schema from the module
    ``triton_kernels``'s ``forward`` and ``backward``. ``setup_context(ctx, inputs,
    output)`` saves what the backward needs; ``gradients(backward_op, ctx,
    *output_grads)`` calls the backward op and returns one gradient per input.
    ``triton_fake``: the Triton op's fake where its outputs differ from the C++ op's."""
    if C_IMPORT_ERROR is not None:
        return
    variants = [(op, getattr(torch.ops.dim_fused, f"{op}_backward"))]
    torch.library.register_fake(f"dim_fused::{op}_backward")(backward_fake)
    if TRITON_IMPORT_ERROR is None:
        kernels = importlib.import_module(triton_kernels)
        forward = _launcher(op, kernels.forward)
        torch.library.custom_op(f"dim_fused::{op}_triton", forward, mutates_args=(), schema=_schema(op))
        backward_op = torch.library.custom_op(
            f"dim_fused::{op}_triton_backward",
            _launcher(f"{op}_backward", kernels.backward),
            mutates_args=(),
            schema=_schema(f"{op}_backward"),
        )
        backward_op.register_fake(backward_fake)
        variants.append((f"{op}_triton", backward_op))
    fakes = {f"{op}_triton": triton_fake or fake}  # by op name; the C++ op's is `fake`

    def setup(ctx, inputs, output):
        # Only the estimate is differentiable: what the forward returns beside it (statistics,
        # scores, kept activations) is what the backward reads, and no zero gradient is made
        # for it (for kept activations that would be a tensor of their size per backward).
        if isinstance(output, tuple):
            ctx.mark_non_differentiable(*[t for x in output[1:] for t in (x if isinstance(x, list) else [x])])
        ctx.set_materialize_grads(False)
        ctx.no_gradients = tuple([None] * len(x) if isinstance(x, list) else None for x in inputs)
        setup_context(ctx, inputs, output)

    for name, backward_op in variants:

        def backward(ctx, *grads, backward_op=backward_op):
            _no_double_backward(op)
            if grads[0] is None:  # no gradient reached the estimate: none leaves
                return ctx.no_gradients
            return gradients(backward_op, ctx, *grads)

        torch.library.register_fake(f"dim_fused::{name}")(fakes.get(name, fake))
        torch.library.register_autograd(f"dim_fused::{name}", backward, setup_context=setup)
