"""What each benchmark row runs: inputs, the peer's callable, and why a peer
cannot run here. Shared by the pytest-benchmark suite and the report."""

import functools
from collections.abc import Callable

import torch

import dim_fused
from dim_fused import _dispatch, reference

from .configs import MiBoundConfig

FUSED = ("cpu", "cuda", "triton")
PEERS = ("reference", "compiled", *FUSED)
MODES = ("forward", "forward+backward")


def unavailable(peer: str, device: torch.device) -> str | None:
    """Why `peer` cannot be timed on `device`, or None."""
    if peer in ("reference", "compiled"):
        return None
    if peer == "triton" and device.type == "cpu":
        return "the Triton interpreter is a correctness tool, not timed"
    try:
        _dispatch.resolve(peer, device)
    except RuntimeError as why:
        return str(why)
    return None


@functools.cache
def _compiled_reference_mi_bound() -> Callable:
    return torch.compile(reference.mi_bound, dynamic=False)


def mi_bound_fn(peer: str) -> Callable:
    if peer == "reference":
        return reference.mi_bound
    if peer == "compiled":
        return _compiled_reference_mi_bound()
    return functools.partial(dim_fused.mi_bound, backend=peer)


def mi_bound_inputs(
    config: MiBoundConfig, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (config.batch, config.locations)
    pos = torch.randn(shape, generator=generator, device=device, dtype=dtype) + 1.0
    neg = torch.randn((config.num_negatives, *shape), generator=generator, device=device, dtype=dtype)
    return pos, neg


def step(fn: Callable, inputs: tuple[torch.Tensor, ...], mode: str, *args) -> Callable[[], object]:
    """A closure running one forward (and backward) pass."""
    if mode == "forward":
        return lambda: fn(*inputs, *args)
    leaves = tuple(x.detach().requires_grad_() for x in inputs)
    return lambda: torch.autograd.grad(fn(*leaves, *args), leaves)


def mi_bound_bytes(config: MiBoundConfig, itemsize: int, mode: str) -> int:
    """Bytes a pass must move at least: read every score; backward reads them again
    and writes every gradient."""
    return config.num_scores * itemsize * (1 if mode == "forward" else 3)
