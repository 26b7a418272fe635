"""The CPU plans' cache of freed host buffers (csrc/common/host_buffers.cpp): buffers of at
least 256 KiB are reused when freed, up to DIM_FUSED_CPU_CACHE_BYTES; what a reused buffer held
never reaches a result (the same bits as without the cache, even from buffers poisoned with
NaN before they were freed)."""

import pytest
import torch
from helpers import require

import dim_fused
from dim_fused.ops.common import library

MIB = 1 << 20


def _concat_conv_inputs():
    """Large enough for cached buffers: the feature map's gradient (returned), P and dP
    (inside) of 1 MiB each, the kept activations of 2 MiB."""
    generator = torch.Generator().manual_seed(5)
    fmap = torch.randn(8, 512, 8, 8, generator=generator)
    code = torch.randn(8, 8, generator=generator)
    weights = [torch.randn(512, 520, generator=generator) * 0.04, torch.randn(512, 512, generator=generator) * 0.04]
    weights.append(torch.randn(1, 512, generator=generator) * 0.04)
    biases = [torch.randn(w.shape[0], generator=generator) * 0.1 for w in weights]
    perm = dim_fused.location_permutation(8, 64, generator=torch.Generator().manual_seed(6))
    return [fmap, code, *weights, *biases], perm


def _concat_conv_step(inputs, perm):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = dim_fused.concat_conv_mi(*leaves[:2], leaves[2:5], leaves[5:], perm=perm, estimator="jsd", backend="cpu")
    return [out, *torch.autograd.grad(out, leaves)]


def _dot_product_step(local, global_codes, estimator="infonce"):
    leaves = [x.detach().clone().requires_grad_() for x in (local, global_codes)]
    out = dim_fused.dot_product_mi(*leaves, estimator=estimator, backend="cpu")
    return [out, *torch.autograd.grad(out, leaves)]


def _poisoned(results):
    """The results' bits, then NaN written into every result before they are freed (the
    cache gets them back poisoned)."""
    bits = [r.detach().clone() for r in results]
    for r in results:
        r.detach().fill_(float("nan"))
    return bits


@pytest.mark.parametrize(
    "op", ["concat_conv_mi", "dot_product_mi", "dot_product_mi-fp16-rows", "dot_product_mi-bf16-blas"]
)
def test_reused_buffers_change_no_result(monkeypatch, op):
    """dot_product_mi-fp16-rows: fp16 codes laid out as rows (a transposed view), JSD: its
    scores come from operands converted to fp32 into cached buffers with the views' strides
    (bf16 ones are multiplied as they are). dot_product_mi-bf16-blas: bf16 codes, JSD, under
    DIM_FUSED_CPU_GEMM=blas: MKL's bf16 GEMM writes the scores into reused buffers, where
    torch links MKL."""
    require("cpu", "cpu")
    if op == "concat_conv_mi":
        inputs, perm = _concat_conv_inputs()

        def step():
            return _concat_conv_step(inputs, perm)
    else:
        generator = torch.Generator().manual_seed(7)
        local, global_codes = torch.randn(8, 512, 64, generator=generator) * 0.05, torch.randn(8, 512) * 0.05
        estimator = "infonce"
        if op.endswith("fp16-rows"):
            local = local.half().transpose(1, 2).contiguous().transpose(1, 2)
            global_codes, estimator = global_codes.half(), "jsd"
        if op.endswith("bf16-blas"):
            local, global_codes, estimator = local.bfloat16(), global_codes.bfloat16(), "jsd"
            monkeypatch.setenv("DIM_FUSED_CPU_GEMM", "blas")

        def step():
            return _dot_product_step(local, global_codes, estimator)

    monkeypatch.setenv("DIM_FUSED_CPU_CACHE_BYTES", "0")
    library.empty_cpu_cache()
    without = _poisoned(step())
    assert library.cpu_cache() == (0, 0)
    monkeypatch.setenv("DIM_FUSED_CPU_CACHE_BYTES", "64MiB")
    least = MIB // 4 if op.endswith("bf16-blas") else MIB  # bf16 buffers: 512 KiB held
    for _ in range(3):  # the second and third steps run on the first's poisoned buffers
        got = _poisoned(step())
        idle, limit = library.cpu_cache()
        assert limit == 64 * MIB and least <= idle <= limit
        for g, w in zip(got, without, strict=True):
            assert torch.equal(g, w)


def test_the_limit_bounds_what_is_kept(monkeypatch):
    require("cpu", "cpu")
    inputs, perm = _concat_conv_inputs()
    monkeypatch.setenv("DIM_FUSED_CPU_CACHE_BYTES", "64MiB")
    _concat_conv_step(inputs, perm)
    assert library.cpu_cache()[0] >= 2 * MIB
    monkeypatch.setenv("DIM_FUSED_CPU_CACHE_BYTES", "1MiB")  # lowering it frees the excess at once
    idle, limit = library.cpu_cache()
    assert limit == MIB and idle <= MIB
    _concat_conv_step(inputs, perm)
    assert library.cpu_cache()[0] <= MIB
    library.empty_cpu_cache()
    assert library.cpu_cache() == (0, MIB)


def test_a_returned_gradient_behaves_like_any_cpu_tensor(monkeypatch):
    """From the cache, yet resizable, shareable and saveable."""
    require("cpu", "cpu")
    monkeypatch.setenv("DIM_FUSED_CPU_CACHE_BYTES", "64MiB")
    generator = torch.Generator().manual_seed(8)
    local = (torch.randn(8, 512, 64, generator=generator) * 0.05).requires_grad_()
    dim_fused.dot_product_mi(local, torch.randn(8, 512) * 0.05, estimator="infonce", backend="cpu").backward()
    grad = local.grad
    assert grad.untyped_storage().nbytes() >= MIB
    saved = grad.clone()
    grad.share_memory_()
    assert grad.is_shared() and torch.equal(grad, saved)
    local.grad = None
    dim_fused.dot_product_mi(local, torch.randn(8, 512) * 0.05, estimator="infonce", backend="cpu").backward()
    local.grad.resize_(16, 512, 64).fill_(1.0)  # grows into a new allocation
    assert local.grad.sum().item() == 16 * 512 * 64
