"""dim_fused.concat_conv_mi on every fused backend against the float64 reference."""

import pytest
import torch
from helpers import CHUNK, assert_matches_oracle, require

import dim_fused
from dim_fused import ESTIMATORS, reference
from dim_fused.nn import ConcatConvDiscriminator
from dim_fused.ops.concat_conv_mi.function import keep_activations

# (B, C, spatial, D, hidden, K, biases): odd sizes, 1 to 3 hidden layers, layers without bias.
# Two hidden layers are what the fused Triton kernels cover; the others run the C++ plan.
SHAPES = {
    "B2-L1-C3-D1": (2, 3, (1,), 1, (5,), 1, "all"),
    "B3-4x2x3-K4": (3, 4, (2, 3), 2, (7, 6), 4, "all"),
    "B3-wide-K2": (3, 5, (3, 7), 3, (40, 70), 2, "all"),  # widths and rows across tile edges
    "B2-L1-2hidden-K1": (2, 3, (1,), 2, (17, 9), 1, "last-none"),
    "B5-3hidden-K2": (5, 6, (9,), 3, (5, 7, 6), 2, "first-none"),
}


def make_problem(batch, channels, spatial, dim, hidden, num_negatives, bias_pattern, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(shape, generator=generator, dtype=torch.float64) * scale

    feature_map = randn(batch, channels, *spatial)
    global_code = randn(batch, dim)
    sizes = [channels + dim, *hidden, 1]
    weights = [randn(o, i, 1, 1, scale=i**-0.5) for i, o in zip(sizes, sizes[1:], strict=False)]
    biases = [randn(o, scale=0.1) for o in sizes[1:]]
    if bias_pattern == "first-none":
        biases[0] = None
    if bias_pattern == "last-none":
        biases[-2:] = [None, None]
    perm = dim_fused.location_permutation(
        batch, feature_map[0, 0].numel(), num_negatives=num_negatives, generator=generator
    )
    return feature_map, global_code, weights, biases, perm


def as_inputs(feature_map, global_code, weights, biases):
    """Flat differentiable inputs and a function rebuilding (weights, biases) from them."""
    present = [b is not None for b in biases]
    inputs = (feature_map, global_code, *weights, *[b for b in biases if b is not None])

    def unpack(params):
        weights_, rest = list(params[: len(weights)]), iter(params[len(weights) :])
        return weights_, [next(rest) if has else None for has in present]

    return inputs, unpack


def check(backend, device, dtype, estimator, problem, detach_negatives=False):
    feature_map, global_code, weights, biases, perm = problem
    inputs, unpack = as_inputs(feature_map, global_code, weights, biases)

    def fused(fmap, code, *params):
        ws, bs = unpack(params)
        return dim_fused.concat_conv_mi(
            fmap,
            code,
            ws,
            bs,
            estimator=estimator,
            perm=perm.to(device),
            detach_negatives=detach_negatives,
            backend=backend,
        )

    def ref(fmap, code, *params):
        ws, bs = unpack(params)
        return reference.concat_conv_mi(fmap, code, ws, bs, perm.to(fmap.device), estimator, detach_negatives)

    names = ("feature_map", "global_code", *[f"param{i}" for i in range(len(inputs) - 2)])
    assert_matches_oracle(fused, ref, inputs, dtype=dtype, device=device, names=names, what=estimator)


def dtypes_for(backend, device):
    if backend == "triton" and device == "cpu":
        return [torch.float64, torch.float32]  # the interpreter has no 16-bit dots
    return [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_matches_oracle(fused, estimator, shape):
    backend, device = fused
    problem = make_problem(*SHAPES[shape])
    for dtype in dtypes_for(backend, device):
        if estimator == "x2" and dtype in (torch.float16, torch.bfloat16):
            # x2's negative term has a kink at 0: a score within 16-bit rounding of 0 flips the
            # sign of its derivative, so two 16-bit computations differ there by O(1 / n).
            continue
        check(backend, device, dtype, estimator, problem)


@pytest.mark.parametrize("estimator", ["jsd", "dv", "infonce"])
def test_many_chunks(fused, estimator, monkeypatch):
    """One image per chunk: scores and gradients assembled across chunks."""
    monkeypatch.setenv("DIM_FUSED_CHUNK_VALUES", "1")
    backend, device = fused
    check(backend, device, torch.float32, estimator, make_problem(4, 3, (5,), 2, (6, 4), 3, "all"))


@pytest.mark.parametrize("keep", ["kept", "recomputed"])
def test_uneven_chunks(fused, keep, monkeypatch):
    """Chunks of 2 images over 5: the last one shorter than the per-call chunk buffers it
    writes its rows into; with the activations kept and recomputed."""
    widest, locations = 6, 5
    monkeypatch.setenv("DIM_FUSED_CHUNK_VALUES", str(2 * widest * locations))
    monkeypatch.setenv("DIM_FUSED_KEEP_BYTES", "256MiB" if keep == "kept" else "0")
    backend, device = fused
    problem = make_problem(5, 3, (locations,), 2, (widest, 4), 2, "all")
    for dtype in [d for d in dtypes_for(backend, device) if d in (torch.float32, torch.bfloat16)]:
        check(backend, device, dtype, "jsd", problem)


@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
def test_detach_negatives(fused, estimator):
    backend, device = fused
    check(backend, device, torch.float64, estimator, make_problem(3, 4, (4,), 2, (5, 3), 2, "all"), True)


def test_generator_draws_the_permutation_location_permutation_gives(fused):
    backend, device = fused
    fmap, code, weights, biases, _ = make_problem(4, 3, (6,), 2, (5,), 1, "all")
    fmap, code = fmap.to(device), code.to(device)
    weights, biases = [w.to(device) for w in weights], [b.to(device) for b in biases]
    for derangement in (False, True):
        kwargs = {"num_negatives": 3, "derangement": derangement}
        drawn = dim_fused.concat_conv_mi(
            fmap, code, weights, biases, generator=torch.Generator(device).manual_seed(7), backend=backend, **kwargs
        )
        perm = dim_fused.location_permutation(
            4, 6, generator=torch.Generator(device).manual_seed(7), device=device, **kwargs
        )
        explicit = dim_fused.concat_conv_mi(fmap, code, weights, biases, perm=perm, backend=backend)
        torch.testing.assert_close(drawn, explicit)
        if derangement:
            assert not (perm == torch.arange(4, device=device)).any()


def test_non_contiguous_and_channels_last(fused):
    backend, device = fused
    fmap, code, weights, biases, perm = make_problem(3, 4, (2, 3), 2, (5,), 2, "all")
    channels_last = fmap.contiguous(memory_format=torch.channels_last)
    transposed_code = code.t().contiguous().t()
    assert not channels_last.is_contiguous() and not transposed_code.is_contiguous()
    check(backend, device, torch.float32, "jsd", (channels_last, transposed_code, weights, biases, perm))


@pytest.mark.parametrize("estimator", ["jsd", "dv", "infonce"])
@pytest.mark.parametrize("hidden", [(4,), (4, 3)], ids=["1hidden", "2hidden"])
def test_gradcheck_float64(fused, estimator, hidden):
    backend, device = fused
    fmap, code, weights, biases, perm = make_problem(3, 2, (3,), 2, hidden, 2, "all")
    inputs, unpack = as_inputs(fmap, code, weights, biases)
    inputs = tuple(x.to(device).requires_grad_() for x in inputs)

    def fn(fmap_, code_, *params):
        ws, bs = unpack(params)
        return dim_fused.concat_conv_mi(
            fmap_, code_, ws, bs, estimator=estimator, perm=perm.to(device), backend=backend
        )

    assert torch.autograd.gradcheck(fn, inputs)


def _ops_for(backend):
    if backend == "triton":
        return torch.ops.dim_fused.concat_conv_mi_triton, torch.ops.dim_fused.concat_conv_mi_triton_backward
    return torch.ops.dim_fused.concat_conv_mi, torch.ops.dim_fused.concat_conv_mi_backward


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("keep", [False, True], ids=["recompute", "keep-activations"])
def test_opcheck(fused, requires_grad, keep):
    backend, device = fused
    fmap, code, weights, biases, perm = make_problem(3, 2, (4,), 2, (5, 3), 2, "first-none")
    fmap, code = fmap.float().to(device), code.float().to(device)
    weights = [w.float().reshape(w.shape[0], -1).to(device).requires_grad_(requires_grad) for w in weights]
    biases = [b.float().to(device) if b is not None else fmap.new_empty(0) for b in biases]  # empty: no bias
    op, backward_op = _ops_for(backend)
    keep = keep and backend != "triton"  # the fused kernels keep P, Q and the bound's normaliser instead
    args = (fmap.requires_grad_(requires_grad), code, weights, biases, perm.to(device), "jsd", False, keep, CHUNK)
    torch.library.opcheck(op, args)
    detached = [w.detach() for w in weights]
    with torch.no_grad():
        _, scores, activations = op(fmap, code, detached, biases, perm.to(device), "jsd", False, keep, CHUNK)
    assert len(activations) == (3 if backend == "triton" else 2 if keep else 0)  # C++: layers 1 and 2
    one = torch.tensor(0.5, device=device)
    backward_args = (
        one,
        fmap.detach(),
        code,
        detached,
        biases,
        perm.to(device),
        scores,
        activations,
        "jsd",
        False,
        CHUNK,
    )
    torch.library.opcheck(backward_op, backward_args)


@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
def test_kept_activations_give_the_recomputed_gradients(estimator, monkeypatch):
    """The C++ plan keeps every hidden layer's activations when they fit the memory budget
    (DIM_FUSED_KEEP_BYTES) and recomputes them otherwise: same gradients."""
    require("cpu", "cpu")
    problem = make_problem(4, 3, (5,), 2, (9, 7, 6), 3, "all")
    results = []
    for budget in ("0", str(1 << 30)):
        monkeypatch.setenv("DIM_FUSED_KEEP_BYTES", budget)
        check("cpu", "cpu", torch.float64, estimator, problem)
        fmap, code, weights, biases, perm = problem
        inputs = [x.requires_grad_() for x in (fmap.clone(), code.clone(), *[w.clone() for w in weights])]
        out = dim_fused.concat_conv_mi(inputs[0], inputs[1], inputs[2:], biases, perm=perm, estimator=estimator)
        results.append(torch.autograd.grad(out, inputs))
    assert keep_activations(fmap, weights, perm)
    for recomputed, kept in zip(*results, strict=True):
        torch.testing.assert_close(kept, recomputed, rtol=0, atol=0)


def test_torch_compile_of_a_module(fused):
    backend, device = fused
    torch._dynamo.reset()
    torch.manual_seed(0)
    critic = ConcatConvDiscriminator(4, 3, hidden=(8, 5)).to(device)
    fmap, code = torch.randn(3, 4, 2, 2, device=device), torch.randn(3, 3, device=device)
    perm = dim_fused.location_permutation(3, 4, num_negatives=2, device=device)

    def loss(module, x, y):
        return -module(torch.relu(x), y, perm=perm, estimator="infonce", backend=backend)

    eager = loss(critic, fmap, code)
    eager_grads = torch.autograd.grad(eager, list(critic.parameters()))
    compiled = torch.compile(loss, fullgraph=True)(critic, fmap, code)
    grads = torch.autograd.grad(compiled, list(critic.parameters()))
    torch.testing.assert_close(compiled, eager)
    for g, eg in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, eg)


def test_module_is_state_dict_compatible_with_a_conv_sequential():
    torch.manual_seed(0)
    sequential = torch.nn.Sequential(
        torch.nn.Conv2d(6, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1)
    )
    critic = ConcatConvDiscriminator(4, 2, hidden=(8, 4))
    critic.load_state_dict(sequential.state_dict())
    assert list(critic.state_dict()) == list(sequential.state_dict())
    fmap, code = torch.randn(3, 4, 2, 2), torch.randn(3, 2)
    perm = dim_fused.location_permutation(3, 4)
    # The seed's formulation with the sequential itself: tile, concat, convolve.
    tiled = code[:, :, None, None].expand(3, 2, 2, 2)
    pos = sequential(torch.cat([fmap, tiled], 1)).flatten(1)
    shuffled = dim_fused.local_shuffle(fmap, perm=perm)
    neg = sequential(torch.cat([shuffled, tiled], 1)).flatten(1)
    expected = dim_fused.mi_bound(pos, neg[None], "jsd", backend="reference")
    torch.testing.assert_close(critic(fmap, code, perm=perm, estimator="jsd"), expected)


def test_deterministic(fused):
    """Two runs give bit-identical values and gradients (no float atomics that race: the
    scatter through a permutation writes each row once per launch)."""
    backend, device = fused
    fmap, code, weights, biases, perm = make_problem(4, 5, (6,), 3, (40, 36), 3, "all")
    inputs = [x.float().to(device).requires_grad_() for x in (fmap, code, *weights, *biases)]
    runs = []
    for _ in range(2):
        out = dim_fused.concat_conv_mi(
            inputs[0], inputs[1], inputs[2:5], inputs[5:], perm=perm.to(device), estimator="infonce", backend=backend
        )
        runs.append([out, *torch.autograd.grad(out, inputs)])
    for first, second in zip(*runs, strict=True):
        assert torch.equal(first, second)


def test_triton_says_what_runs_for_other_depths():
    """The fused Triton kernels cover two hidden layers; for other depths backend='triton'
    runs the C++ plan on the device: resolve_backend reports it and warns once, and the
    Triton op itself refuses another depth."""
    require("triton", "cpu")
    from dim_fused.ops.common import dispatch

    device = torch.device("cpu")
    assert dim_fused.resolve_backend("triton", device, "concat_conv_mi", layers=3) == "triton"
    dispatch._warn_once.cache_clear()
    with pytest.warns(UserWarning, match=r"fuses critics of 3 layers .* this one has 4, so the C\+\+ plan runs"):
        assert dim_fused.resolve_backend("triton", device, "concat_conv_mi", layers=4) == "cpu"
    assert dim_fused.resolve_backend("auto", device, "concat_conv_mi", layers=4) == "cpu"
    fmap, code, weights, biases, perm = make_problem(3, 2, (4,), 2, (5,), 1, "all")
    biases = [b.float() for b in biases]
    with pytest.raises(ValueError, match="the fused kernels take 3 layers"):
        torch.ops.dim_fused.concat_conv_mi_triton(
            fmap.float(),
            code.float(),
            [w.float().flatten(1) for w in weights],
            biases,
            perm,
            "jsd",
            False,
            False,
            CHUNK,
        )
