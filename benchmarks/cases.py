"""What each benchmark row runs: the inputs of a config, each peer's callable,
the FLOP and byte counts its throughput is quoted against, why a peer cannot run
here, and the correctness check a fused peer must pass before it is timed.
Shared by the pytest-benchmark suite and the report."""

import dataclasses
import functools
from collections.abc import Callable

import torch

import dim_fused
from dim_fused import _dispatch, official, reference

from .configs import Config

FUSED = ("cpu", "cuda", "triton")
MODES = ("forward", "forward+backward")
PEERS = {
    "mi_bound": ("reference", "compiled", *FUSED),
    # "matmuls": only the op's unavoidable GEMMs (scores; and both gradients), no estimator at all.
    "dot_product_mi": ("official", "reference", "compiled", "matmuls", *FUSED),
}
REFERENCE_FN = {"mi_bound": reference.mi_bound, "dot_product_mi": reference.dot_product_mi}


class WrongResult(AssertionError):
    """A fused peer disagreed with the float64 reference: it is not timed."""


def unavailable(peer: str, device: torch.device) -> str | None:
    """Why `peer` cannot be timed on `device`, or None."""
    if peer not in FUSED:
        return None
    if peer == "triton" and device.type == "cpu":
        return "the Triton interpreter is a correctness tool, not timed"
    try:
        _dispatch.resolve(peer, device)
    except RuntimeError as why:
        return str(why)
    return None


def make_inputs(config: Config, device: torch.device, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Fresh random inputs (never zeros) at scales where every estimator is finite."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(shape, generator=generator, device=device, dtype=torch.float32) * scale).to(dtype)

    if config.op == "mi_bound":
        return randn(config.batch, config.locations) + 1.0, randn(config.num_negatives, config.batch, config.locations)
    scale = config.units**-0.5  # unit-variance scores
    return randn(config.batch, config.units, config.locations, scale=scale**0.5), randn(
        config.batch, config.units, scale=scale**0.5
    )


@functools.cache
def _compiled(op: str) -> Callable:
    # Shapes become dynamic after the first recompile; enough cache entries that a
    # sweep never silently falls back to eager.
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096
    return torch.compile(REFERENCE_FN[op])


def _matmuls(local: torch.Tensor, global_codes: torch.Tensor, backward: bool) -> torch.Tensor:
    batch, units, _ = local.shape
    scores = torch.bmm(global_codes.expand(batch, *global_codes.shape), local)
    if not backward:
        return scores
    d_global = torch.addbmm(global_codes, scores, local.transpose(1, 2), beta=0)
    return torch.bmm(global_codes.t().expand(batch, units, global_codes.shape[0]), scores), d_global


def peer_fn(op: str, peer: str) -> Callable:
    """The peer as a function of (*inputs, estimator) returning the estimate."""
    if peer == "reference":
        return REFERENCE_FN[op]
    if peer == "compiled":
        return _compiled(op)
    if peer == "official":
        return official.dot_product_mi
    if op == "mi_bound":
        return functools.partial(dim_fused.mi_bound, backend=peer)
    return lambda local, global_codes, estimator: dim_fused.dot_product_mi(
        local, global_codes, estimator=estimator, backend=peer
    )


def step(op: str, peer: str, inputs: tuple[torch.Tensor, ...], estimator: str, mode: str) -> Callable[[], object]:
    """A closure running one forward (and backward) pass of `peer`."""
    backward = mode == "forward+backward"
    if peer == "matmuls":
        return lambda: _matmuls(*inputs, backward)
    fn = peer_fn(op, peer)
    if not backward:
        return lambda: fn(*inputs, estimator)
    leaves = tuple(x.detach().requires_grad_() for x in inputs)
    return lambda: torch.autograd.grad(fn(*leaves, estimator), leaves)


def flops(config: Config, mode: str) -> int:
    """Useful floating-point operations: the score GEMM (and the two gradient GEMMs)."""
    if config.op == "mi_bound":
        return 0
    gemm = 2 * config.batch * config.batch * config.locations * config.units
    return gemm * (1 if mode == "forward" else 3)


def bytes_moved(config: Config, itemsize: int, mode: str) -> int:
    """Bytes a pass must move at least: read the inputs; backward reads them again
    and writes a gradient of each."""
    if config.op == "mi_bound":
        elements = config.batch * config.locations * (1 + config.num_negatives)
    else:
        elements = config.batch * config.units * (config.locations + 1)
    return elements * itemsize * (1 if mode == "forward" else 3)


def check(config: Config, peer: str, device: torch.device, dtype: torch.dtype, estimator: str) -> None:
    """Value and gradients of `peer` against the float64 reference on the config's
    problem with the batch capped at 8 (same L, E, K), so the oracle always fits."""
    small = dataclasses.replace(config, batch=min(config.batch, 8))
    inputs = make_inputs(small, device, dtype, seed=1)
    exact = [x.detach().cpu().double().requires_grad_() for x in inputs]
    oracle = REFERENCE_FN[config.op](*exact, estimator)
    oracle_grads = torch.autograd.grad(oracle, exact)
    leaves = [x.detach().requires_grad_() for x in inputs]
    out = peer_fn(config.op, peer)(*leaves, estimator)
    grads = torch.autograd.grad(out, leaves)
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    tolerance = {torch.float64: 1e-9, torch.float32: 5e-3 if tf32 else 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}
    for what, got, want in [("value", out, oracle), *zip(("grad 0", "grad 1"), grads, oracle_grads, strict=True)]:
        limit = tolerance[dtype] * max(1.0, want.abs().max().item())
        error = (got.detach().double().cpu() - want).abs().max().item()
        if not error <= limit:
            raise WrongResult(f"{peer} {config.op} {estimator}: {what} is off by {error:.3g} (limit {limit:.3g})")
