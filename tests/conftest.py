"""Shared fixtures. Without a GPU, Triton kernels run under the interpreter, which
must be switched on before any kernel module is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import dim_fused  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FUSED = ("cpu", "cuda", "triton")
# (backend, device) pairs a fused kernel could run on; unavailable ones skip with the reason.
FUSED_CASES = [
    (b, d)
    for d in ("cpu", "cuda")
    for b in FUSED
    if not (b == "cpu" and d == "cuda") and not (b == "cuda" and d == "cpu")
]


def require(backend: str, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    if backend not in dim_fused.available_backends(device):
        try:
            dim_fused._dispatch.resolve(backend, torch.device(device))
        except RuntimeError as why:
            pytest.skip(str(why))


@pytest.fixture(params=FUSED_CASES, ids=[f"{b}-{d}" for b, d in FUSED_CASES])
def fused(request) -> tuple[str, str]:
    """A (backend, device) pair of a fused kernel, skipped when not available here."""
    require(*request.param)
    return request.param


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh but reproducible inputs per test: the seed follows the test's name.
    torch.manual_seed(hash(request.node.nodeid) % (2**31))
