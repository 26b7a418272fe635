"""The registered ops called directly (as torch.compile graphs and other libraries do):
memory safety with a clear error instead of a crash, NaN and Inf that propagate as
the reference's IEEE arithmetic does, double backward refused, dynamic shapes, and
ranks that disagree. Crash candidates run in a subprocess so that a regression fails
its test instead of killing the run."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import CHUNK, TILE, require

import dim_fused
from dim_fused import reference

CASES_PRELUDE = """
import os, traceback, torch
os.environ.setdefault("DIM_FUSED_QUIET", "1")
import dim_fused
ops = torch.ops.dim_fused
results = {}

def case(name, call):
    try:
        call()
    except Exception as error:  # noqa: BLE001
        results[name] = f"{type(error).__name__}: {error}".splitlines()[0]
    else:
        results[name] = "no error"
"""


def run_cases(body: str, triton: bool = False) -> dict[str, str]:
    """Run the cases of `body` in a fresh process; {case: 'ErrorType: message' or 'no error'}."""
    env = {**os.environ, "DIM_FUSED_QUIET": "1"}
    if triton and not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    tunables = f"TILE, CHUNK = {TILE}, {CHUNK}\n"  # what the Python layer passes down
    script = CASES_PRELUDE + tunables + textwrap.dedent(body) + "\nprint(repr(results))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"the process died (rc {result.returncode}):\n{result.stderr[-3000:]}"
    return eval(result.stdout.strip().splitlines()[-1])  # noqa: S307 - our own repr


def needs_cpu_backend():
    if "cpu" not in dim_fused.available_backends("cpu"):
        pytest.skip("needs the compiled cpu backend")


def test_concat_conv_op_refuses_what_would_read_out_of_bounds():
    needs_cpu_backend()
    results = run_cases(
        """
        f, y = torch.randn(4, 3, 5), torch.randn(4, 2)
        w, b = [torch.randn(6, 5), torch.randn(1, 6)], [torch.randn(6), torch.randn(1)]
        good = dim_fused.location_permutation(4, 5)
        case("perm too large", lambda: ops.concat_conv_mi(f, y, w, b, good + 4, "jsd", False, False, CHUNK))
        case("perm negative", lambda: ops.concat_conv_mi(f, y, w, b, good - 1, "jsd", False, False, CHUNK))
        case("perm int32", lambda: ops.concat_conv_mi(f, y, w, b, good.int(), "jsd", False, False, CHUNK))
        no_l, empty = torch.randn(4, 3, 0), torch.zeros(1, 0, 4, dtype=torch.long)
        case("no locations", lambda: ops.concat_conv_mi(no_l, y, w, b, empty, "jsd", False, False, CHUNK))
        compiled = torch.compile(lambda perm: dim_fused.concat_conv_mi(f, y, w, b, perm=perm), fullgraph=True)
        case("compiled, perm too large", lambda: compiled(good + 4))
        _, scores, _ = ops.concat_conv_mi(f, y, w, b, good, "jsd", False, False, CHUNK)
        case("backward, scores broadcast", lambda: ops.concat_conv_mi_backward(
            torch.tensor(1.0), f, y, w, b, good, scores[:, :1], [], "jsd", False, CHUNK))
        case("backward, two-element grad", lambda: ops.concat_conv_mi_backward(
            torch.ones(2), f, y, w, b, good, scores, [], "jsd", False, CHUNK))
        case("backward, wrong activations", lambda: ops.concat_conv_mi_backward(
            torch.tensor(1.0), f, y, w, b, good, scores, [torch.randn(3, 6)], "jsd", False, CHUNK))
        case("backward, positive rows only", lambda: ops.concat_conv_mi_backward(  # B L rows, not (1 + K) B L
            torch.tensor(1.0), f, y, w, b, good, scores, [torch.randn(20, 6)], "jsd", False, CHUNK))
        case("backward, one too many", lambda: ops.concat_conv_mi_backward(  # two for one hidden layer
            torch.tensor(1.0), f, y, w, b, good, scores, [torch.randn(40, 6)] * 2, "jsd", False, CHUNK))
        case("meta feature map", lambda: ops.concat_conv_mi(f.to("meta"), y, w, b, good, "jsd", False, False, CHUNK))
        longs = [t.long() for t in (f, y, *w, *b)]
        case("integer feature map", lambda: ops.concat_conv_mi(
            longs[0], longs[1], longs[2:4], longs[4:], good, "jsd", False, False, CHUNK))
        """
    )
    for name in ("perm too large", "perm negative", "compiled, perm too large"):
        assert "ValueError" in results[name] and "must be in [0, 4)" in results[name], results[name]
    assert "perm must be an int64" in results["perm int32"]
    assert "ValueError" in results["no locations"] and "at least one channel, location" in results["no locations"]
    assert "scores must be the forward's (1 + K, B, L)" in results["backward, scores broadcast"]
    assert "grad must be one element" in results["backward, two-element grad"]
    for name in ("backward, wrong activations", "backward, positive rows only"):
        assert "activations[0] must be the forward's (40, 6)" in results[name], results[name]
    assert "activations must be the forward's (one per hidden layer)" in results["backward, one too many"]
    assert "several devices" in results["meta feature map"], results["meta feature map"]
    assert "float64, float32, bfloat16 or float16" in results["integer feature map"], results["integer feature map"]


def test_dot_product_and_mi_bound_ops_refuse_what_would_read_out_of_bounds():
    needs_cpu_backend()
    results = run_cases(
        """
        l, g = torch.randn(4, 3, 5), torch.randn(4, 3)
        case("offset overflow", lambda: ops.dot_product_mi(l, torch.randn(6, 3), "jsd", False, 2**63 - 1, TILE))
        case("G < B", lambda: ops.dot_product_mi(l, torch.randn(3, 3), "jsd", False, 0, TILE))
        _, stats, kept = ops.dot_product_mi(l, g, "infonce", False, 0, TILE, True)
        one = torch.tensor(1.0)
        case("stats broadcast", lambda: ops.dot_product_mi_backward(one, l, g, stats[:1], "infonce", False, 0, TILE))
        case("stats float64", lambda: ops.dot_product_mi_backward(one, l, g, stats.double(), "infonce", False, 0, TILE))
        args = (one, l, g, stats, "infonce", False, 0, TILE)
        case("scores broadcast", lambda: ops.dot_product_mi_backward(*args, kept[:1].expand(4, 20)))
        case("scores short", lambda: ops.dot_product_mi_backward(*args, torch.zeros(1)))
        case("scores meta", lambda: ops.dot_product_mi_backward(*args, kept.to("meta")))
        case("meta globals", lambda: ops.dot_product_mi(l, g.to("meta"), "jsd", False, 0, TILE))
        case("mi_bound infonce shapes", lambda: ops.mi_bound(torch.randn(1 << 20), torch.randn(200, 1), "infonce"))
        case("mi_bound meta", lambda: ops.mi_bound(torch.randn(3), torch.randn(3, device="meta"), "jsd"))
        ints = torch.ones(3, dtype=torch.long)
        case("mi_bound integer", lambda: ops.mi_bound(ints, ints, "jsd"))
        case("mi_bound backward grad", lambda: ops.mi_bound_backward(torch.ones(3), l[0, 0], l[0, 1], None, "jsd"))
        one, pos = torch.tensor(1.0), torch.randn(5)
        case("mi_bound normaliser", lambda: ops.mi_bound_backward(one, pos, pos, torch.zeros(2), "dv"))
        wide = torch.zeros((), dtype=torch.float64)
        case("mi_bound normaliser dtype", lambda: ops.mi_bound_backward(one, pos, pos, wide, "dv"))
        for kind, dtype in (("integer", torch.long), ("bool", torch.bool), ("complex", torch.cfloat)):
            case(f"dot {kind}", lambda dtype=dtype: ops.dot_product_mi(l.to(dtype), g.to(dtype), "jsd", False, 0, TILE))
        """
    )
    assert "positive_offset must be in [0, G - B] = [0, 2]" in results["offset overflow"]
    assert "ValueError" in results["G < B"]
    assert "stats must be the forward's (G, 2)" in results["stats broadcast"]
    assert "stats must be the forward's (G, 2)" in results["stats float64"]
    for name in ("scores broadcast", "scores short"):
        assert "scores must be the forward's kept (G, B * L) = (4, 20)" in results[name], results[name]
    assert "Error" in results["scores meta"], results["scores meta"]
    assert "several devices" in results["meta globals"]
    assert "infonce needs neg_scores of shape" in results["mi_bound infonce shapes"]
    assert "several devices" in results["mi_bound meta"]
    for name in ("mi_bound integer", "dot integer", "dot bool", "dot complex"):
        assert "ValueError" in results[name] and "float64, float32, bfloat16 or float16" in results[name], results[name]
    assert "grad must be one" in results["mi_bound backward grad"]
    for name in ("mi_bound normaliser", "mi_bound normaliser dtype"):
        assert "normaliser (the forward's second output) must be one Float element" in results[name], results[name]


def test_triton_ops_check_what_the_cpp_ops_check():
    needs_cpu_backend()
    results = run_cases(
        """
        # The GPU's tensors where there is one (Triton launches only there, without the interpreter).
        torch.set_default_device("cuda" if torch.cuda.is_available() else "cpu")
        l, g = torch.randn(4, 3, 5), torch.randn(4, 3)
        case("mi_bound shapes", lambda: ops.mi_bound_triton(torch.randn(1 << 20), torch.randn(200, 1), "infonce"))
        case("mi_bound backward shapes", lambda: ops.mi_bound_triton_backward(
            torch.tensor(1.0), torch.randn(1000), torch.randn(4, 1), None, "infonce"))
        case("mi_bound normaliser", lambda: ops.mi_bound_triton_backward(
            torch.tensor(1.0), torch.randn(5), torch.randn(5), torch.zeros(3), "dv"))
        case("G < B", lambda: ops.dot_product_mi_triton(l, torch.randn(3, 3), "jsd", False, 0, TILE))
        case("offset", lambda: ops.dot_product_mi_triton(l, torch.randn(6, 3), "jsd", False, 3, TILE))
        case("B = 1", lambda: ops.dot_product_mi_triton(l[:1], g[:1], "jsd", False, 0, TILE))
        case("L = 0", lambda: ops.dot_product_mi_triton(torch.randn(4, 3, 0), g, "jsd", False, 0, TILE))
        case("E differs", lambda: ops.dot_product_mi_triton(l, torch.randn(4, 2), "jsd", False, 0, TILE))
        _, stats, _ = ops.dot_product_mi_triton(l, g, "infonce", False, 0, TILE)
        case("stats broadcast", lambda: ops.dot_product_mi_triton_backward(
            torch.tensor(1.0), l, g, stats[:1], "infonce", False, 0, TILE))
        """,
        triton=True,
    )
    assert "infonce needs neg_scores of shape" in results["mi_bound shapes"]
    assert "infonce needs neg_scores of shape" in results["mi_bound backward shapes"]
    assert "normaliser (the forward's second output) must be one" in results["mi_bound normaliser"]
    for name in ("G < B", "offset", "B = 1", "L = 0", "E differs", "stats broadcast"):
        assert results[name].startswith("ValueError"), (name, results[name])


def test_a_perm_that_repeats_indices_is_computed_as_given(fused):
    """In range but not a permutation (the Python check is skipped under torch.compile and
    on GPUs): the kernels compute the critic on exactly that index map, like the
    reference's gather, and their scatters add repeated rows correctly."""
    backend, device = fused
    torch.manual_seed(0)
    f, y = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    sizes = (5, 6, 4, 1)  # two hidden layers: what the fused Triton kernels take
    w = [torch.randn(o, i, dtype=torch.float64) for i, o in zip(sizes, sizes[1:], strict=False)]
    b = [torch.randn(o, dtype=torch.float64) for o in sizes[1:]]
    repeated = torch.zeros(2, 5, 4, dtype=torch.long)  # every negative reads image 0
    inputs = [x.to(device).requires_grad_() for x in (f, y, *w, *b)]
    op = torch.ops.dim_fused.concat_conv_mi_triton if backend == "triton" else torch.ops.dim_fused.concat_conv_mi
    out = op(inputs[0], inputs[1], inputs[2:5], inputs[5:8], repeated.to(device), "jsd", False, False, CHUNK)[0]
    grads = torch.autograd.grad(out, inputs)
    leaves = [x.detach().requires_grad_() for x in (f, y, *w, *b)]
    want = reference.concat_conv_mi(leaves[0], leaves[1], leaves[2:5], leaves[5:8], repeated, "jsd")
    want_grads = torch.autograd.grad(want, leaves)
    torch.testing.assert_close(out.cpu(), want)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got.cpu(), expected)


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_nan_in_the_feature_map_is_nan_out(backend):
    if backend != "reference":
        require(backend, "cpu")
    torch.manual_seed(0)
    f, y = torch.relu(torch.randn(4, 3, 2, 2)), torch.rand(4, 2)
    f[1, 2, 0, 1] = float("nan")
    critic = dim_fused.nn.ConcatConvDiscriminator(3, 2, hidden=(8, 8))
    assert torch.isnan(critic(f, y, backend=backend))
    if backend == "triton":
        return  # bf16 below: the Triton interpreter's bf16 dots are garbage (on a GPU this runs in the kernel tests)
    big = dim_fused.nn.ConcatConvDiscriminator(3, 2, hidden=(512, 512))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isnan(big(f, y, backend=backend))


