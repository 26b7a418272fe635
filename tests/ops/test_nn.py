"""Modules: the encode-and-dot critic."""

import torch

import dim_fused
from dim_fused.nn import EncodeAndDotCritic, MI1x1ConvNet


def test_shortcut_starts_near_identity():
    net = MI1x1ConvNet(4, 6)
    weight = net.linear_shortcut.weight[:, :, 0, 0]
    torch.testing.assert_close(weight[:4, :4].diagonal(), torch.ones(4))
    assert weight.abs().masked_fill(torch.eye(6, 4, dtype=torch.bool), 0).max() <= 0.01


def test_critic_matches_reference_on_its_codes_and_trains():
    torch.manual_seed(0)
    critic = EncodeAndDotCritic(8, 5, units=16).double()
    feature_map = torch.randn(4, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    global_code = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    for estimator in ("jsd", "infonce"):
        estimate = critic(feature_map, global_code, estimator=estimator)
        local_codes, global_codes = critic.encode(feature_map, global_code)
        assert local_codes.shape == (4, 16, 3, 3) and global_codes.shape == (4, 16)
        expected = dim_fused.reference.dot_product_mi(local_codes, global_codes, estimator)
        torch.testing.assert_close(estimate, expected)
    (-estimate).backward()
    assert feature_map.grad.abs().sum() > 0 and global_code.grad.abs().sum() > 0
    assert all(p.grad is not None for p in critic.parameters() if p.requires_grad)


def test_critic_accepts_flat_maps():
    critic = EncodeAndDotCritic(8, 5, units=16)
    feature_map = torch.randn(3, 8, 9)
    flat = critic(feature_map, torch.randn(3, 5))
    assert flat.shape == ()
