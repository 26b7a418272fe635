"""The compiled extension: what made it into the build, and life without it."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import dim_fused
from dim_fused.ops.common import library as _ops


def test_cpu_kernels_are_built():
    assert _ops.C_IMPORT_ERROR is None, _ops.C_IMPORT_ERROR
    for op in ("mi_bound", "mi_bound_backward"):
        assert _ops.has_cpp_kernel(op, "CPU")
    assert {"reference", "cpu"} <= set(dim_fused.available_backends())


@pytest.mark.skipif(os.environ.get("DIM_FUSED_CUDA") != "1", reason="set DIM_FUSED_CUDA=1 to require the CUDA kernels")
def test_cuda_kernels_are_built():
    """CI builds with DIM_FUSED_CUDA=1: the CUDA objects must be compiled and linked in."""
    for op in ("mi_bound", "mi_bound_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dim_fused::{op}", "CUDA"), op


def test_triton_listed_when_importable():
    assert ("triton" in dim_fused.available_backends()) == (_ops.TRITON_IMPORT_ERROR is None)


def test_runs_without_the_extension():
    script = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["dim_fused._C"] = None  # as if it was never built
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch, dim_fused
        assert sum("compiled extension is missing" in str(w.message) for w in caught) == 1, caught
        assert "cpu" not in dim_fused.available_backends()
        pos, neg = torch.randn(3, 4), torch.randn(3, 4)
        print(dim_fused.mi_bound(pos, neg, "jsd").item())  # auto falls back to the reference
        try:
            dim_fused.mi_bound(pos, neg, "jsd", backend="cpu")
        except RuntimeError as error:
            assert "pip install --no-build-isolation -e ." in str(error), error
        else:
            raise AssertionError("backend='cpu' without the extension must fail")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "DIM_FUSED_QUIET"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and torch.backends.openmp.is_available()),
    reason="the extension is built with OpenMP where torch is, on Linux",
)
def test_cpu_kernels_run_on_torchs_threads():
    """at::parallel_for splits over torch's threads only in code compiled with OpenMP; a
    build without it ran every CPU kernel of the extension on one thread."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.ops.dim_fused.cpu_parallel_ranges() == 2
        torch.set_num_threads(1)
        assert torch.ops.dim_fused.cpu_parallel_ranges() == 1
    finally:
        torch.set_num_threads(threads)
