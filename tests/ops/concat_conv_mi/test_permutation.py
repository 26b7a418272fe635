"""location_permutation and local_shuffle."""

import itertools

import pytest
import torch
from helpers import DEVICES
from scipy.stats import chisquare

import dim_fused


def seeded(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("derangement", [False, True])
def test_every_row_is_a_permutation(device, derangement):
    perm = dim_fused.location_permutation(5, 7, num_negatives=3, derangement=derangement, device=device)
    assert perm.shape == (3, 7, 5) and perm.dtype == torch.int64 and perm.device.type == device
    assert torch.equal(perm.sort(dim=-1).values, torch.arange(5, device=device).expand(3, 7, 5))
    if derangement:
        assert not (perm == torch.arange(5, device=device)).any()


def test_reproducible_with_a_seeded_generator():
    first = dim_fused.location_permutation(6, 4, num_negatives=2, generator=seeded(3))
    again = dim_fused.location_permutation(6, 4, num_negatives=2, generator=seeded(3))
    other = dim_fused.location_permutation(6, 4, num_negatives=2, generator=seeded(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    deranged = dim_fused.location_permutation(6, 4, derangement=True, generator=seeded(3))
    assert torch.equal(deranged, dim_fused.location_permutation(6, 4, derangement=True, generator=seeded(3)))


def test_rows_are_independent():
    perm = dim_fused.location_permutation(8, 64, num_negatives=4, generator=seeded(0))
    rows = perm.reshape(-1, 8)
    assert len({tuple(r.tolist()) for r in rows}) > 0.95 * len(rows)  # 8! = 40320 possibilities


def _chi_square_p(perms: torch.Tensor, support: list[tuple[int, ...]]) -> float:
    index = {p: i for i, p in enumerate(support)}
    counts = torch.zeros(len(support))
    for row in perms.reshape(-1, perms.shape[-1]).tolist():
        counts[index[tuple(row)]] += 1  # a KeyError would mean a row outside the support
    return chisquare(counts.numpy()).pvalue


def test_uniform_over_permutations():
    perms = dim_fused.location_permutation(3, 3000, num_negatives=2, generator=seeded(11))
    assert _chi_square_p(perms, list(itertools.permutations(range(3)))) > 1e-3


def test_derangement_uniform_over_derangements():
    support = [p for p in itertools.permutations(range(4)) if all(p[i] != i for i in range(4))]
    assert len(support) == 9
    perms = dim_fused.location_permutation(4, 4500, derangement=True, generator=seeded(12))
    assert _chi_square_p(perms, support) > 1e-3


def test_derangement_without_a_host_sync_is_uniform_too(monkeypatch):
    """Off the CPU (and under torch.compile) derangements come from a fixed number of
    candidate rounds; forced on here, they are still uniform over the derangements."""
    from dim_fused.ops.concat_conv_mi import permutation as functional

    monkeypatch.setattr(functional, "_derangements", functional._derangements_without_sync)
    support = [p for p in itertools.permutations(range(4)) if all(p[i] != i for i in range(4))]
    perms = dim_fused.location_permutation(4, 4500, derangement=True, generator=seeded(13))
    assert _chi_square_p(perms, support) > 1e-3
    # A row that no round accepts falls back to a single cycle: still no fixed point.
    monkeypatch.setattr(functional, "DERANGEMENT_ROUNDS", 0)
    fallback = dim_fused.location_permutation(6, 500, derangement=True, generator=seeded(14))
    assert not (fallback == torch.arange(6)).any()
    assert torch.equal(fallback.sort(dim=-1).values, torch.arange(6).expand_as(fallback))


def test_derangement_of_two_is_the_swap():
    perm = dim_fused.location_permutation(2, 5, derangement=True, generator=seeded(1))
    assert torch.equal(perm, torch.tensor([1, 0]).expand(1, 5, 2))


def seed_local_shuffle(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """A line-by-line port of the seed's TensorFlow `_local_shuffle` on a (B, L, C)
    tensor, with `idx` standing in for argsort(random_uniform([B, L]), axis 0)."""
    d0, d1, d2 = x.shape
    idx = idx.reshape(-1)
    adx = torch.arange(d1).repeat(d0)  # tf.tile(range(d1), [d0])
    return x[idx, adx].reshape(d0, d1, d2)  # gather_nd(x, stack([idx, adx], 1))


@pytest.mark.parametrize("shape", [(4, 3, 5), (5, 2, 3, 4)])
def test_local_shuffle_matches_the_seed(shape):
    x = torch.randn(shape)
    batch, channels, locations = shape[0], shape[1], x[0, 0].numel()
    perm = dim_fused.location_permutation(batch, locations, generator=seeded(5))
    out = dim_fused.local_shuffle(x, perm=perm)
    assert out.shape == x.shape
    # The seed's argsort index at (b, l) names the source image of output (b, l).
    seed_out = seed_local_shuffle(x.reshape(batch, channels, -1).transpose(1, 2), perm[0].t())
    torch.testing.assert_close(out.reshape(batch, channels, -1), seed_out.transpose(1, 2), rtol=0, atol=0)
    for b, l in itertools.product(range(batch), range(locations)):
        assert torch.equal(
            out.reshape(batch, channels, -1)[b, :, l], x.reshape(batch, channels, -1)[perm[0, l, b], :, l]
        )


def test_local_shuffle_draws_from_generator():
    x = torch.randn(6, 2, 3, 3)
    a = dim_fused.local_shuffle(x, generator=seeded(9))
    b = dim_fused.local_shuffle(x, perm=dim_fused.location_permutation(6, 9, generator=seeded(9)))
    assert torch.equal(a, b)
    # A per-location shuffle across the batch keeps each location's multiset of vectors.
    torch.testing.assert_close(a.sum(0), x.sum(0))


def test_local_shuffle_is_differentiable():
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    perm = dim_fused.location_permutation(3, 4, generator=seeded(2))
    assert torch.autograd.gradcheck(lambda t: dim_fused.local_shuffle(t, perm=perm), (x,))
