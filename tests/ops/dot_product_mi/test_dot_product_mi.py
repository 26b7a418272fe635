"""dim_fused.dot_product_mi on every fused backend against the float64 reference."""

import pytest
import torch
from helpers import TILE, assert_matches_oracle, value_and_grads

import dim_fused
from dim_fused import ESTIMATORS, F_MEASURES, reference
from dim_fused.nn import EncodeAndDotCritic
from dim_fused.ops.common.estimators import negative_term, positive_term

# (B, E, spatial, G, offset): odd sizes, G > B with offsets, several tiles.
SHAPES = [
    (2, 3, (1,), 2, 0),  # smallest: B = 2, L = 1
    (3, 5, (2, 3), 3, 0),  # (B, E, H, W) maps
    (4, 7, (5,), 9, 3),  # more globals than images (other ranks'), offset
    (5, 33, (17,), 5, 0),  # E and L not multiples of any tile
]


def cases(estimators):
    for shape in SHAPES:
        for estimator in estimators:
            if shape[3] != shape[0] and estimator in ("dv", "infonce"):
                continue
            yield pytest.param(shape, estimator, id=f"{estimator}-B{shape[0]}E{shape[1]}L{shape[2]}G{shape[3]}")


def make_codes(shape, scale=0.5):
    batch, units, spatial, num_globals, _ = shape
    local = torch.randn(batch, units, *spatial, dtype=torch.float64) * scale
    global_codes = torch.randn(num_globals, units, dtype=torch.float64) * scale
    return local, global_codes


