"""Shared fixtures. Without a GPU, Triton kernels run under the interpreter, which
must be switched on before any kernel module is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:  # one tile per dtype instead of autotuning every new shape (the tile tests try each one)
    os.environ.setdefault("DIM_FUSED_AUTOTUNE", "0")

import pytest  # noqa: E402
from helpers import FUSED_CASES, require, stable_seed  # noqa: E402


@pytest.fixture(params=FUSED_CASES, ids=[f"{b}-{d}" for b, d in FUSED_CASES])
def fused(request) -> tuple[str, str]:
    """A (backend, device) pair of a fused kernel, skipped when not available here."""
    require(*request.param)
    return request.param


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh but reproducible inputs per test: the seed follows the test's name, through a
    # hash that is the same in every process (Python's hash() of a str is salted per process).
    torch.manual_seed(stable_seed(request.node.nodeid))
