"""GroupedAttentionGate (MK-UNet's skip-connection gate) against a written-out reference."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mkunet_reference import bn_eval, randomize

from attnzoo.layers.attention_gate import GroupedAttentionGate
from attnzoo.profiling import count_params


def test_grouped_attention_gate_reference_and_counts():
    gag = randomize(GroupedAttentionGate(16, 16, 8, kernel_size=3, groups=8))
    # W_g, W_x: grouped 3x3 16->8 (2 in-channels per group) + bias + BN; psi: 8->1 + bias + BN
    assert count_params(gag) == 2 * (8 * 2 * 9 + 8 + 16) + (8 + 1 + 2) == 347
    g, x = torch.randn(2, 16, 6, 6), torch.randn(2, 16, 6, 6)

    def w(branch: nn.Sequential, v: torch.Tensor) -> torch.Tensor:
        return bn_eval(F.conv2d(v, branch[0].weight, branch[0].bias, padding=1, groups=8), branch[1])

    psi = torch.sigmoid(bn_eval(F.conv2d(F.relu(w(gag.W_g, g) + w(gag.W_x, x)), gag.psi[0].weight, gag.psi[0].bias),
                            gag.psi[1]))
    torch.testing.assert_close(gag(g, x), x * psi, rtol=1e-5, atol=1e-5)
    assert GroupedAttentionGate(6, 6, 3, kernel_size=1, groups=3).groups == 1


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="groups=3 must divide"):
        GroupedAttentionGate(8, 8, 4, groups=3)
    with pytest.raises(ValueError, match="inter_channels must be a positive int, got 0"):
        GroupedAttentionGate(8, 8, 0)
    with pytest.raises(ValueError, match="kernel_size must be an odd positive int, got 2"):
        GroupedAttentionGate(8, 8, 4, kernel_size=2)
    with pytest.raises(ValueError, match="same spatial size"):
        GroupedAttentionGate(4, 4, 2, groups=2)(torch.randn(1, 4, 4, 4), torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="g must have 4 channels, got 3"):
        GroupedAttentionGate(4, 4, 2, groups=2)(torch.randn(1, 3, 4, 4), torch.randn(1, 4, 4, 4))
