"""Test helpers: where a fused kernel can run (backend, device pairs that skip with
the reason when unavailable), the tolerance rule of docs/design.md ("Tests"): a
kernel's error against the float64 oracle may be at most `factor` x the error of the
reference run in the same dtype, plus a small floor; and joining a gloo group."""

import datetime
import os
import zlib

import pytest
import torch

import dim_fused

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FUSED = ("cpu", "cuda", "triton")
# (backend, device) pairs a fused kernel could run on; unavailable ones skip with the reason.
FUSED_CASES = [
    (b, d)
    for d in ("cpu", "cuda")
    for b in FUSED
    if not (b == "cpu" and d == "cuda") and not (b == "cuda" and d == "cpu")
]


def stable_seed(nodeid: str) -> int:
    """A test's seed, from its node id: the same in every process and on every machine
    (Python salts ``hash()`` of a str per process), so a failing random case reproduces."""
    return zlib.crc32(nodeid.encode())


def require(backend: str, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    if backend not in dim_fused.available_backends(device):
        try:
            dim_fused.resolve_backend(backend, torch.device(device))
        except RuntimeError as why:
            pytest.skip(str(why))


# The tunables the public ops pass down to the registered ops (dim_fused/ops/common/
# tunables.py: scores per dot_product_mi tile, values per concat_conv_mi row chunk), for
# the tests that call those ops directly.
TILE, CHUNK = 1 << 20, 1 << 20

FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def max_error(value: torch.Tensor, oracle: torch.Tensor) -> float:
    return (value.double() - oracle.double()).abs().max().item()


def assert_within_reference_error(
    kernel: torch.Tensor, same_dtype_reference: torch.Tensor, oracle: torch.Tensor, factor: float, what: str
) -> None:
    floor = FLOOR[kernel.dtype] * max(1.0, oracle.abs().max().item())
    allowed = factor * max_error(same_dtype_reference, oracle) + floor
    error = max_error(kernel, oracle)
    assert torch.isfinite(kernel).all() == torch.isfinite(oracle).all(), f"{what}: finiteness differs"
    assert error <= allowed, f"{what}: error {error:.3g} > allowed {allowed:.3g} (reference error x{factor} + floor)"


def value_and_grads(fn, *inputs: torch.Tensor, dtype: torch.dtype, device: str):
    """fn(*inputs) and its gradients w.r.t. every input, with inputs cast to dtype/device."""
    leaves = [x.detach().to(device=device, dtype=dtype).requires_grad_() for x in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves)
    return out.detach(), [g.detach() for g in grads]


def poison_cuda_cache(nbytes: int = 1 << 26) -> None:
    """Fill free blocks of the CUDA caching allocator with NaN so an output element a
    kernel forgets to write reads back as NaN instead of a plausible stale value."""
    if torch.cuda.is_available():
        torch.empty(nbytes // 4, device="cuda").fill_(float("nan"))


def assert_matches_oracle(fused, reference_fn, inputs, *, dtype, device, names, what) -> None:
    """Value and gradients of `fused` (at dtype, on device) against `reference_fn` in
    float64 on the CPU, within the tolerance rule; outputs written over poison."""
    oracle, oracle_grads = value_and_grads(reference_fn, *inputs, dtype=torch.float64, device="cpu")
    same, same_grads = value_and_grads(reference_fn, *inputs, dtype=dtype, device=device)
    poison_cuda_cache()
    out, grads = value_and_grads(fused, *inputs, dtype=dtype, device=device)
    assert out.dtype == dtype and out.shape == ()
    assert_within_reference_error(out.cpu(), same.cpu(), oracle, 2.0, f"{what} value")
    for name, g, sg, og in zip(names, grads, same_grads, oracle_grads, strict=True):
        assert g.shape == og.shape
        assert_within_reference_error(g.cpu(), sg.cpu(), og, 3.0, f"{what} d{name}")


def join_gloo(rank: int, world: int, init_file: str, timeout_s: float = 120) -> None:
    """A spawned test process joins a gloo group of `world` through a file; a rank left
    waiting in a collective fails after `timeout_s` instead of hanging the suite."""
    import torch.distributed as dist

    os.environ.setdefault("DIM_FUSED_QUIET", "1")
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
