"""concat_conv_mi for the Triton backend: the C++ row-chunk plan
(csrc/concat_conv_mi.cpp) on the tensors' device, so the plan exists once."""

import torch


def forward(feature_map, global_code, weights, biases, perm, estimator: str, detach_negatives: bool):
    return torch.ops.dim_fused.concat_conv_mi(
        feature_map, global_code, weights, biases, perm, estimator, detach_negatives
    )


def backward(grad, feature_map, global_code, weights, biases, perm, scores, estimator, detach_negatives):
    return torch.ops.dim_fused.concat_conv_mi_backward(
        grad, feature_map, global_code, weights, biases, perm, scores, estimator, detach_negatives
    )
