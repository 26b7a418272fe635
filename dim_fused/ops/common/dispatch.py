"""The one place that turns a backend name into the backend that runs: availability,
the 'auto' policy, honest fallbacks, and errors that say how to get a missing backend."""

import functools
import warnings

import torch

from . import library, tunables
from .library import BUILD_HINT

BACKENDS: tuple[str, ...] = ("auto", "reference", "cpu", "cuda", "triton")

# 'auto' on CUDA tensors, per op, until GPU measurements decide (benchmarks/results): the
# concat-and-conv critic's scoring MLP is on chip only in Triton; the others' Triton and
# CUDA paths are the same plan with different epilogues.
CUDA_PREFERENCE: dict[str, tuple[str, ...]] = {"concat_conv_mi": ("triton", "cuda")}

# The critic depth (layers, the score layer included) the fused Triton kernels of
# concat_conv_mi cover: two hidden layers, DIM's default. Other depths run the C++ plan.
TRITON_CONCAT_LAYERS = 3


def _unavailable_reason(backend: str, device: torch.device | None) -> str | None:
    """None when `backend` can run on `device` (any device when None), else why not."""
    if backend == "reference":
        return None
    if backend not in BACKENDS[1:]:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if library.C_IMPORT_ERROR is not None:
        shared = " (the Triton ops share the C++ plans)" if backend == "triton" else ""
        return (
            f"backend {backend!r} needs the compiled extension{shared}, which failed to import "
            f"({library.C_IMPORT_ERROR}). Build it with: {BUILD_HINT}"
        )
    if backend == "cpu":
        if device is not None and device.type != "cpu":
            return f"backend 'cpu' runs on CPU tensors, got tensors on {device}; use backend='cuda' or 'auto'"
        return None
    if backend == "cuda":
        if not library.has_cpp_kernel("mi_bound", "CUDA"):
            return (
                "backend 'cuda': dim_fused._C was built without its CUDA kernels. Rebuild with a CUDA "
                f"build of torch and nvcc on the PATH: DIM_FUSED_CUDA=1 {BUILD_HINT}"
            )
        if not torch.cuda.is_available():
            return "backend 'cuda' needs a CUDA GPU, and torch sees none on this machine"
        if device is not None and device.type != "cuda":
            return (
                f"backend 'cuda' runs on CUDA tensors, got tensors on {device}; "
                "move them with .cuda() or use backend='cpu'"
            )
        return None
    # triton
    if library.TRITON_IMPORT_ERROR is not None:
        return (
            f"backend 'triton' needs Triton, which failed to import ({library.TRITON_IMPORT_ERROR}); pip install triton"
        )
    if device is not None and device.type == "cuda" and not library.has_cpp_kernel("mi_bound", "CUDA"):
        return (
            "backend 'triton' on CUDA tensors needs dim_fused._C built with its CUDA kernels (the Triton "
            f"ops share the C++ plans). Rebuild with: DIM_FUSED_CUDA=1 {BUILD_HINT}"
        )
    if device is not None and device.type == "cpu" and not tunables.triton_interpreted():
        return (
            "backend 'triton' runs CPU tensors only under the Triton interpreter: set TRITON_INTERPRET=1 "
            "in the environment before importing dim_fused (slow; meant for tests), or use CUDA tensors"
        )
    if device is not None and device.type not in ("cpu", "cuda"):
        return f"backend 'triton' runs on CUDA tensors, got tensors on {device}"
    return None


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends usable here; with ``device``, those that run on tensors on that device."""
    device = torch.device(device) if device is not None else None
    return [b for b in BACKENDS[1:] if _unavailable_reason(b, device) is None]


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=4)


def resolve_backend(
    backend: str, device: torch.device | str, op: str | None = None, *, layers: int | None = None
) -> str:
    """The backend that runs ``backend`` for tensors on ``device``.

    Args:
        backend: one of ``BACKENDS``.
        device: the device of the op's tensors.
        op: the op ("mi_bound", "concat_conv_mi", "dot_product_mi"), whose 'auto' choice
            on CUDA and whose coverage may differ.
        layers: for concat_conv_mi, the critic's number of layers (the score layer
            included). The fused Triton kernels cover 3 (two hidden layers); for other
            depths 'triton' runs the C++ plan on the device, and this returns that backend
            ('cuda', or 'cpu' under the Triton interpreter), warning once when 'triton'
            was asked for by name.

    Returns:
        The concrete backend: 'auto' prefers the compiled kernels for the device, then
        Triton on CUDA, then the reference; it never picks the (slow) Triton interpreter.

    Raises:
        RuntimeError: that backend cannot run there; the message says why and how to get it.
    """
    device = torch.device(device)
    if backend == "auto":
        preferred = CUDA_PREFERENCE.get(op, ("cuda", "triton")) if device.type == "cuda" else ("cpu",)
        name = next((b for b in preferred if _unavailable_reason(b, device) is None), "reference")
    else:
        reason = _unavailable_reason(backend, device)
        if reason is not None:
            raise RuntimeError(reason)
        name = backend
    if name == "triton" and op == "concat_conv_mi" and layers is not None and layers != TRITON_CONCAT_LAYERS:
        plan = "cuda" if device.type == "cuda" else "cpu"
        if backend == "triton":
            _warn_once(
                f"dim_fused.concat_conv_mi: backend 'triton' fuses critics of {TRITON_CONCAT_LAYERS} layers (two "
                f"hidden); this one has {layers}, so the C++ plan runs instead (backend {plan!r})"
            )
        name = plan
    return name