def _inf_cases():
    """(name, pos, neg) with scores at +-inf; infonce negatives are (K, *pos.shape)."""
    pos = torch.randn(3, 4, dtype=torch.float64)
    neg = torch.randn(3, 4, dtype=torch.float64)
    minus_neg, plus_neg, minus_pos = neg.clone(), neg.clone(), pos.clone()
    minus_neg[0, 1] = -float("inf")  # a masked negative
    plus_neg[2, 3] = float("inf")
    minus_pos[1, 0] = -float("inf")
    return [
        ("-inf negative", pos, minus_neg),
        ("+inf negative", pos, plus_neg),
        ("-inf positive", minus_pos, neg),
        ("all -inf negatives", pos, torch.full_like(neg, -float("inf"))),
    ]


@pytest.mark.parametrize("estimator", ["dv", "infonce", "jsd"])
@pytest.mark.parametrize(("name", "pos", "neg"), _inf_cases(), ids=[c[0] for c in _inf_cases()])
def test_infinite_scores_follow_the_reference(fused, estimator, name, pos, neg):
    backend, device = fused
    if estimator == "infonce":
        neg = neg[None]
    want = reference.mi_bound(pos.float(), neg.float(), estimator)
    got = dim_fused.mi_bound(pos.float().to(device), neg.float().to(device), estimator, backend=backend)
    torch.testing.assert_close(got.cpu(), want, equal_nan=True)
    if name == "-inf negative" and estimator == "dv":
        assert torch.isfinite(got)  # masked scores: a finite bound
    if name in ("+inf negative", "-inf positive") and estimator in ("dv", "infonce"):
        assert got.item() == -float("inf")


