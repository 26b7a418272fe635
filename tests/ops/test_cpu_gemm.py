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
    fp32 = [line for line in choices if line.startswith("fp32 ")]
    assert any("x 1024 @ 1024 x" in line for line in fp32), choices  # this op's score products
    for line in fp32:
        assert ": onednn (onednn " in line or ": blas (onednn " in line, line
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


def _bf16_dot() -> bool:
    return bool(torch.ops.dim_fused.cpu_bf16_dot())


def _blas_bf16() -> bool:
    return bool(torch.ops.dim_fused.cpu_blas_bf16())


def test_mkl_bf16_gemm_is_found_where_torch_links_mkl():
    """MKL's bf16 x bf16 -> fp32 GEMM, looked up at run time, is found and passes its 3 x 3
    check wherever torch links MKL: its absence would quietly leave these products to the
    kernel or to converted operands."""
    require("cpu", "cpu")
    if not torch.backends.mkl.is_available():
        pytest.skip("this torch does not link MKL")
    assert _blas_bf16()


def _use(monkeypatch, provider: str) -> None:
    """The provider for torch.ops.dim_fused.cpu_gemm_to_float, handed to the plans now (the
    public ops hand DIM_FUSED_CPU_GEMM down on each call; the raw op does not)."""
    _provider(monkeypatch, provider)
    assert library.cpu_gemm() == provider