def dtypes_for(backend, device):
    if backend == "triton" and device == "cpu":
        return [torch.float64, torch.float32]  # the interpreter's dot: no 16-bit checks here
    return [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def check(backend, device, dtype, estimator, local, global_codes, offset=0, official=False):
    def fused(loc, glo):
        return dim_fused.dot_product_mi(
            loc, glo, estimator=estimator, official=official, positive_offset=offset, backend=backend
        )

    def ref(loc, glo):
        return reference.dot_product_mi(loc, glo, estimator, official, offset)

    assert_matches_oracle(
        fused, ref, (local, global_codes), dtype=dtype, device=device, names=("local", "global"), what=estimator
    )


@pytest.mark.parametrize(("shape", "estimator"), list(cases(ESTIMATORS)))
def test_matches_oracle(fused, shape, estimator):
    backend, device = fused
    if backend == "triton" and device == "cpu" and shape[0] * shape[2][0] > 1000:
        pytest.skip("too large for the Triton interpreter")
    local, global_codes = make_codes(shape)
    for dtype in dtypes_for(backend, device):
        check(backend, device, dtype, estimator, local, global_codes, offset=shape[4])


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_many_tiles(fused, estimator, monkeypatch):
    """Tiles of one image: statistics merged across tiles, gradients written per tile;
    Triton's forward runs one program per row block, looping over the column blocks."""
    monkeypatch.setenv("DIM_FUSED_TILE_SCORES", "1")
    monkeypatch.setenv("DIM_FUSED_TRITON_PROGRAMS", "1")
    backend, device = fused
    local, global_codes = make_codes((5, 4, (7,), 5, 0))
    check(backend, device, torch.float32, estimator, local, global_codes)


@pytest.mark.parametrize("estimator", ["dv", "infonce", *F_MEASURES[:2]])
def test_official_mode(fused, estimator):
    backend, device = fused
    local, global_codes = make_codes((4, 6, (3, 3), 4, 0))
    check(backend, device, torch.float32, estimator, local, global_codes, official=True)


@pytest.mark.parametrize("estimator", ["jsd", "gan", "w1", "dv", "infonce"])
def test_large_magnitude_codes_stay_finite(fused, estimator):
    backend, device = fused
    local, global_codes = make_codes((3, 4, (5,), 3, 0), scale=30.0)  # scores in the thousands
    out, grads = value_and_grads(
        lambda loc, glo: dim_fused.dot_product_mi(loc, glo, estimator=estimator, backend=backend),
        local,
        global_codes,
        dtype=torch.float32,
        device=device,
    )
    assert torch.isfinite(out) and all(torch.isfinite(g).all() for g in grads)
    check(backend, device, torch.float32, estimator, local, global_codes)


def test_non_contiguous_inputs(fused):
    backend, device = fused
    local = torch.randn(4, 6, 5, dtype=torch.float64).transpose(1, 2)  # (4, 5, 6): E = 5, L = 6
    global_codes = torch.randn(5, 4, dtype=torch.float64).t()  # (4, 5)
    assert not local.is_contiguous() and not global_codes.is_contiguous()
    for estimator in ("jsd", "infonce"):
        check(backend, device, torch.float32, estimator, local, global_codes)


@pytest.mark.parametrize("estimator", ["jsd", "x2", "dv", "infonce"])
def test_gradcheck_float64(fused, estimator):
    backend, device = fused
    local, global_codes = make_codes((3, 4, (2,), 3, 0))
    inputs = (local.to(device).requires_grad_(), global_codes.to(device).requires_grad_())
    assert torch.autograd.gradcheck(
        lambda loc, glo: dim_fused.dot_product_mi(loc, glo, estimator=estimator, backend=backend), inputs
    )


def _ops_for(backend):
    if backend == "triton":
        return torch.ops.dim_fused.dot_product_mi_triton, torch.ops.dim_fused.dot_product_mi_triton_backward
    return torch.ops.dim_fused.dot_product_mi, torch.ops.dim_fused.dot_product_mi_backward


@pytest.mark.parametrize("estimator", ["jsd", "dv", "infonce"])
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("keep_scores", [False, True], ids=["recompute", "keep"])
def test_opcheck(fused, estimator, requires_grad, keep_scores):
    backend, device = fused
    local, global_codes = make_codes((3, 5, (4,), 3, 0))
    local = local.float().to(device).requires_grad_(requires_grad)
    global_codes = global_codes.float().to(device).requires_grad_(requires_grad)
    op, backward_op = _ops_for(backend)
    torch.library.opcheck(op, (local, global_codes, estimator, False, 0, TILE, keep_scores))
    _, stats, scores = op(local.detach(), global_codes.detach(), estimator, False, 0, TILE, keep_scores)
    kept = keep_scores and backend != "triton"  # Triton's backward scores its tiles again
    assert scores.shape == ((3, 12) if kept else (0,))
    grad = torch.tensor(-1.5, device=device)
    args = (grad, local.detach(), global_codes.detach(), stats, estimator, False, 0, TILE, scores)
    torch.library.opcheck(backward_op, args)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_kept_scores_give_the_recomputed_gradients(fused, estimator, dtype, monkeypatch):
    """The forward's kept scores (one tile, within DIM_FUSED_KEEP_BYTES) and the backward's own
    give the same gradients, also twice over one graph (retain_graph: the gradient epilogue
    must not overwrite the kept scores); fp16 keeps its tile scaled by B * L."""
    backend, device = fused
    if backend == "triton" and (device == "cpu") and dtype == torch.float16:
        pytest.skip("the interpreter's dot: no 16-bit checks here")
    local, global_codes = make_codes((4, 9, (3, 2), 4, 0))
    grads = {}
    for keep_bytes in ("0", str(1 << 26)):
        monkeypatch.setenv("DIM_FUSED_KEEP_BYTES", keep_bytes)
        loc = local.to(device, dtype).requires_grad_()
        glo = global_codes.to(device, dtype).requires_grad_()
        out = dim_fused.dot_product_mi(loc, glo, estimator=estimator, backend=backend)
        first = torch.autograd.grad(out, (loc, glo), retain_graph=True)
        second = torch.autograd.grad(out, (loc, glo))
        for one, other in zip(first, second, strict=True):
            torch.testing.assert_close(one, other, rtol=0, atol=0)
        grads[keep_bytes] = first
    for recomputed, kept in zip(*grads.values(), strict=True):
        torch.testing.assert_close(kept, recomputed)


def test_scores_are_kept_only_for_a_gradient():
    from dim_fused.ops.dot_product_mi.function import _keep_scores

    local, global_codes = make_codes((4, 9, (3,), 4, 0))
    assert not _keep_scores(local, global_codes)
    assert _keep_scores(local.requires_grad_(), global_codes)
    with torch.no_grad():
        assert not _keep_scores(local, global_codes)


def test_wrong_kept_scores_are_refused(fused):
    backend, device = fused
    if backend == "triton":
        pytest.skip("the Triton backward reads no kept scores")
    local, global_codes = (t.float().to(device) for t in make_codes((3, 5, (4,), 3, 0)))
    _, stats, scores = torch.ops.dim_fused.dot_product_mi(local, global_codes, "jsd", False, 0, TILE, True)
    grad = torch.tensor(1.0, device=device)
    for wrong in (scores[:, :-1], scores.double(), scores.t().contiguous().t()):
        with pytest.raises(ValueError, match="scores must be the forward's kept"):
            torch.ops.dim_fused.dot_product_mi_backward(grad, local, global_codes, stats, "jsd", False, 0, TILE, wrong)


def _statistics_op(backend):
    return getattr(torch.ops.dim_fused, "dot_product_mi_statistics" + ("_triton" if backend == "triton" else ""))


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("tile_scores", [TILE, 1])
def test_statistics_match_the_scores(fused, estimator, tile_scores):
    """What the ranks merge: each global row's totals over these local images (G > B, an
    offset: the rows of other ranks' images have no positive here) and InfoNCE's positives."""
    backend, device = fused
    batch, offset = 4, 3
    local, global_codes = make_codes((batch, 7, (5,), 9, offset), scale=2.0)
    totals, positives = _statistics_op(backend)(
        local.to(device), global_codes.to(device), estimator, offset, tile_scores
    )
    u = reference.dot_product_scores(local, global_codes)  # (G, B, L)
    positive = torch.zeros(u.shape, dtype=torch.bool)
    positive[torch.arange(batch) + offset, torch.arange(batch)] = True
    zero = u.new_zeros(u.shape[0])
    if estimator in F_MEASURES:
        pos_terms = torch.where(positive, positive_term(u, estimator), 0.0).sum((1, 2))
        neg_terms = torch.where(positive, 0.0, negative_term(u, estimator)).sum((1, 2))
        expected = torch.stack([pos_terms, neg_terms, torch.full_like(zero, -torch.inf)], 1)
    else:  # the negatives' logsumexp; DV's Ep is the score, InfoNCE keeps its positives apart
        neg_lse = torch.where(positive, -torch.inf, u).flatten(1).logsumexp(1)
        pos_sum = torch.where(positive, u, 0.0).sum((1, 2)) if estimator == "dv" else zero
        expected = torch.stack([pos_sum, zero, neg_lse], 1)
    torch.testing.assert_close(totals.cpu(), expected)
    want = u[positive].reshape(-1) if estimator == "infonce" else u.new_zeros(0)
    torch.testing.assert_close(positives.cpu(), want)


@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
def test_statistics_opcheck(fused, estimator):
    backend, device = fused
    local, global_codes = make_codes((3, 5, (4,), 7, 2))
    args = (local.float().to(device), global_codes.float().to(device), estimator, 2, TILE)
    torch.library.opcheck(_statistics_op(backend), args)


def test_torch_compile(fused):
    backend, device = fused
    torch._dynamo.reset()
    local, global_codes = make_codes((3, 5, (2, 2), 3, 0))

    def loss(loc, glo):
        return -dim_fused.dot_product_mi(torch.relu(loc), glo * 2.0, estimator="infonce", backend=backend)

    eager, eager_grads = value_and_grads(loss, local, global_codes, dtype=torch.float32, device=device)
    out, grads = value_and_grads(
        torch.compile(loss, fullgraph=True), local, global_codes, dtype=torch.float32, device=device
    )
    torch.testing.assert_close(out, eager)
    for g, eg in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, eg)


