"""The public mi_bound: check the arguments, then run the chosen backend."""

import torch

from ..common import checks, dispatch, library
from ..common.estimators import check_estimator
from . import reference


def mi_bound(
    pos_scores: torch.Tensor,
    neg_scores: torch.Tensor,
    estimator: str = "jsd",
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Mutual-information lower bound (higher = more MI) from critic scores.

    The f-measures (jsd, gan, kl, rkl, h2, x2, w1) return ``mean Ep(pos) - mean Eq(neg)``
    over all elements, ``dv`` returns ``mean(pos) - log mean exp(neg)``, and ``infonce``
    contrasts every positive with its K aligned negatives:
    ``mean(pos - logsumexp([pos, neg_1..K])) + log(K + 1)`` (docs/design.md, "Estimators").
    kl, rkl, h2 and x2 contain exp or square terms that overflow by definition for large
    scores; they are computed faithfully. Autocast does not apply (a reduction).

    Args:
        pos_scores: scores of positive pairs.
        neg_scores: scores of negative pairs.
        estimator: one of ``dim_fused.ESTIMATORS``.
        backend: one of ``dim_fused.BACKENDS`` (see ``dim_fused.resolve_backend``).

    Shape:
        pos_scores: any. neg_scores: any for the f-measures and dv; ``(K, *pos_scores.shape)``
        for infonce.

    Returns:
        A 0-dim tensor of the scores' dtype, accumulated in float32 (float64 for float64
        scores).
    """
    check_scores(pos_scores, neg_scores, estimator)
    name = dispatch.resolve_backend(backend, pos_scores.device, "mi_bound")
    if name == "reference":
        return reference.mi_bound(pos_scores, neg_scores, estimator)
    return library.registered("mi_bound", name)(pos_scores, neg_scores, estimator)[0]


def check_scores(pos_scores: torch.Tensor, neg_scores: torch.Tensor, estimator: str) -> None:
    check_estimator(estimator)
    checks.tensor(pos_scores, "pos_scores")
    checks.tensor(neg_scores, "neg_scores")
    checks.same_dtype_and_device([("pos_scores", pos_scores), ("neg_scores", neg_scores)])
    if estimator == "infonce" and (
        neg_scores.dim() != pos_scores.dim() + 1 or neg_scores.shape[1:] != pos_scores.shape
    ):
        raise ValueError(
            "for estimator 'infonce', neg_scores must have shape (K, *pos_scores.shape) = "
            f"(K, {', '.join(map(str, pos_scores.shape))}), got {tuple(neg_scores.shape)}"
        )
