"""Argument checks for the public ops: every bad input gets a clear error naming
the argument, before any kernel launches."""

from collections.abc import Sequence

import torch

from .estimators import check_estimator

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(value: object, name: str, *, min_dim: int = 0, max_dim: int | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(value.shape)}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {value.dtype}")
    if value.dim() < min_dim or (max_dim is not None and value.dim() > max_dim):
        expected = f"{min_dim}" if max_dim == min_dim else f"{min_dim} to {max_dim or 'any'}"
        raise ValueError(f"{name} must have {expected} dimensions, got shape {tuple(value.shape)}")
    return value


def same_dtype_and_device(named: Sequence[tuple[str, torch.Tensor]]) -> None:
    first_name, first = named[0]
    for name, other in named[1:]:
        if other.device != first.device:
            raise ValueError(
                f"{name} is on {other.device} but {first_name} is on {first.device}; put them on one device"
            )
        if other.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {other.dtype} but {first_name} has {first.dtype}; use one dtype")


def scores(pos_scores: torch.Tensor, neg_scores: torch.Tensor, estimator: str) -> None:
    check_estimator(estimator)
    tensor(pos_scores, "pos_scores")
    tensor(neg_scores, "neg_scores")
    same_dtype_and_device([("pos_scores", pos_scores), ("neg_scores", neg_scores)])
    if estimator == "infonce" and (
        neg_scores.dim() != pos_scores.dim() + 1 or neg_scores.shape[1:] != pos_scores.shape
    ):
        raise ValueError(
            "for estimator 'infonce', neg_scores must have shape (K, *pos_scores.shape) = "
            f"(K, {', '.join(map(str, pos_scores.shape))}), got {tuple(neg_scores.shape)}"
        )


def batch_size(size: int, name: str = "batch") -> None:
    if size < 2:
        raise ValueError(f"{name} must be at least 2 to draw negatives from other images, got {size}")


def permutation(
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
    expected = torch.arange(batch_size, device=perm.device, dtype=perm.dtype)
    if not torch.equal(perm.sort(dim=-1).values, expected.expand_as(perm)):
        raise ValueError("perm[k, l] must be a permutation of range(batch) for every k and l")
    return perm


def dot_product(local_codes: torch.Tensor, global_codes: torch.Tensor, estimator: str, positive_offset: int) -> None:
    check_estimator(estimator)
    tensor(local_codes, "local_codes", min_dim=3, max_dim=4)
    tensor(global_codes, "global_codes", min_dim=2, max_dim=2)
    same_dtype_and_device([("local_codes", local_codes), ("global_codes", global_codes)])
    batch, units = local_codes.shape[:2]
    num_globals = global_codes.shape[0]
    batch_size(batch, "local_codes.shape[0] (the batch)")
    if global_codes.shape[1] != units:
        raise ValueError(
            f"global_codes must have E = {units} columns like local_codes (B, E, ...), got {tuple(global_codes.shape)}"
        )
    if num_globals < batch:
        raise ValueError(f"global_codes must have at least B = {batch} rows, got G = {num_globals}")
    if not 0 <= positive_offset <= num_globals - batch:
        raise ValueError(
            f"positive_offset must be in [0, G - B] = [0, {num_globals - batch}] so that every local image has "
            f"its positive global row, got {positive_offset}"
        )
    if estimator in ("dv", "infonce") and num_globals != batch:
        raise ValueError(
            f"estimator {estimator!r} couples all pairs through its normaliser and needs G == B; got G = "
            f"{num_globals}, B = {batch} (use an f-measure such as 'jsd' with globals gathered from other ranks)"
        )


def critic_layers(
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
        tensor(weight, f"weights[{i}]", min_dim=2, max_dim=4)
        if weight.dim() > 2 and any(size != 1 for size in weight.shape[2:]):
            raise ValueError(
                f"weights[{i}] must be (out, in) or a 1x1 conv's (out, in, 1, 1), got {tuple(weight.shape)}"
            )
        if weight.shape[1] != width:
            what = "C + D (local channels, then global code)" if i == 0 else f"weights[{i - 1}]'s outputs"
            raise ValueError(f"weights[{i}] must read {width} inputs = {what}, got shape {tuple(weight.shape)}")
        same_dtype_and_device([("feature_map", like), (f"weights[{i}]", weight)])
        if bias is not None:
            tensor(bias, f"biases[{i}]", min_dim=1, max_dim=1)
            same_dtype_and_device([("feature_map", like), (f"biases[{i}]", bias)])
            if bias.shape[0] != weight.shape[0]:
                raise ValueError(f"biases[{i}] must have {weight.shape[0]} entries, got {tuple(bias.shape)}")
        matrices.append(weight.reshape(weight.shape[0], weight.shape[1]))
        width = weight.shape[0]
    if width != 1:
        raise ValueError(f"the last layer must have one output (the score), got {width}")
    return matrices, list(biases)
