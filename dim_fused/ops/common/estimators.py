"""Estimator names and their per-score terms (docs/design.md, "Estimators").

Every bound is "higher = more mutual information"; a training loss is its negative.
The f-measures average Ep over positive scores and Eq over negative scores and
return ``mean Ep - mean Eq``; ``dv`` and ``infonce`` couple scores through a
logsumexp and have no per-score negative term.
"""

import math

import torch
import torch.nn.functional as F

ESTIMATORS: tuple[str, ...] = ("jsd", "gan", "kl", "rkl", "h2", "x2", "w1", "dv", "infonce")
F_MEASURES: tuple[str, ...] = ("jsd", "gan", "kl", "rkl", "h2", "x2", "w1")
# Estimators with exp or square terms: they overflow by definition for large
# scores and are computed faithfully (no clamping).
UNBOUNDED: tuple[str, ...] = ("kl", "rkl", "h2", "x2")

LOG2 = math.log(2.0)


def check_estimator(estimator: str) -> str:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}; got {estimator!r}")
    return estimator


def positive_term(t: torch.Tensor, estimator: str) -> torch.Tensor:
    """Ep(t): the contribution of a positive (joint) score."""
    if estimator == "jsd":
        return LOG2 - F.softplus(-t)
    if estimator == "gan":
        return -F.softplus(-t)
    if estimator == "rkl":
        return -torch.exp(-t)
    if estimator == "h2":
        return 1.0 - torch.exp(-t)
    if estimator == "x2":
        return t**2
    if estimator in ("kl", "w1", "dv"):
        return t
    raise ValueError(f"estimator {estimator!r} has no per-score positive term")


def negative_term(t: torch.Tensor, estimator: str) -> torch.Tensor:
    """Eq(t): the contribution of a negative (product-of-marginals) score."""
    if estimator == "jsd":
        return F.softplus(t) - LOG2
    if estimator == "gan":
        return F.softplus(t)
    if estimator == "kl":
        return torch.exp(t - 1.0)
    if estimator == "rkl":
        return t - 1.0
    if estimator == "h2":
        return torch.exp(t) - 1.0
    if estimator == "x2":
        # What the official DIM code computes (not textbook Pearson chi^2).
        return -0.5 * (t.abs() + 1.0) ** 2
    if estimator == "w1":
        return t
    raise ValueError(f"estimator {estimator!r} has no per-score negative term")
