"""dim_fused.mi_bound on every fused backend against the float64 reference."""

import math

import pytest
import torch
from helpers import assert_matches_oracle, value_and_grads

import dim_fused
from dim_fused import ESTIMATORS, reference
from dim_fused.ops.common.estimators import UNBOUNDED

# (pos shape, neg shape for f-measures/dv); infonce uses (K, *pos shape).
SHAPES = [
    ((2, 1), (2, 1)),  # smallest batch, one location
    ((3, 5), (4, 3, 5)),  # K = 4 negatives
    ((7, 13), (91,)),  # unrelated shapes (means over all elements)
    ((130, 131), (130, 131)),  # more than one CPU chunk and many Triton programs
]


def infonce_neg_shape(pos_shape, k=3):
    return (k, *pos_shape)


def make_scores(pos_shape, neg_shape, estimator, scale=2.0):
    if estimator == "infonce":
        neg_shape = infonce_neg_shape(pos_shape)
    return torch.randn(pos_shape, dtype=torch.float64) * scale, torch.randn(neg_shape, dtype=torch.float64) * scale


def dtypes_for(device):
    return [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def check_against_oracle(backend, device, dtype, estimator, pos, neg):
    def fused_fn(p, n):
        return dim_fused.mi_bound(p, n, estimator, backend=backend)

    def ref_fn(p, n):
        return reference.mi_bound(p, n, estimator)

    assert_matches_oracle(
        fused_fn, ref_fn, (pos, neg), dtype=dtype, device=device, names=("pos", "neg"), what=estimator
    )


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: "x".join(map(str, s[0])))
def test_matches_oracle(fused, estimator, shapes):
    backend, device = fused
    pos, neg = make_scores(*shapes, estimator)
    for dtype in dtypes_for(device):
        if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
            continue  # the interpreter has no bf16
        check_against_oracle(backend, device, dtype, estimator, pos, neg)


@pytest.mark.parametrize("estimator", [e for e in ESTIMATORS if e not in UNBOUNDED])
@pytest.mark.parametrize("magnitude", [50.0, 1e4])
def test_extreme_scores_stay_finite(fused, estimator, magnitude):
    """softplus/logsumexp estimators never overflow for finite scores."""
    backend, device = fused
    pos = torch.tensor([[magnitude, -magnitude, 0.5], [-magnitude, magnitude, 3.0]], dtype=torch.float64)
    neg = torch.stack([pos.flip(0), -pos]) if estimator == "infonce" else -pos.flip(1)
    check_against_oracle(backend, device, torch.float32, estimator, pos, neg)
    out, grads = value_and_grads(
        lambda p, n: dim_fused.mi_bound(p, n, estimator, backend=backend), pos, neg, dtype=torch.float32, device=device
    )
    assert torch.isfinite(out) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("estimator", ["jsd", "dv", "infonce", "x2"])
def test_fp16_extremes_accumulate_in_fp32(fused, estimator):
    backend, device = fused
    pos = torch.full((4, 8), 60000.0, dtype=torch.float64) * torch.tensor([1.0, -1.0]).repeat(2)[:, None]
    neg = torch.stack([pos, -pos]) if estimator == "infonce" else -pos
    if estimator == "x2":  # squares overflow fp16 by definition; use moderate scores
        pos, neg = pos / 1e4, neg / 1e4
    check_against_oracle(backend, device, torch.float16, estimator, pos, neg)


@pytest.mark.parametrize("estimator", ["jsd", "kl", "dv", "infonce"])
def test_non_contiguous_inputs(fused, estimator):
    backend, device = fused
    pos = torch.randn(9, 6, dtype=torch.float64).t()  # (6, 9), transposed
    neg = torch.randn(9, 3, 6, dtype=torch.float64).permute(1, 2, 0)  # (3, 6, 9)
    if estimator != "infonce":
        neg = neg[:, ::2]
    assert not pos.is_contiguous() and not neg.is_contiguous()
    check_against_oracle(backend, device, torch.float32, estimator, pos, neg)


def test_unbounded_estimators_overflow_faithfully(fused):
    """kl's exp(t - 1) overflows float32 at t ~ 90: inf, like the reference, not a clamp."""
    backend, device = fused
    pos = torch.zeros(2, 3, device=device)
    neg = torch.full((2, 3), 100.0, device=device)
    assert dim_fused.mi_bound(pos, neg, "kl", backend=backend).item() == -math.inf
    assert reference.mi_bound(pos, neg, "kl").item() == -math.inf