@pytest.mark.parametrize("layout", ["contiguous", "channels-last"])
def test_half_precision_scores_reach_the_epilogue_in_float32(fused, layout):
    """bf16 codes, fp32 GEMM output: the forward's per-row logsumexps match those of the
    float64 scores of the same (rounded) codes to fp32 accuracy, far better than scores
    rounded to bf16 would give (relative 4e-3)."""
    backend, device = fused
    if backend == "triton" and device == "cpu":
        pytest.skip("the interpreter has no bf16")
    torch.manual_seed(0)
    local = (torch.randn(6, 64, 4, 4) * 0.3).bfloat16()
    if layout == "channels-last":
        local = local.contiguous(memory_format=torch.channels_last)
    global_codes = (torch.randn(6, 64) * 0.3).bfloat16()
    op = torch.ops.dim_fused.dot_product_mi_triton if backend == "triton" else torch.ops.dim_fused.dot_product_mi
    _, stats, _ = op(local.to(device), global_codes.to(device), "infonce", False, 0, TILE)
    scores = reference.dot_product_scores(local.double(), global_codes.double())  # (G, B, L)
    off_diagonal = ~torch.eye(6, dtype=torch.bool)[:, :, None].expand_as(scores)
    want = torch.logsumexp(scores.masked_fill(~off_diagonal, -float("inf")).flatten(1), dim=1)
    assert stats.dtype == torch.float32
    torch.testing.assert_close(stats[:, 0].double().cpu(), want, rtol=1e-5, atol=1e-5)


def test_channels_last_codes_are_read_in_place(fused):
    """The critic's codes are channels-last: the gradient comes back in that layout (written
    in place, no transposing copy) and equals the contiguous codes' gradient."""
    backend, device = fused
    local, global_codes = make_codes((3, 8, (2, 3), 3, 0))
    channels_last = local.float().contiguous(memory_format=torch.channels_last).to(device).requires_grad_()
    contiguous = local.float().to(device).requires_grad_()
    grads = []
    for codes in (channels_last, contiguous):
        out = dim_fused.dot_product_mi(codes, global_codes.float().to(device), estimator="infonce", backend=backend)
        grads.append(torch.autograd.grad(out, codes)[0])
    assert grads[0].is_contiguous(memory_format=torch.channels_last) and grads[1].is_contiguous()
    torch.testing.assert_close(grads[0], grads[1])


