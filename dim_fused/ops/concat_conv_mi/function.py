"""The public concat_conv_mi: check the arguments, then run the chosen backend."""

from collections.abc import Sequence

import torch

from ..common import checks, dispatch, library, precision, tunables
from ..common.estimators import check_estimator
from . import reference
from .permutation import check_permutation, location_permutation


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
    """Local MI of the concat-and-conv critic (the paper's Figure 3, the seed's loss), fused.

    The critic scores a local vector against a global code with 1x1 convs over their
    concatenation, ReLU between layers, none on the score. Positive (b, l):
    ``critic(f[b, :, l], y[b])``; negative k of (b, l): ``critic(f[perm[k, l, b], :, l], y[b])``.
    No concatenated, tiled or shuffled tensor is formed. Under autocast every input is cast
    to autocast's dtype (the critic is GEMMs; the scores and reductions stay float32).

    Args:
        feature_map: the local features f.
        global_code: the global code y.
        weights: the critic's layers, ``weights[i]`` (out, in) or a 1x1 conv's
            (out, in, 1, 1); ``weights[0]`` reads C + D inputs (local channels first),
            each layer the previous one's outputs, the last has one output.
        biases: one per layer, (out,) or None.
        estimator: one of ``dim_fused.ESTIMATORS``.
        num_negatives: K, the shuffles drawn when ``perm`` is not given (default 1).
        perm: (K, L, B) from ``location_permutation``; without it one is drawn from
            ``generator`` with ``num_negatives`` and ``derangement`` (the same generator
            state given to ``location_permutation`` on the same device yields it).
        generator: the random source of the drawn permutation.
        derangement: draw permutations without fixed points (no image is its own negative).
        detach_negatives: stop gradients into ``feature_map`` through negative pairs (the
            seed's stop_gradient); the critic and ``global_code`` still learn from them.
        backend: one of ``dim_fused.BACKENDS`` (see ``dim_fused.resolve_backend``: the
            fused Triton kernels cover two hidden layers, other depths run the C++ plan).

    Shape:
        feature_map: (B, C, H, W) or (B, C, L), B >= 2. global_code: (B, D).

    Returns:
        ``mi_bound(pos (B, L), neg (K, B, L), estimator)``: a 0-dim tensor of the inputs'
        dtype.
    """
    device = checks.tensor(feature_map, "feature_map", min_dim=3, max_dim=4).device
    if isinstance(weights, (list, tuple)) and isinstance(biases, (list, tuple)):
        feature_map, global_code, *params = precision.autocast([feature_map, global_code, *weights, *biases], device)
        weights, biases = params[: len(weights)], params[len(weights) :]
    matrices, biases = check_critic(feature_map, global_code, weights, biases, estimator)
    batch, locations = feature_map.shape[0], feature_map[0, 0].numel()
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
        perm = check_permutation(perm, num_negatives, locations, batch, feature_map.device).long()
    name = dispatch.resolve_backend(backend, device, "concat_conv_mi", layers=len(matrices))
    if name == "reference":
        return reference.concat_conv_mi(feature_map, global_code, matrices, biases, perm, estimator, detach_negatives)
    biases = [library.no_bias(feature_map) if b is None else b for b in biases]
    keep = name != "triton" and keep_activations(feature_map, matrices, perm)  # Triton recomputes on chip
    op = library.registered("concat_conv_mi", name)
    args = (feature_map, global_code, matrices, biases, perm, estimator, detach_negatives)
    return op(*args, keep, tunables.chunk_values(device))[0]


def keep_activations(feature_map: torch.Tensor, weights: Sequence[torch.Tensor], perm: torch.Tensor) -> bool:
    """The C++ plan's memory policy: whether its forward keeps every hidden layer's
    activations over all (1 + K) B L rows for the backward (which then skips re-running
    the first layer's halves P and Q, its gather, and the later layers' GEMMs), when they
    take at most DIM_FUSED_KEEP_BYTES (default 256 MiB)."""
    batch, locations = feature_map.shape[0], feature_map[0, 0].numel()
    rows = (perm.shape[0] + 1) * batch * locations
    values = rows * sum(w.shape[0] for w in weights[:-1])
    return 0 < values * feature_map.element_size() <= tunables.keep_bytes()


def check_critic(feature_map, global_code, weights, biases, estimator):
    """The inputs' checks; returns the layers as (out, in) matrices and the biases."""
    checks.tensor(feature_map, "feature_map", min_dim=3, max_dim=4)
    checks.tensor(global_code, "global_code", min_dim=2, max_dim=2)
    checks.same_dtype_and_device([("feature_map", feature_map), ("global_code", global_code)])
    check_estimator(estimator)
    batch, channels = feature_map.shape[:2]
    checks.batch_size(batch, "feature_map.shape[0] (the batch)")
    if global_code.shape[0] != batch:
        raise ValueError(f"global_code must have B = {batch} rows like feature_map, got {tuple(global_code.shape)}")
    return _layers(weights, biases, channels + global_code.shape[1], feature_map)


def _layers(
    weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None], in_features: int, like: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """1x1-conv layers as (out, in) matrices: weights[0] reads in_features = C + D,
    each layer reads the previous one's outputs, the last has one output."""
    if not isinstance(weights, (list, tuple)) or len(weights) < 2:
        raise ValueError("weights must be a list of at least two layers (one hidden layer and the score layer)")
    if not isinstance(biases, (list, tuple)) or len(biases) != len(weights):
        raise ValueError(f"biases must be a list with one entry (a tensor or None) per layer, {len(weights)} here")
    matrices, width = [], in_features
    for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        checks.tensor(weight, f"weights[{i}]", min_dim=2, max_dim=4)
        if weight.dim() > 2 and any(size != 1 for size in weight.shape[2:]):
            raise ValueError(
                f"weights[{i}] must be (out, in) or a 1x1 conv's (out, in, 1, 1), got {tuple(weight.shape)}"
            )
        if weight.shape[1] != width:
            what = "C + D (local channels, then global code)" if i == 0 else f"weights[{i - 1}]'s outputs"
            raise ValueError(f"weights[{i}] must read {width} inputs = {what}, got shape {tuple(weight.shape)}")
        checks.same_dtype_and_device([("feature_map", like), (f"weights[{i}]", weight)])
        if bias is not None:
            checks.tensor(bias, f"biases[{i}]", min_dim=1, max_dim=1)
            checks.same_dtype_and_device([("feature_map", like), (f"biases[{i}]", bias)])
            if bias.shape[0] != weight.shape[0]:
                raise ValueError(f"biases[{i}] must have {weight.shape[0]} entries, got {tuple(bias.shape)}")
        matrices.append(weight.reshape(weight.shape[0], weight.shape[1]))
        width = weight.shape[0]
    if width != 1:
        raise ValueError(f"the last layer must have one output (the score), got {width}")
    return matrices, list(biases)
