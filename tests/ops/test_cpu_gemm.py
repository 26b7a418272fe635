"""The CPU plans' GEMMs (csrc/common/gemm.cpp): oneDNN's matmul where torch carries it, in
IEEE fp32 and bf16 with fp32 accumulation, BLAS otherwise or when DIM_FUSED_CPU_GEMM says
so. Both providers run both ops against the float64 oracle (the tolerance rule), with the
operand layouts the plans hand them: transposed weights and gradients, strided weight
slices, channels-last codes (transposed rows), non-contiguous feature maps."""

import pytest
import torch
from helpers import assert_matches_oracle, require

import dim_fused
from dim_fused import reference
from dim_fused.ops.common import library


def _provider(monkeypatch, provider: str) -> None:
    monkeypatch.setenv("DIM_FUSED_CPU_GEMM", provider)
    if provider == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")


@pytest.mark.parametrize("provider", ["onednn", "blas"])
def test_the_provider_is_the_one_asked_for(monkeypatch, provider):
    require("cpu", "cpu")
    _provider(monkeypatch, provider)
    assert library.cpu_gemm() == provider
    monkeypatch.setenv("DIM_FUSED_CPU_GEMM", "auto")
    assert library.cpu_gemm() == ("auto" if torch.backends.mkldnn.is_available() else "blas")


def test_auto_times_each_shape_class_once_and_stays_right(monkeypatch):
    """auto's choice per shape class of fp32 products: both providers timed at the first
    product of at least 2^24 FLOPs, listed with both times, reused after; the op's values
    match the oracle whichever provider won."""
    require("cpu", "cpu")
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN: auto is BLAS")
    monkeypatch.setenv("DIM_FUSED_CPU_GEMM", "auto")
    generator = torch.Generator().manual_seed(4)
    # 16 images x 64 locations against 16 globals of E = 1024: score products of 2^25 FLOPs,
    # d local = dS^T global of inner dimension 16.
    local = torch.randn(16, 1024, 8, 8, generator=generator, dtype=torch.float64) * 0.1
    global_codes = torch.randn(16, 1024, generator=generator, dtype=torch.float64) * 0.1

    def fused(loc, glo):
        return dim_fused.dot_product_mi(loc, glo, estimator="infonce", backend="cpu")

    def oracle(loc, glo):
        return reference.dot_product_mi(loc, glo, "infonce")

    assert_matches_oracle(
        fused, oracle, [local, global_codes], dtype=torch.float32, device="cpu", names=["local", "global"], what="auto"
    )
    choices = library.cpu_gemm_choices()
    assert any("x 1024 @ 1024 x" in line for line in choices), choices  # this op's score products
    for line in choices:
        assert line.startswith("fp32 ") and (": onednn (" in line or ": blas (" in line), line
        assert " ms, blas " in line, line
    fused(local.float(), global_codes.float())
    assert library.cpu_gemm_choices() == choices  # the same classes: nothing timed again


def test_a_bad_provider_is_named(monkeypatch):
    require("cpu", "cpu")
    monkeypatch.setenv("DIM_FUSED_CPU_GEMM", "mkl")
    with pytest.raises(ValueError, match="DIM_FUSED_CPU_GEMM must be auto, onednn or blas, got 'mkl'"):
        dim_fused.mi_bound(torch.randn(3), torch.randn(3), backend="cpu")


def _critic(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    sizes = [24 + 8, 48, 40, 1]
    weights = [
        torch.randn(o, i, generator=generator, dtype=dtype) * i**-0.5 for i, o in zip(sizes, sizes[1:], strict=False)
    ]
    biases = [torch.randn(o, generator=generator, dtype=dtype) * 0.1 for o in sizes[1:]]
    # A feature map read through a transposing view: not contiguous.
    fmap = torch.randn(6, 7, 24, 5, generator=generator, dtype=dtype).permute(0, 2, 3, 1)
    return fmap, torch.randn(6, 8, generator=generator, dtype=dtype), weights, biases


@pytest.mark.parametrize("provider", ["onednn", "blas"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
def test_concat_conv_mi_on_each_provider(monkeypatch, provider, dtype, estimator):
    require("cpu", "cpu")
    _provider(monkeypatch, provider)
    fmap, code, weights, biases = _critic()
    perm = dim_fused.location_permutation(6, 35, num_negatives=2, generator=torch.Generator().manual_seed(1))
    monkeypatch.setenv("DIM_FUSED_CHUNK_VALUES", str(3 * 48 * 35))  # chunks of 3 images: crossed edges

    def fused(f, y, *params):
        return dim_fused.concat_conv_mi(f, y, params[:3], params[3:], perm=perm, estimator=estimator, backend="cpu")

    def oracle(f, y, *params):
        return reference.concat_conv_mi(f, y, params[:3], params[3:], perm, estimator)

    names = ["feature_map", "global_code", "w1", "w2", "w3", "b1", "b2", "b3"]
    assert_matches_oracle(
        fused, oracle, [fmap, code, *weights, *biases], dtype=dtype, device="cpu", names=names, what=provider
    )


@pytest.mark.parametrize("provider", ["onednn", "blas"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels-last"])
def test_dot_product_mi_on_each_provider(monkeypatch, provider, dtype, layout):
    require("cpu", "cpu")
    _provider(monkeypatch, provider)
    generator = torch.Generator().manual_seed(2)
    local = torch.randn(6, 40, 3, 5, generator=generator, dtype=torch.float64) * 0.3
    if layout == "channels-last":  # the rows layout: each tile's GEMMs read transposed views
        local = local.contiguous(memory_format=torch.channels_last)
    global_codes = torch.randn(6, 40, generator=generator, dtype=torch.float64) * 0.3
    monkeypatch.setenv("DIM_FUSED_TILE_SCORES", str(6 * 15 * 2))  # tiles of 2 images

    def fused(loc, glo):
        return dim_fused.dot_product_mi(loc, glo, estimator="infonce", backend="cpu")

    def oracle(loc, glo):
        return reference.dot_product_mi(loc, glo, "infonce")

    assert_matches_oracle(
        fused, oracle, [local, global_codes], dtype=dtype, device="cpu", names=["local", "global"], what=provider
    )


def test_the_providers_agree(monkeypatch):
    """Both are IEEE fp32 GEMMs: the same values to fp32 rounding (summation order aside)."""
    require("cpu", "cpu")
    fmap, code, weights, biases = (
        [t.float() for t in x] if isinstance(x, list) else x.float() for x in _critic(torch.float64)
    )
    perm = dim_fused.location_permutation(6, 35, generator=torch.Generator().manual_seed(3))
    results = []
    for provider in ("onednn", "blas"):
        _provider(monkeypatch, provider)
        leaves = [x.detach().clone().requires_grad_() for x in (fmap, code, *weights, *biases)]
        out = dim_fused.concat_conv_mi(*leaves[:2], leaves[2:5], leaves[5:], perm=perm, backend="cpu")
        results.append([out, *torch.autograd.grad(out, leaves)])
    for one, other in zip(*results, strict=True):
        torch.testing.assert_close(one, other, rtol=2e-5, atol=2e-6)