def _bf16_products(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The plans' fp32 product of bf16 operands (written over a NaN-poisoned buffer of its
    size), the float64 product of the same values, and the bound fp32 accumulation allows:
    2 K 2^-24 |a| |b|, and K times fp32's smallest normal (AVX512-BF16 flushes subnormal
    results to zero; the operands here are normal)."""
    poisoned = torch.ops.dim_fused.cpu_gemm_to_float(a, b)
    poisoned.fill_(float("nan"))  # freed into the plans' buffer cache: the next product's output
    del poisoned
    got = torch.ops.dim_fused.cpu_gemm_to_float(a, b)
    want = torch.matmul(a.double(), b.double())
    magnitude = torch.matmul(a.double().abs(), b.double().abs())
    return got, want, float((magnitude * (2.0 * a.shape[-1] * 2.0**-24)).max()) + a.shape[-1] * 2.0**-126


def _operand(shape, layout, generator):
    """A bf16 operand of `shape` in `layout`: rows (row-major), columns (a transposed view),
    strided (every other column of a wider tensor), broadcast (one matrix over a batch)."""
    *batch, rows, cols = shape
    if layout == "columns":
        return torch.randn(*batch, cols, rows, generator=generator).bfloat16().transpose(-1, -2)
    if layout == "strided":
        return torch.randn(*batch, rows, 2 * cols, generator=generator).bfloat16()[..., ::2]
    if layout == "broadcast":
        return torch.randn(1, rows, cols, generator=generator).bfloat16().expand(*batch, rows, cols)
    return torch.randn(*batch, rows, cols, generator=generator).bfloat16()


# (M, K, N): one-element and tail tiles (M not a multiple of 6, N of 16 or 64), odd K (a last
# k without its pair), more than one 64-column panel, and more than 48 rows of a transposed
# output (its staged blocks).
BF16_SHAPES = [(1, 1, 1), (7, 3, 5), (6, 2, 64), (13, 33, 70), (64, 40, 130), (130, 9, 3), (5, 64, 300)]
BATCHED_BF16_SHAPES = [(3, 7, 33, 70), (4, 64, 40, 130), (2, 130, 9, 3)]
BF16_LAYOUTS = [("rows", "rows"), ("rows", "columns"), ("columns", "columns"), ("rows", "strided")]


@pytest.mark.parametrize("provider", ["onednn", "blas"])
@pytest.mark.parametrize("shape", BF16_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layouts", BF16_LAYOUTS, ids=lambda pair: "-".join(pair))
def test_bf16_products_are_fp32_exact_to_accumulation(monkeypatch, provider, shape, layouts):
    """bf16 operands, fp32 results: on AVX512-BF16 the project's kernel (onednn), MKL's bf16
    GEMM (blas) where torch links MKL, elsewhere converted operands; either way every element
    within fp32 accumulation error of the float64 product of the same bf16 values (no rounding
    of the result to bf16)."""
    require("cpu", "cpu")
    _use(monkeypatch, provider)
    m, k, n = shape
    generator = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    a = _operand((m, k), layouts[0], generator)
    b = _operand((k, n), layouts[1], generator)
    got, want, bound = _bf16_products(a, b)
    assert got.dtype == torch.float32 and got.shape == (m, n) and got.is_contiguous()
    assert (got.double() - want).abs().max().item() <= bound


@pytest.mark.parametrize("shape", BATCHED_BF16_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("a_layout", ["rows", "broadcast", "columns"])
@pytest.mark.parametrize("b_layout", ["rows", "columns"])
def test_batched_bf16_products_are_fp32_exact_to_accumulation(monkeypatch, shape, a_layout, b_layout):
    require("cpu", "cpu")
    _use(monkeypatch, "onednn")
    batch, m, k, n = shape
    generator = torch.Generator().manual_seed(batch + m + k + n)
    a = _operand((batch, m, k), a_layout, generator)
    b = _operand((batch, k, n), b_layout, generator)
    got, want, bound = _bf16_products(a, b)
    assert got.shape == (batch, m, n) and got.is_contiguous()
    assert (got.double() - want).abs().max().item() <= bound


@pytest.mark.parametrize("provider", ["onednn", "blas"])
def test_bf16_products_carry_extreme_values(monkeypatch, provider):
    """Infinities and NaN where the float64 product has them, the largest bf16 values summed
    in fp32, and the last k of an odd K alone: its pair's other half is padding, never the
    next row's first value (an infinity or NaN here) times zero. Both operand orders (the
    kernel reads the rows of a in place for a @ b, and for b^T @ a^T too, as the transposed
    product)."""
    require("cpu", "cpu")
    _use(monkeypatch, provider)
    big = torch.finfo(torch.bfloat16).max
    nan, inf = float("nan"), float("inf")
    a = torch.tensor([[big, big, 1.0], [1.0, -1.0, 0.0], [inf, 0.0, 1.0], [nan, 1.0, 1.0]]).bfloat16()
    b = torch.tensor([[1e-30, 1.0], [1e-30, 0.0], [2.0, 2.0]]).bfloat16()
    want = torch.matmul(a.double(), b.double()).float()
    assert torch.isfinite(want[:2]).all() and want[2].isinf().all() and want[3].isnan().all()
    for got in (torch.ops.dim_fused.cpu_gemm_to_float(a, b), torch.ops.dim_fused.cpu_gemm_to_float(b.t(), a.t()).t()):
        torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-6, atol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels-last"])
def test_bf16_scores_run_on_the_bf16_kernel_where_the_cpu_has_it(monkeypatch, layout):
    """dot_product_mi's bf16 scores: on AVX512-BF16 the kernel (its profiler range) under auto
    (products too small to time) and onednn; under DIM_FUSED_CPU_GEMM=blas MKL's bf16 GEMM
    where torch links MKL, never the kernel."""
    require("cpu", "cpu")
    if not _bf16_dot():
        pytest.skip("this CPU has no AVX512-BF16: the operands are converted")
    local = torch.randn(4, 40, 3, 5).bfloat16()
    if layout == "channels-last":
        local = local.contiguous(memory_format=torch.channels_last)
    global_codes = torch.randn(4, 40).bfloat16()

    def ranges() -> list[str]:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            dim_fused.dot_product_mi(local, global_codes, estimator="jsd", backend="cpu")
        return [e.key for e in prof.key_averages()]

    for provider, kernel, blas in (("auto", True, False), ("onednn", True, False), ("blas", False, _blas_bf16())):
        _provider(monkeypatch, provider)
        seen = ranges()
        assert ("dim_fused::bf16_gemm" in seen) == kernel, provider
        assert ("dim_fused::blas_bf16_gemm" in seen) == blas, provider


def test_auto_times_bf16_products_against_mkl(monkeypatch):
    """bf16 products with an fp32 result of at least 2^24 FLOPs under auto: the kernel (or
    converted operands) and MKL's bf16 GEMM timed once per shape class, both times listed,
    the result within fp32 accumulation error whichever won (a broadcast batch too)."""
    require("cpu", "cpu")
    if not _blas_bf16():
        pytest.skip("this torch has no MKL bf16 GEMM: auto has nothing to time for bf16")
    _use(monkeypatch, "auto")
    generator = torch.Generator().manual_seed(11)
    # Shapes no other test multiplies in bf16 (a class is timed once per process).
    a = _operand((200, 520), "rows", generator)
    b = _operand((520, 300), "columns", generator)
    batched_a = _operand((3, 40, 700), "broadcast", generator)
    batched_b = _operand((3, 700, 300), "rows", generator)
    for x, y in ((a, b), (batched_a, batched_b)):
        got, want, bound = _bf16_products(x, y)
        assert (got.double() - want).abs().max().item() <= bound
    bf16 = [line for line in library.cpu_gemm_choices() if line.startswith("bf16 to fp32 ")]
    first = "avx512-bf16" if _bf16_dot() else "converted"
    for shape in ("200 x 520 @ 520 x 300 (rows, columns)", "3 x 40 x 700 @ 700 x 300 (broadcast, rows)"):
        [line] = [line for line in bf16 if shape in line]
        assert f": {first} ({first} " in line or f": blas ({first} " in line, line
        assert " ms, blas " in line, line
    _bf16_products(a, b)
    assert [line for line in library.cpu_gemm_choices() if line.startswith("bf16 to fp32 ")] == bf16


def _bf16_sum(start: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plans' start + sum over the batch of a_i @ b_i (fp32, bf16 operands), the float64
    sum of the same values, and the sum of |a_i| |b_i| (the scale of its rounding error)."""
    got = torch.ops.dim_fused.cpu_gemm_sum_to_float(start, a, b)
    want = start.double() + torch.matmul(a.double(), b.double()).sum(0)
    magnitude = torch.matmul(a.double().abs(), b.double().abs()).sum(0)
    return got, want, magnitude


