"""The public ops: validate, then dispatch to the chosen backend."""

from collections.abc import Sequence

import torch

from . import _dispatch, _validate, reference
from .estimators import check_estimator


def mi_bound(
    pos_scores: torch.Tensor,
    neg_scores: torch.Tensor,
    estimator: str = "jsd",
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Mutual-information lower bound (higher = more MI) from critic scores.

    For the f-measures (jsd, gan, kl, rkl, h2, x2, w1) and dv, ``pos_scores`` and
    ``neg_scores`` may have any shapes: the estimate averages over all elements.
    For infonce, ``neg_scores`` has shape ``(K, *pos_scores.shape)`` and every
    positive is contrasted with its K aligned negatives:
    ``mean(pos - logsumexp([pos, neg_1..K])) + log(K + 1)``.

    Returns a 0-dim tensor of the scores' dtype, accumulated in float32 (float64
    for float64 scores). kl, rkl, h2 and x2 contain exp or square terms that
    overflow by definition for large scores; they are computed faithfully.
    """
    _validate.scores(pos_scores, neg_scores, estimator)
    return _dispatch.kernel("mi_bound", backend, pos_scores.device)(pos_scores, neg_scores, estimator)


def location_permutation(
    batch: int,
    locations: int,
    *,
    num_negatives: int = 1,
    derangement: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Independent uniformly random permutations of range(batch), one per
    (negative, location): a LongTensor of shape (num_negatives, locations, batch).

    With ``derangement=True`` each is uniform over the permutations without a fixed
    point, so no image is ever paired with itself (drawn without a host sync off the
    CPU and under torch.compile; see ``_derangements_without_sync``). The same generator
    state gives the same permutations on the same device.
    """
    _validate.batch_size(batch)
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
        perm = _derangements(perm, draw) if exact else _derangements_without_sync(perm, draw)
    return perm.reshape(num_negatives, locations, batch)


DERANGEMENT_ROUNDS = 48


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
    """The seed's ``_local_shuffle``: shuffle a (B, C, H, W) or (B, C, L) map across
    the batch independently at every location, ``out[b, :, l] = x[perm[0, l, b], :, l]``.
    Without ``perm``, one is drawn with ``location_permutation`` from ``generator``."""
    _validate.tensor(feature_map, "feature_map", min_dim=3, max_dim=4)
    batch, locations = feature_map.shape[0], feature_map[0, 0].numel()
    _validate.batch_size(batch, "feature_map.shape[0] (the batch)")
    if perm is None:
        perm = location_permutation(batch, locations, generator=generator, device=feature_map.device)
    else:
        _validate.permutation(perm, None, locations, batch, feature_map.device)
    return reference.local_shuffle(feature_map, perm[0])


def dot_product_mi(
    local_codes: torch.Tensor,
    global_codes: torch.Tensor,
    *,
    estimator: str = "jsd",
    official: bool = False,
    positive_offset: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """Local MI of the encode-and-dot critic, streamed: never a G x B x L score tensor.

    ``local_codes``: (B, E, H, W) or (B, E, L); ``global_codes``: (G, E) with G >= B.
    Scores ``u[i, j, p] = <global_codes[i], local_codes[j, :, p]>``; local image j's
    positive global is row ``positive_offset + j`` and every other pair is a negative.
    f-measures average Ep over the B*L positives and Eq over the (G-1)*B*L negatives;
    ``dv`` is ``mean(pos) - log mean exp(neg)``; ``infonce`` contrasts each positive
    (i, p) with the (B-1)*L local vectors of the other images:
    ``mean(u_pos - logsumexp(candidates)) + log(1 + (B-1)*L)``. ``dv`` and ``infonce``
    need G == B.

    ``official=True`` returns exactly the negative of the official DIM code's loss:
    its InfoNCE keeps the L self pairs in the denominator at score -10 and has no log
    term; its Jan-2019 DV normalises by log(B(B-1)) (log L below the default).
    """
    _validate.dot_product(local_codes, global_codes, estimator, positive_offset)
    kernel = _dispatch.kernel("dot_product_mi", backend, local_codes.device)
    return kernel(local_codes, global_codes, estimator, official, positive_offset)


def concat_conv_mi(
    feature_map: torch.Tensor,
    global_code: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    *,
    estimator: str = "jsd",
    num_negatives: int | None = None,
    perm: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    derangement: bool = False,
    detach_negatives: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Local MI of the concat-and-conv critic (the seed's Figure 3), fused.

    The critic scores a local vector against a global code with 1x1 convs over their
    concatenation: ``weights[i]`` is (out, in) or (out, in, 1, 1), ``weights[0]`` reads
    C + D inputs (local channels first), the last layer has one output; ReLU between
    layers, none on the score; ``biases[i]`` is (out,) or None. Positive (b, l):
    critic(f[b, :, l], y[b]); negative k of (b, l): critic(f[perm[k, l, b], :, l], y[b]).
    Returns ``mi_bound(pos (B, L), neg (K, B, L), estimator)``.

    ``perm`` (K, L, B) comes from ``location_permutation``; without it one is drawn
    from ``generator`` with ``num_negatives`` (default 1) and ``derangement``, and the
    same generator state given to ``location_permutation`` on the same device yields
    it. ``detach_negatives`` stops gradients into ``feature_map`` through negative
    pairs (the seed's stop_gradient) while the critic and ``global_code`` still learn
    from them. No concatenated, tiled or shuffled tensor is formed.
    """
    _validate.tensor(feature_map, "feature_map", min_dim=3, max_dim=4)
    _validate.tensor(global_code, "global_code", min_dim=2, max_dim=2)
    _validate.same_dtype_and_device([("feature_map", feature_map), ("global_code", global_code)])
    check_estimator(estimator)
    batch, channels = feature_map.shape[:2]
    _validate.batch_size(batch, "feature_map.shape[0] (the batch)")
    if global_code.shape[0] != batch:
        raise ValueError(f"global_code must have B = {batch} rows like feature_map, got {tuple(global_code.shape)}")
    locations = feature_map[0, 0].numel()
    matrices, biases = _validate.critic_layers(weights, biases, channels + global_code.shape[1], feature_map)
    if perm is None:
        perm = location_permutation(
            batch,
            locations,
            num_negatives=1 if num_negatives is None else num_negatives,
            derangement=derangement,
            generator=generator,
            device=feature_map.device,
        )
    else:
        perm = _validate.permutation(perm, num_negatives, locations, batch, feature_map.device).long()
    no_bias = feature_map.new_empty(0)  # the ops' marker for a layer without bias
    biases = [no_bias if b is None else b for b in biases]
    kernel = _dispatch.kernel("concat_conv_mi", backend, feature_map.device)
    return kernel(feature_map, global_code, matrices, biases, perm, estimator, detach_negatives)
