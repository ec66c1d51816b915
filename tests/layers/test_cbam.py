"""CBAM-style ChannelAttention and SpatialAttention (MK-UNet's decoder attention) against written-out references."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mkunet_reference import randomize

from attnzoo.layers.cbam import ChannelAttention, SpatialAttention
from attnzoo.profiling import count_params


def test_channel_attention_reference_and_ratio_rule():
    ca = randomize(ChannelAttention(32, ratio=16))
    assert ca.reduced_channels == 2 and count_params(ca) == 2 * 32 * 2
    x = torch.randn(2, 32, 5, 6)

    def mlp(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.relu(F.conv2d(v, ca.fc1.weight)), ca.fc2.weight)

    expected = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    torch.testing.assert_close(ca(x), expected, rtol=1e-5, atol=1e-6)
    # the authors clamp the ratio to C, so 4 channels with ratio 16 keep one hidden unit
    assert ChannelAttention(4, ratio=16).reduced_channels == 1


def test_spatial_attention_reference_and_sharing():
    sa = randomize(SpatialAttention(7))
    assert count_params(sa) == 98
    for c in (3, 8):
        x = torch.randn(2, c, 6, 5)
        pooled = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True).values], 1)
        expected = torch.sigmoid(F.conv2d(pooled, sa.conv.weight, padding=3))
        torch.testing.assert_close(sa(x), expected, rtol=1e-5, atol=1e-6)


def test_authors_initialisation_and_activation():
    ca = ChannelAttention(16, ratio=4)
    assert type(ca.activation) is nn.ReLU and ca.activation.inplace
    assert type(ChannelAttention(16, act_layer="gelu").activation).__name__ == "GELU"
    weights = torch.cat([ca.fc1.weight.flatten(), ca.fc2.weight.flatten()])
    assert abs(weights.std().item() - 0.02) < 0.01


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="ratio must be a positive int, got 0"):
        ChannelAttention(8, ratio=0)
    with pytest.raises(TypeError, match=r"channels must be a positive int, got True \(bool\)"):
        ChannelAttention(True)
    with pytest.raises(ValueError, match="act_layer='swish2'"):
        ChannelAttention(8, act_layer="swish2")
    with pytest.raises(ValueError, match="kernel_size must be an odd positive int, got 4"):
        SpatialAttention(4)
    with pytest.raises(ValueError, match="must have 8 channels, got 3"):
        ChannelAttention(8)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        SpatialAttention()(torch.randn(2, 5))