# (batch, M, K, N): a batch that is not a multiple of MKL's groups (2^19 values of b's
# columns per thread: 70 images of K = 64 over 150 columns come in groups of 54), fewer
# columns than threads' blocks, odd K, one image.
SUMMED_BF16_SHAPES = [(3, 7, 33, 70), (5, 64, 40, 130), (70, 5, 64, 300), (9, 130, 9, 3), (1, 6, 64, 20)]


@pytest.mark.parametrize("provider", ["onednn", "blas"])
@pytest.mark.parametrize("shape", SUMMED_BF16_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("a_layout", ["rows", "broadcast", "columns"])
@pytest.mark.parametrize("b_layout", ["rows", "columns"])
def test_bf16_sums_of_products_add_into_their_start(monkeypatch, provider, shape, a_layout, b_layout):
    """dot_product_mi's d_global, out += sum_i a_i @ b_i with bf16 operands and an fp32 out:
    on MKL's bf16 GEMM (blas, where torch links MKL) each product added unrounded, within fp32
    accumulation error of the float64 sum; with each product in bf16 on oneDNN (onednn),
    within bf16 rounding of each product. Either way added to what out held."""
    require("cpu", "cpu")
    _use(monkeypatch, provider)
    batch, m, k, n = shape
    generator = torch.Generator().manual_seed(batch + m + k + n)
    a = _operand((batch, m, k), a_layout, generator)
    b = _operand((batch, k, n), b_layout, generator)
    start = torch.randn(m, n, generator=generator)
    got, want, magnitude = _bf16_sum(start, a, b)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    exact = provider == "blas" and _blas_bf16()
    # fp32: each partial sum rounded (K per product, batch in all); bf16: each product once.
    ulp = 2.0 * batch * k * 2.0**-24 if exact else 2.0**-8 + 2.0 * batch * k * 2.0**-24
    bound = magnitude * ulp + want.abs() * 2.0**-24 + batch * k * 2.0**-126
    assert ((got.double() - want).abs() <= bound).all()


def test_auto_times_bf16_sums_against_mkl(monkeypatch):
    """A bf16 sum of products into fp32 of at least 2^24 FLOPs under auto: the products summed
    after and MKL's grouped sum timed once per shape class, both times listed, the result
    within bf16 rounding of each product whichever won."""
    require("cpu", "cpu")
    if not _blas_bf16():
        pytest.skip("this torch has no MKL bf16 GEMM: auto has nothing to time for bf16 sums")
    _use(monkeypatch, "auto")
    generator = torch.Generator().manual_seed(12)
    a = _operand((24, 40, 64), "rows", generator)  # 86 MFLOP, a shape no other test sums
    b = _operand((24, 64, 700), "columns", generator)
    start = torch.zeros(40, 700)
    got, want, magnitude = _bf16_sum(start, a, b)
    assert ((got.double() - want).abs() <= magnitude * (2.0**-8 + 2.0 * 24 * 64 * 2.0**-24)).all()
    summed = [line for line in library.cpu_gemm_choices() if line.startswith("bf16 summed in fp32 ")]
    [line] = [line for line in summed if "24 x 40 x 64 @ 64 x 700 (rows, columns)" in line]
    assert ": summed after (summed after " in line or ": blas (summed after " in line, line
    assert " ms, blas " in line, line
    _bf16_sum(start, a, b)
    assert [line for line in library.cpu_gemm_choices() if line.startswith("bf16 summed in fp32 ")] == summed