@pytest.mark.parametrize("estimator", ["dv", "infonce", "jsd"])
@pytest.mark.parametrize("value", [-float("inf"), float("inf")])
def test_infinite_codes_follow_the_reference_in_dot_product_mi(fused, estimator, value):
    backend, device = fused
    torch.manual_seed(0)
    local, global_codes = torch.randn(3, 2, 4), torch.rand(3, 2) + 0.5  # positive globals: no 0 * inf
    local[1, 0, 2] = value  # one location of image 1: +-inf against every global
    want = reference.dot_product_mi(local, global_codes, estimator)
    got = dim_fused.dot_product_mi(local.to(device), global_codes.to(device), estimator=estimator, backend=backend)
    torch.testing.assert_close(got.cpu(), want, equal_nan=True)


def test_double_backward_is_refused(fused):
    backend, device = fused
    pos = torch.randn(3, 4, device=device, requires_grad=True)
    neg = torch.randn(3, 4, device=device)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(dim_fused.mi_bound(pos, neg, "jsd", backend=backend), pos, create_graph=True)
    local, global_codes = torch.randn(3, 2, 4, device=device, requires_grad=True), torch.randn(3, 2, device=device)
    with pytest.raises(RuntimeError, match="double backward"):
        out = dim_fused.dot_product_mi(local, global_codes, backend=backend)
        torch.autograd.grad(out, local, create_graph=True)
    critic = dim_fused.nn.ConcatConvDiscriminator(2, 2, hidden=(4,)).to(device)
    fmap = torch.randn(3, 2, 4, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(critic(fmap, torch.randn(3, 2, device=device), backend=backend), fmap, create_graph=True)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_concat_conv_without_perm_compiles_for_changing_batch_sizes(backend):
    if backend != "reference":
        require(backend, "cpu")
    torch._dynamo.reset()
    torch.manual_seed(0)
    weights, biases = [torch.randn(8, 5), torch.randn(1, 8)], [torch.randn(8), torch.randn(1)]
    compiled = torch.compile(
        lambda f, y: dim_fused.concat_conv_mi(f, y, weights, biases, backend=backend), fullgraph=True
    )
    for batch in (4, 6, 8, 5):
        assert torch.isfinite(compiled(torch.randn(batch, 3, 4), torch.randn(batch, 2)))


def _disagreeing_rank(rank: int, init_file: str, results) -> None:
    os.environ.setdefault("DIM_FUSED_QUIET", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rows = 3 if rank == 0 else 4  # the ranks disagree on rows
        try:
            dim_fused.distributed.gather_with_grad(torch.randn(rows, 5))
            results[rank] = "no error"
        except ValueError as error:
            results[rank] = str(error)
        dtype = torch.float32 if rank == 0 else torch.float64
        try:
            dim_fused.distributed.gather_with_grad(torch.randn(3, 5, dtype=dtype))
        except ValueError as error:
            results[rank] += " | " + str(error)
    finally:
        dist.destroy_process_group()


def test_ranks_that_disagree_get_a_clear_error_on_every_rank(tmp_path):
    with mp.get_context("spawn").Manager() as manager:
        results = manager.dict()
        mp.spawn(_disagreeing_rank, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
        per_rank = [results[r] for r in range(2)]
    for message in per_rank:
        assert "rank 0: (3, 5) float32, rank 1: (4, 5) float32" in message
        assert "rank 0: (3, 5) float32, rank 1: (3, 5) float64" in message
