"""The negatives of the concat-and-conv critic: a permutation of the batch per
(negative, location), drawn as an index (the shuffle is never a copy in the fused op)."""

import torch

from ..common import checks
from . import reference

DERANGEMENT_ROUNDS = 48


def location_permutation(
    batch: int,
    locations: int,
    *,
    num_negatives: int = 1,
    derangement: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Independent uniformly random permutations of ``range(batch)``, one per (negative,
    location).

    Args:
        batch: B, at least 2.
        locations: L, at least 1.
        num_negatives: K, at least 1.
        derangement: draw each uniformly among the permutations without a fixed point, so
            no image is ever paired with itself (drawn without a host sync off the CPU and
            under torch.compile; see ``_derangements_without_sync``).
        generator: the random source; the same generator state gives the same
            permutations on the same device.
        device: where to draw (default: the generator's device, else the CPU).

    Returns:
        An int64 tensor of shape (K, L, B); row [k, l] is a permutation of range(B).
    """
    checks.batch_size(batch)
    if locations < 1:
        raise ValueError(f"locations must be at least 1, got {locations}")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but device is {device}; use a generator on {device}")

    random = {} if generator is None else {"generator": generator}  # no generator kwarg: compiles with dynamic shapes

    def draw(rows: int) -> torch.Tensor:
        # float64 keys make ties (which would bias argsort) practically impossible.
        return torch.rand(rows, batch, device=device, dtype=torch.float64, **random).argsort(dim=-1)

    perm = draw(num_negatives * locations)
    if derangement:
        exact = device.type == "cpu" and not torch.compiler.is_compiling()
        if exact:
            with checks.host_check():
                perm = _derangements(perm, draw)
        else:
            perm = _derangements_without_sync(perm, draw)
    return perm.reshape(num_negatives, locations, batch)


def _derangements(perm: torch.Tensor, draw) -> torch.Tensor:
    """Rejection sampling: every row is redrawn until it has no fixed point, so each is
    uniform over the derangements. The loop's condition reads the data (a host sync)."""
    identity = torch.arange(perm.shape[1], device=perm.device)
    redraw = (perm == identity).any(dim=-1).nonzero().squeeze(1)
    while redraw.numel() > 0:
        perm[redraw] = draw(redraw.numel())
        redraw = redraw[(perm[redraw] == identity).any(dim=-1)]
    return perm


def _derangements_without_sync(perm: torch.Tensor, draw) -> torch.Tensor:
    """The same rejection sampling in a fixed number of rounds (no host sync on a GPU, no
    data-dependent control flow under torch.compile): each row keeps the first of
    1 + DERANGEMENT_ROUNDS uniform candidates that has no fixed point, a uniform
    derangement. A row where all fail (probability (1 - 1/e)^49 < 2e-10) takes a uniformly
    random single-cycle permutation instead, a derangement though not a uniform one."""
    rows, batch = perm.shape
    identity = torch.arange(batch, device=perm.device)
    accepted = ~(perm == identity).any(dim=-1)
    for _ in range(DERANGEMENT_ROUNDS):
        candidate = draw(rows)
        take = ~accepted & ~(candidate == identity).any(dim=-1)
        perm = torch.where(take[:, None], candidate, perm)
        accepted = accepted | take
    order = draw(rows)  # the cycle order[0] -> order[1] -> ... -> order[0]
    cycle = torch.empty_like(order).scatter_(1, order, order.roll(-1, dims=1))
    return torch.where(accepted[:, None], perm, cycle)


def local_shuffle(
    feature_map: torch.Tensor,
    *,
    perm: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The seed's ``_local_shuffle``: shuffle a map across the batch independently at every
    location, ``out[b, :, l] = feature_map[perm[0, l, b], :, l]``.

    Args:
        feature_map: (B, C, H, W) or (B, C, L).
        perm: (K, L, B) from ``location_permutation`` (its first negative is used);
            without it one is drawn from ``generator``.
        generator: the random source when ``perm`` is not given.

    Returns:
        The shuffled map, shaped like ``feature_map``.
    """
    checks.tensor(feature_map, "feature_map", min_dim=3, max_dim=4)
    batch, locations = feature_map.shape[0], feature_map[0, 0].numel()
    checks.batch_size(batch, "feature_map.shape[0] (the batch)")
    if perm is None:
        perm = location_permutation(batch, locations, generator=generator, device=feature_map.device)
    else:
        check_permutation(perm, None, locations, batch, feature_map.device)
    return reference.local_shuffle(feature_map, perm[0])


def check_permutation(
    perm: object, num_negatives: int | None, locations: int, batch_size: int, device: torch.device
) -> torch.Tensor:
    """A (K, L, B) integer tensor whose every [k, l] row is a permutation of range(B)."""
    if not isinstance(perm, torch.Tensor):
        raise TypeError(f"perm must be a torch.Tensor, got {type(perm).__name__}")
    if perm.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"perm must be an int32 or int64 tensor, got {perm.dtype}")
    k = num_negatives if num_negatives is not None else (perm.shape[0] if perm.dim() == 3 else None)
    if (
        perm.dim() != 3
        or perm.shape[1:] != (locations, batch_size)
        or (num_negatives is not None and perm.shape[0] != num_negatives)
    ):
        raise ValueError(
            f"perm must have shape (num_negatives, locations, batch) = ({k or 'K'}, {locations}, {batch_size}), "
            f"got {tuple(perm.shape)}"
        )
    if perm.device != device:
        raise ValueError(f"perm is on {perm.device} but the feature map is on {device}")
    if torch.compiler.is_compiling() or perm.device.type != "cpu":
        # The content check reads the data: a host sync on a GPU, impossible when tracing.
        # The kernels stay memory-safe without it (an index outside [0, B) gives NaN).
        return perm
    with checks.host_check():
        expected = torch.arange(batch_size, device=perm.device, dtype=perm.dtype)
        valid = torch.equal(perm.sort(dim=-1).values, expected.expand_as(perm))
    if not valid:
        raise ValueError("perm[k, l] must be a permutation of range(batch) for every k and l")
    return perm
