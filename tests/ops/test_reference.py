"""The reference path itself: gradcheck, and agreement with naive loops over the
definitions and with ports of the official DIM code's loss functions."""

import math

import pytest
import torch

import dim_fused
from dim_fused import ESTIMATORS, F_MEASURES, official, reference
from dim_fused.ops.common.estimators import negative_term, positive_term


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gradcheck(estimator):
    pos = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, n: reference.mi_bound(p, n, estimator), (pos, neg))


def test_estimator_table():
    """Spot values of the estimators table of docs/design.md at t = 0.3."""
    t = torch.tensor(0.3, dtype=torch.float64)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = {
        "jsd": (math.log(2) - sp(-0.3), sp(0.3) - math.log(2)),
        "gan": (-sp(-0.3), sp(0.3)),
        "kl": (0.3, math.exp(0.3 - 1)),
        "rkl": (-math.exp(-0.3), 0.3 - 1),
        "h2": (1 - math.exp(-0.3), math.exp(0.3) - 1),
        "x2": (0.09, -0.5 * 1.3**2),
        "w1": (0.3, 0.3),
    }
    for estimator, (ep, eq) in expected.items():
        assert positive_term(t, estimator).item() == pytest.approx(ep, rel=1e-12)
        assert negative_term(t, estimator).item() == pytest.approx(eq, rel=1e-12)


def test_infonce_and_dv_by_hand():
    pos = torch.tensor([1.0, 2.0], dtype=torch.float64)
    neg = torch.tensor([[0.5, -1.0], [3.0, 0.0]], dtype=torch.float64)  # (K=2, 2)
    by_hand = sum(
        pos[i] - math.log(math.exp(pos[i]) + math.exp(neg[0, i]) + math.exp(neg[1, i])) for i in range(2)
    ) / 2 + math.log(3)
    assert reference.mi_bound(pos, neg, "infonce").item() == pytest.approx(float(by_hand), rel=1e-12)
    dv = 1.5 - math.log(sum(math.exp(x) for x in neg.flatten().tolist()) / 4)
    assert reference.mi_bound(pos, neg, "dv").item() == pytest.approx(dv, rel=1e-12)


def naive_concat_conv_mi(feature_map, global_code, weights, biases, perm, estimator):
    """One (local vector, global code) pair at a time, straight from the definition."""
    batch, channels = feature_map.shape[:2]
    f = feature_map.reshape(batch, channels, -1)
    locations = f.shape[-1]

    def critic(local_vec, global_vec):
        h = torch.cat([local_vec, global_vec])
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = w.reshape(w.shape[0], -1) @ h + (b if b is not None else 0)
            if i < len(weights) - 1:
                h = h.relu()
        return h[0]

    pos = torch.stack(
        [torch.stack([critic(f[b, :, l], global_code[b]) for l in range(locations)]) for b in range(batch)]
    )
    neg = torch.stack(
        [
            torch.stack(
                [
                    torch.stack([critic(f[p[l, b], :, l], global_code[b]) for l in range(locations)])
                    for b in range(batch)
                ]
            )
            for p in perm
        ]
    )
    return reference.mi_bound(pos, neg, estimator)


@pytest.mark.parametrize("estimator", ["jsd", "dv", "infonce"])
@pytest.mark.parametrize("hidden", [(7,), (5, 6)])
def test_concat_conv_matches_naive(estimator, hidden):
    batch, channels, dim = 3, 4, 2
    fm = torch.randn(batch, channels, 2, 3, dtype=torch.float64)
    y = torch.randn(batch, dim, dtype=torch.float64)
    sizes = [channels + dim, *hidden, 1]
    weights = [
        torch.randn(o, i, 1, 1, dtype=torch.float64) / math.sqrt(i) for i, o in zip(sizes, sizes[1:], strict=False)
    ]
    biases = [torch.randn(o, dtype=torch.float64) for o in sizes[1:]]
    biases[0] = None
    perm = dim_fused.location_permutation(batch, 6, num_negatives=2)
    expected = naive_concat_conv_mi(fm, y, weights, biases, perm, estimator)
    got = reference.concat_conv_mi(fm, y, weights, biases, perm, estimator)
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)


def test_concat_conv_detach_negatives_blocks_only_the_shuffled_features():
    fm = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(5, 4, dtype=torch.float64), torch.randn(1, 5, dtype=torch.float64)]
    perm = dim_fused.location_permutation(3, 4)
    grads = {}
    for detach in (False, True):
        out = reference.concat_conv_mi(fm, y, weights, [None, None], perm, "jsd", detach_negatives=detach)
        grads[detach] = torch.autograd.grad(out, (fm, y))
    # feature-map gradient changes; detaching only the features keeps the positive path
    assert not torch.allclose(grads[False][0], grads[True][0])
    pos_only = torch.autograd.grad(
        reference.mi_bound(
            reference.concat_conv_scores(fm.reshape(3, 2, 4), y, weights, [None, None]), torch.zeros(1, 3, 4), "jsd"
        ),
        fm,
    )[0]
    torch.testing.assert_close(grads[True][0], pos_only)


def naive_dot_product_mi(local_codes, global_codes, estimator, offset):
    batch, units = local_codes.shape[:2]
    l = local_codes.reshape(batch, units, -1)
    locations = l.shape[-1]
    u = [
        [[global_codes[i] @ l[j, :, p] for p in range(locations)] for j in range(batch)]
        for i in range(len(global_codes))
    ]
    pos = [u[offset + j][j][p] for j in range(batch) for p in range(locations)]
    neg = [
        u[i][j][p] for i in range(len(global_codes)) for j in range(batch) if i != offset + j for p in range(locations)
    ]
    if estimator in F_MEASURES:
        return reference.mi_bound(torch.stack(pos), torch.stack(neg), estimator)
    if estimator == "dv":
        return reference.mi_bound(torch.stack(pos), torch.stack(neg), "dv")
    total = 0.0
    for i in range(batch):
        negatives = torch.stack([u[i][j][q] for j in range(batch) if j != i for q in range(locations)])
        for p in range(locations):
            total += u[i][i][p] - torch.logsumexp(torch.cat([u[i][i][p].reshape(1), negatives]), 0)
    return total / (batch * locations) + math.log(1 + (batch - 1) * locations)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_dot_product_matches_naive(estimator):
    local = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    global_codes = torch.randn(3, 4, dtype=torch.float64)
    expected = naive_dot_product_mi(local, global_codes, estimator, 0)
    assert reference.dot_product_mi(local, global_codes, estimator).item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("estimator", F_MEASURES)
def test_dot_product_with_more_globals_and_an_offset(estimator):
    local = torch.randn(2, 3, 5, dtype=torch.float64)
    global_codes = torch.randn(5, 3, dtype=torch.float64)
    expected = naive_dot_product_mi(local, global_codes, estimator, 2)
    got = reference.dot_product_mi(local, global_codes, estimator, positive_offset=2)
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("estimator", [*F_MEASURES, "dv", "infonce"])
def test_dot_product_official_mode_is_minus_the_official_loss(estimator):
    local = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    global_codes = torch.randn(4, 6, dtype=torch.float64)
    expected = official.dot_product_mi(local, global_codes, estimator)
    got = reference.dot_product_mi(local, global_codes, estimator, official=True)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-6)
    if estimator == "dv":  # the official normalisation is log L above the default's
        default = reference.dot_product_mi(local, global_codes, "dv")
        assert (default - got).item() == pytest.approx(math.log(9), rel=1e-12)