@pytest.mark.parametrize("estimator", ["jsd", "dv", "infonce"])
def test_deterministic(fused, estimator):
    backend, device = fused
    pos, neg = make_scores((130, 131), (130, 131), estimator)
    pos, neg = pos.float().to(device), neg.float().to(device)
    first = dim_fused.mi_bound(pos, neg, estimator, backend=backend)
    assert torch.equal(first, dim_fused.mi_bound(pos, neg, estimator, backend=backend))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gradcheck_float64(fused, estimator):
    backend, device = fused
    pos, neg = make_scores((3, 4), (5, 2), estimator, scale=1.0)
    pos, neg = pos.to(device).requires_grad_(), neg.to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, n: dim_fused.mi_bound(p, n, estimator, backend=backend), (pos, neg))


def _op_for(backend):
    return torch.ops.dim_fused.mi_bound_triton if backend == "triton" else torch.ops.dim_fused.mi_bound


def _backward_op_for(backend):
    return (
        torch.ops.dim_fused.mi_bound_triton_backward if backend == "triton" else torch.ops.dim_fused.mi_bound_backward
    )


@pytest.mark.parametrize("estimator", ["jsd", "x2", "dv", "infonce"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(fused, estimator, requires_grad):
    backend, device = fused
    pos, neg = make_scores((4, 5), (3, 5), estimator)
    pos, neg = (
        pos.float().to(device).requires_grad_(requires_grad),
        neg.float().to(device).requires_grad_(requires_grad),
    )
    torch.library.opcheck(_op_for(backend), (pos, neg, estimator))
    grad = torch.tensor(0.7, device=device)
    _, normaliser = _op_for(backend)(pos.detach(), neg.detach(), estimator)
    for kept in (normaliser, None):  # the forward's normaliser, or none (DV recomputes it)
        torch.library.opcheck(_backward_op_for(backend), (grad, pos.detach(), neg.detach(), kept, estimator))


@pytest.mark.parametrize("estimator", ["jsd", "dv", "infonce"])
def test_the_backward_reads_the_forwards_normaliser(fused, estimator):
    """DV's normaliser (the negatives' logsumexp) comes back from the forward, 0 for the
    other estimators; the backward given it and the backward recomputing it agree."""
    backend, device = fused
    pos, neg = make_scores((4, 5), (3, 4, 5), estimator)
    pos, neg = pos.double().to(device), neg.double().to(device)
    estimate, normaliser = _op_for(backend)(pos, neg, estimator)
    assert normaliser.shape == () and normaliser.dtype == torch.float64
    expected = torch.logsumexp(neg.flatten(), 0) if estimator == "dv" else torch.zeros((), dtype=torch.float64)
    torch.testing.assert_close(normaliser, expected.to(device))
    grad = torch.tensor(0.7, dtype=torch.float64, device=device)
    given = _backward_op_for(backend)(grad, pos, neg, normaliser, estimator)
    recomputed = _backward_op_for(backend)(grad, pos, neg, None, estimator)
    for a, b in zip(given, recomputed, strict=True):
        torch.testing.assert_close(a, b)
    if estimator == "dv":  # the backward does use it: a shifted normaliser scales d neg by e^-1
        shifted = _backward_op_for(backend)(grad, pos, neg, normaliser + 1, estimator)
        torch.testing.assert_close(shifted[1], recomputed[1] / torch.e)


@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
def test_torch_compile(fused, estimator):
    backend, device = fused
    torch._dynamo.reset()
    pos, neg = make_scores((6, 5), (6, 5), estimator)
    pos, neg = pos.float().to(device), neg.float().to(device)

    def loss(p, n):
        return -dim_fused.mi_bound(p.relu() + p, n * 2.0, estimator, backend=backend)

    compiled = torch.compile(loss, fullgraph=True)
    eager_out, eager_grads = value_and_grads(loss, pos, neg, dtype=torch.float32, device=device)
    out, grads = value_and_grads(compiled, pos, neg, dtype=torch.float32, device=device)
    torch.testing.assert_close(out, eager_out)
    for g, eg in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, eg)


def test_auto_picks_compiled_kernel_on_cpu():
    expected = "cpu" if "cpu" in dim_fused.available_backends("cpu") else "reference"
    assert dim_fused.resolve_backend("auto", torch.device("cpu")) == expected