def test_torch_compile_with_channels_last_codes(fused):
    backend, device = fused
    torch._dynamo.reset()
    local, global_codes = make_codes((3, 5, (2, 2), 3, 0))
    local = local.float().contiguous(memory_format=torch.channels_last).to(device).requires_grad_()
    global_codes = global_codes.float().to(device)

    def loss(loc, glo):
        return -dim_fused.dot_product_mi(loc, glo, estimator="jsd", backend=backend)

    eager = torch.autograd.grad(loss(local, global_codes), local)[0]
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(local, global_codes), local)[0]
    torch.testing.assert_close(compiled, eager)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the autotuner's GPU tiles run on a GPU")
@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
def test_every_autotuner_tile_is_correct(estimator):
    """The tests run one tile per dtype (DIM_FUSED_AUTOTUNE=0); here each tile the
    autotuner may pick runs against the oracle, for the dtypes it serves."""
    from dim_fused.ops.common import triton_launch as tiles
    from dim_fused.ops.dot_product_mi import triton_kernels as kernels

    local, global_codes = make_codes((5, 40, (3, 7), 5, 0))
    classes = [(tiles.HALF_TILES, [torch.bfloat16, torch.float16]), (tiles.FMA_TILES, [torch.float32])]
    try:
        for family, dtypes in classes:
            for tile in family:
                for kernel in (kernels._reduce_kernel, kernels._gradient_kernel):
                    kernel.only = [tile]
                for dtype in dtypes:
                    check("triton", "cuda", dtype, estimator, local, global_codes)
    finally:
        for kernel in (kernels._reduce_kernel, kernels._gradient_kernel):
            kernel.only = None


@pytest.mark.parametrize("critic", [False, True], ids=["op", "module"])
def test_autocast_runs_the_op_in_its_dtype(fused, critic):
    """The policy is on the op (like the matmuls autocast lowers): called directly or
    through its module under autocast, it gives what it gives on the codes cast to
    autocast's dtype, and gradients flow back to the float32 leaves."""
    backend, device = fused
    if backend == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter has no bf16")
    local, global_codes = make_codes((3, 6, (5,), 3, 0))
    leaves = [local.float().to(device).requires_grad_(), global_codes.float().to(device).requires_grad_()]
    module = EncodeAndDotCritic(6, 6, units=6).to(device)
    if critic:

        def run(loc, glo):
            return module(loc, glo, estimator="infonce", backend=backend)

        with torch.autocast(device, dtype=torch.bfloat16):
            cast_codes = [c.bfloat16() for c in module.encode(*leaves)]
    else:

        def run(loc, glo):
            return dim_fused.dot_product_mi(loc, glo, estimator="infonce", backend=backend)

        cast_codes = [c.bfloat16() for c in leaves]
    with torch.autocast(device, dtype=torch.bfloat16):
        out = run(*leaves)
    want = dim_fused.dot_product_mi(*cast_codes, estimator="infonce", backend=backend)
    assert out.dtype == torch.bfloat16 and torch.equal(out, want)
    grads = torch.autograd.grad(out, leaves)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_launch_grids_fit_the_gpu_limits():
    """Axis 0 of a CUDA grid takes up to 2^31 - 1 programs, axes 1 and 2 at most 65535: with
    G <= 3 and B * L in the millions, the backward's column blocks exceed 65535."""
    from dim_fused.ops.common import triton_launch as tiles
    from dim_fused.ops.dot_product_mi import triton_kernels as kernels

    for tile in tiles.ALL_TILES:
        for globals_, columns in ((2, 10_000_000), (3, 1 << 23), (4096, 64)):
            grid = kernels.gradient_grid(globals_, columns)(tile.kwargs)
            assert grid[0] < 2**31 and all(axis <= 65535 for axis in grid[1:]), (tile, globals_, columns, grid)
            grid = kernels.reduce_grid(globals_, columns, 132, 2048)(tile.kwargs)
            assert grid[0] < 2**31 and all(axis <= 65535 for axis in grid[1:]), (tile, globals_, columns, grid)


def test_the_forward_fills_the_gpu_without_idle_programs():
    """At the CIFAR size (G = 64, B * L = 4096) on a 132-SM H200, every tile's forward
    launches min(its tiles, two per SM) programs, and no split is without a column block."""
    from dim_fused.ops.common import triton_launch as tiles
    from dim_fused.ops.dot_product_mi import triton_kernels as kernels

    for tile in tiles.ALL_TILES:
        block_m, block_n = tile.kwargs["BLOCK_M"], tile.kwargs["BLOCK_N"]
        row_blocks, splits = kernels.reduce_grid(64, 4096, 132, 2048)(tile.kwargs)
        column_blocks = -(-4096 // block_n)
        assert row_blocks == -(-64 // block_m) and splits <= column_blocks
        assert row_blocks * splits >= min(row_blocks * column_blocks, 2 * 132), tile
