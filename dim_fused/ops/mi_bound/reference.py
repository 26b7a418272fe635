"""The plain PyTorch oracle of mi_bound (see dim_fused.mi_bound)."""

import math

import torch

from ..common.estimators import negative_term, positive_term


def mi_bound(pos_scores: torch.Tensor, neg_scores: torch.Tensor, estimator: str = "jsd") -> torch.Tensor:
    """MI lower bound from critic scores, materialising every term."""
    if estimator == "infonce":
        candidates = torch.cat([pos_scores.unsqueeze(0), neg_scores], dim=0)
        num_candidates = neg_scores.shape[0] + 1
        return (pos_scores - torch.logsumexp(candidates, dim=0)).mean() + math.log(num_candidates)
    if estimator == "dv":
        log_mean_exp = torch.logsumexp(neg_scores.flatten(), dim=0) - math.log(neg_scores.numel())
        return pos_scores.mean() - log_mean_exp
    return positive_term(pos_scores, estimator).mean() - negative_term(neg_scores, estimator).mean()
