"""What the op library takes from its surroundings: the DIM_FUSED_* environment variables
(a bad value names the variable and what it accepts), Triton's CPU interpreter (bfloat16
refused, launches from several threads serialised), and the tests' own seeds (the same in
every process)."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import CHUNK, TILE, require, stable_seed

import dim_fused
from dim_fused.ops.common import tunables

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("variable", "value", "accepts"),
    [
        ("DIM_FUSED_KEEP_BYTES", "abc", "a size in bytes"),
        ("DIM_FUSED_KEEP_BYTES", "1e9", "a size in bytes"),
        ("DIM_FUSED_KEEP_BYTES", "-5", "a size in bytes"),
        ("DIM_FUSED_KEEP_BYTES", "64 parsecs", "a size in bytes"),
        ("DIM_FUSED_TILE_SCORES", "garbage", "a positive integer"),
        ("DIM_FUSED_TILE_SCORES", "0", "a positive integer"),
        ("DIM_FUSED_CHUNK_VALUES", "1.5", "a positive integer"),
        ("DIM_FUSED_TRITON_PROGRAMS", "many", "a positive integer"),
        ("DIM_FUSED_AUTOTUNE", "maybe", "1 or 0"),
        ("DIM_FUSED_QUIET", "2", "1 or 0"),
        ("DIM_FUSED_CPU_GEMM", "mkl", "auto, onednn or blas"),
        ("DIM_FUSED_CPU_CACHE_BYTES", "-1", "a size in bytes"),
    ],
)
def test_a_bad_environment_variable_is_named_with_what_it_accepts(monkeypatch, variable, value, accepts):
    monkeypatch.setenv(variable, value)
    readers = {
        "DIM_FUSED_KEEP_BYTES": tunables.keep_bytes,
        "DIM_FUSED_TILE_SCORES": lambda: tunables.tile_scores(torch.device("cpu")),
        "DIM_FUSED_CHUNK_VALUES": lambda: tunables.chunk_values(torch.device("cpu")),
        "DIM_FUSED_TRITON_PROGRAMS": tunables.triton_programs,
        "DIM_FUSED_AUTOTUNE": tunables.autotune,
        "DIM_FUSED_QUIET": tunables.quiet,
        "DIM_FUSED_CPU_GEMM": tunables.cpu_gemm,
        "DIM_FUSED_CPU_CACHE_BYTES": tunables.cpu_cache_bytes,
    }
    with pytest.raises(ValueError, match=rf"{variable} must be {accepts}.*{value!r}"):
        readers[variable]()


def test_the_public_ops_report_a_bad_variable_by_name(monkeypatch):
    require("cpu", "cpu")
    feature_map, code = torch.randn(3, 4, 5, requires_grad=True), torch.randn(3, 2)
    weights = [torch.randn(6, 6), torch.randn(6, 6), torch.randn(1, 6)]  # layer 2's activations: kept or not
    biases = [torch.randn(6), torch.randn(6), torch.randn(1)]
    monkeypatch.setenv("DIM_FUSED_KEEP_BYTES", "64 parsecs")
    with pytest.raises(ValueError, match="DIM_FUSED_KEEP_BYTES"):
        dim_fused.concat_conv_mi(feature_map, code, weights, biases, backend="cpu")
    monkeypatch.delenv("DIM_FUSED_KEEP_BYTES")
    monkeypatch.setenv("DIM_FUSED_TILE_SCORES", "lots")
    with pytest.raises(ValueError, match="DIM_FUSED_TILE_SCORES must be a positive integer"):
        dim_fused.dot_product_mi(torch.randn(3, 4, 5), torch.randn(3, 4), backend="cpu")


def test_the_tests_that_call_the_registered_ops_pass_the_cpu_defaults(monkeypatch):
    """helpers.TILE and CHUNK: what the public ops pass down on a CPU when nothing is set."""
    monkeypatch.delenv("DIM_FUSED_TILE_SCORES", raising=False)
    monkeypatch.delenv("DIM_FUSED_CHUNK_VALUES", raising=False)
    cpu = torch.device("cpu")
    assert (tunables.tile_scores(cpu), tunables.chunk_values(cpu)) == (TILE, CHUNK)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("67108864", 1 << 26), ("64MiB", 1 << 26), ("64m", 1 << 26), ("512 KiB", 1 << 19), ("1G", 1 << 30)],
)
def test_sizes_take_units(monkeypatch, text, value):
    monkeypatch.setenv("DIM_FUSED_KEEP_BYTES", text)
    assert tunables.keep_bytes() == value


@pytest.mark.parametrize(("text", "value"), [("0", False), ("1", True), ("off", False), ("Yes", True), ("", True)])
def test_flags_take_the_usual_spellings(monkeypatch, text, value):
    monkeypatch.setenv("DIM_FUSED_AUTOTUNE", text)
    assert tunables.autotune() is value


def _interpreter_triton():
    require("triton", "cpu")
    if not tunables.triton_interpreted():
        pytest.skip("runs under the Triton interpreter (a machine without a GPU)")


def test_the_interpreter_refuses_bfloat16_before_a_launch():
    _interpreter_triton()
    local, global_codes = torch.randn(4, 8, 5).bfloat16(), torch.randn(4, 8).bfloat16()
    with pytest.raises(ValueError, match="cannot compute in bfloat16"):
        dim_fused.dot_product_mi(local, global_codes, backend="triton")
    with pytest.raises(ValueError, match="cannot compute in bfloat16"):
        torch.ops.dim_fused.mi_bound_triton(torch.randn(6).bfloat16(), torch.randn(6).bfloat16(), "jsd")
    feature_map, code = torch.randn(3, 4, 5).bfloat16(), torch.randn(3, 2).bfloat16()
    weights = [torch.randn(6, 6).bfloat16(), torch.randn(6, 6).bfloat16(), torch.randn(1, 6).bfloat16()]
    biases = [torch.randn(6).bfloat16(), torch.randn(6).bfloat16(), torch.randn(1).bfloat16()]
    with pytest.raises(ValueError, match="cannot compute in bfloat16"):
        dim_fused.concat_conv_mi(feature_map, code, weights, biases, backend="triton")


def test_the_interpreter_runs_threads_one_at_a_time():
    """Three threads calling the Triton backend under the interpreter at once get what one
    thread alone gets (values and gradients)."""
    _interpreter_triton()
    torch.manual_seed(0)
    local = torch.randn(4, 16, 6, dtype=torch.float64)
    global_codes = torch.randn(4, 16, dtype=torch.float64)

    def run() -> list[torch.Tensor]:
        x, y = local.clone().requires_grad_(), global_codes.clone().requires_grad_()
        estimate = dim_fused.dot_product_mi(x, y, estimator="infonce", backend="triton")
        estimate.backward()
        return [estimate.detach(), x.grad, y.grad]

    alone = run()
    results: list[list[torch.Tensor] | BaseException] = [None] * 3

    def worker(i: int) -> None:
        try:
            results[i] = run()
        except BaseException as error:  # noqa: BLE001 - reported below
            results[i] = error

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for result in results:
        assert not isinstance(result, BaseException), result
        for got, want in zip(result, alone, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_tests_seed_is_the_same_in_every_process(request):
    assert torch.initial_seed() == stable_seed(request.node.nodeid)
    code = "import sys; sys.path.insert(0, 'tests'); from helpers import stable_seed; print(stable_seed('a::b'))"
    seeds = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": salt},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for salt in ("1", "2")
    }
    assert len(seeds) == 1, seeds
