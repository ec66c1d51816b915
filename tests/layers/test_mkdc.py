import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attnzoo.layers.mkdc import MKDC, MKIR, ChannelAttention, GroupedAttentionGate, SpatialAttention, channel_shuffle
from attnzoo.profiling import count_params


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, eval mode, so parity tests exercise every term."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=m.running_mean.dtype))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=m.running_var.dtype) + 0.5)
    return module.eval()


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    scale = bn.weight.view(shape) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return (x - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)


def _ref_branch(x: torch.Tensor, branch: nn.Sequential, stride: int) -> torch.Tensor:
    conv, bn = branch[0], branch[1]
    k = conv.kernel_size[0]
    y = F.conv2d(x, conv.weight, stride=stride, padding=k // 2, groups=x.shape[1])
    return _bn(y, bn).clamp(0, 6)


def test_channel_shuffle_is_the_shufflenet_permutation():
    c, groups = 12, 3
    x = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1).expand(2, c, 2, 2)
    # output channel i * groups + g holds input channel g * (c / groups) + i
    expected = [g * (c // groups) + i for i in range(c // groups) for g in range(groups)]
    assert channel_shuffle(x, groups)[0, :, 0, 0].tolist() == expected
    assert torch.equal(channel_shuffle(x, 1), x)


@pytest.mark.parametrize("stride", [1, 2])
def test_mkdc_parallel_sum_matches_reference(stride):
    mkdc = _randomize(MKDC(6, (1, 3, 5), stride=stride))
    x = torch.randn(2, 6, 9, 10)
    expected = sum(_ref_branch(x, b, stride) for b in mkdc.dwconvs)
    out = mkdc(x)
    assert out.shape == (2, 6, math.ceil(9 / stride), math.ceil(10 / stride))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_mkdc_sequential_and_cat_modes():
    x = torch.randn(2, 4, 7, 7)
    seq = _randomize(MKDC(4, (3, 5, 1), parallel=False))
    running, outs = x, []
    for branch in seq.dwconvs:
        outs.append(_ref_branch(running, branch, 1))
        running = running + outs[-1]
    torch.testing.assert_close(seq(x), outs[0] + outs[1] + outs[2], rtol=1e-5, atol=1e-5)

    cat = _randomize(MKDC(4, (1, 3, 5), combine="cat"))
    assert cat.out_channels == 12
    expected = torch.cat([_ref_branch(x, b, 1) for b in cat.dwconvs], dim=1)
    torch.testing.assert_close(cat(x), expected, rtol=1e-5, atol=1e-5)
    # C * (1 + 9 + 25) depthwise weights and two affine BN parameters per branch channel
    assert count_params(cat) == 4 * 35 + 3 * 2 * 4 == 164


def _ref_mkir(block: MKIR, x: torch.Tensor) -> torch.Tensor:
    p1 = block.pconv1
    h = _bn(F.conv2d(x, p1[0].weight), p1[1]).clamp(0, 6)
    branches = [_ref_branch(h, b, block.stride) for b in block.multi_scale_dwconv.dwconvs]
    d = sum(branches) if block.multi_scale_dwconv.combine == "sum" else torch.cat(branches, 1)
    groups = math.gcd(d.shape[1], block.out_channels)
    perm = [g * (d.shape[1] // groups) + i for i in range(d.shape[1] // groups) for g in range(groups)]
    out = _bn(F.conv2d(d[:, perm], block.pconv2[0].weight), block.pconv2[1])
    if block.stride != 1:
        return out
    skip = x if block.conv1x1 is None else F.conv2d(x, block.conv1x1.weight)
    return skip + out


@pytest.mark.parametrize(("cin", "cout", "stride", "add", "params"), [
    # pconv1 cin*2cin + BN 2*2cin; MKDC 2cin*35 + 3 BN; pconv2 (2cin or 6cin)*cout + BN; skip projection cin*cout
    (3, 16, 1, True, 3 * 6 + 12 + 6 * 35 + 36 + 6 * 16 + 32 + 3 * 16),
    (16, 16, 1, True, 16 * 32 + 64 + 32 * 35 + 192 + 32 * 16 + 32),
    (8, 12, 2, False, 8 * 16 + 32 + 16 * 35 + 96 + 48 * 12 + 24),
])
def test_mkir_matches_reference_and_counts(cin, cout, stride, add, params):
    block = _randomize(MKIR(cin, cout, stride=stride, add=add))
    assert count_params(block) == params
    x = torch.randn(2, cin, 8, 8)
    out = block(x)
    assert out.shape == (2, cout, 8 // stride, 8 // stride)
    torch.testing.assert_close(out, _ref_mkir(block, x), rtol=1e-4, atol=1e-4)
    assert (block.conv1x1 is not None) == (stride == 1 and cin != cout)


def test_mkir_shuffle_groups_follow_gcd():
    # encoder1 of MK-UNet: 3 -> 16, hidden 6, gcd(6, 16) = 2 shuffles; encoder2: 16 -> 32, gcd(32, 32) is identity
    assert MKIR(3, 16).shuffle_groups == 2
    assert MKIR(16, 32).shuffle_groups == 32
    assert MKIR(4, 6, add=False).shuffle_groups == math.gcd(24, 6)


def test_channel_attention_reference_and_ratio_rule():
    ca = _randomize(ChannelAttention(32, ratio=16))
    assert ca.reduced_channels == 2 and count_params(ca) == 2 * 32 * 2
    x = torch.randn(2, 32, 5, 6)

    def mlp(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.relu(F.conv2d(v, ca.fc1.weight)), ca.fc2.weight)

    expected = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    torch.testing.assert_close(ca(x), expected, rtol=1e-5, atol=1e-6)
    # the authors clamp the ratio to C, so 4 channels with ratio 16 keep one hidden unit
    assert ChannelAttention(4, ratio=16).reduced_channels == 1


def test_spatial_attention_reference_and_sharing():
    sa = _randomize(SpatialAttention(7))
    assert count_params(sa) == 98
    for c in (3, 8):
        x = torch.randn(2, c, 6, 5)
        pooled = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True).values], 1)
        expected = torch.sigmoid(F.conv2d(pooled, sa.conv.weight, padding=3))
        torch.testing.assert_close(sa(x), expected, rtol=1e-5, atol=1e-6)


def test_grouped_attention_gate_reference_and_counts():
    gag = _randomize(GroupedAttentionGate(16, 16, 8, kernel_size=3, groups=8))
    # W_g, W_x: grouped 3x3 16->8 (2 in-channels per group) + bias + BN; psi: 8->1 + bias + BN
    assert count_params(gag) == 2 * (8 * 2 * 9 + 8 + 16) + (8 + 1 + 2) == 347
    g, x = torch.randn(2, 16, 6, 6), torch.randn(2, 16, 6, 6)

    def w(branch: nn.Sequential, v: torch.Tensor) -> torch.Tensor:
        return _bn(F.conv2d(v, branch[0].weight, branch[0].bias, padding=1, groups=8), branch[1])

    psi = torch.sigmoid(_bn(F.conv2d(F.relu(w(gag.W_g, g) + w(gag.W_x, x)), gag.psi[0].weight, gag.psi[0].bias),
                            gag.psi[1]))
    torch.testing.assert_close(gag(g, x), x * psi, rtol=1e-5, atol=1e-5)
    assert GroupedAttentionGate(6, 6, 3, kernel_size=1, groups=3).groups == 1


def test_authors_initialisation():
    block = MKIR(8, 8)
    weights = torch.cat([m.weight.flatten() for m in block.modules() if isinstance(m, nn.Conv2d)])
    assert abs(weights.std().item() - 0.02) < 0.004
    bn = block.pconv2[1]
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))


def test_compile_fullgraph_matches_eager():
    block = _randomize(MKIR(4, 8))
    x = torch.randn(1, 4, 8, 8)
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), block(x))


def test_repr_shows_configuration():
    assert "sequential" in repr(MKDC(4, parallel=False))
    assert "shuffle_groups=2" in repr(MKIR(3, 16))


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs stride=1, got stride=2"):
        MKDC(4, parallel=False, stride=2)
    with pytest.raises(ValueError, match="kernel_sizes must be"):
        MKDC(4, kernel_sizes=(2, 3))
    with pytest.raises(ValueError, match="combine must be"):
        MKDC(4, combine="max")
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        MKIR(4, 4, stride=3)
    with pytest.raises(ValueError, match="act_layer='swish2'"):
        MKIR(4, 4, act_layer="swish2")
    with pytest.raises(ValueError, match="groups=3 must divide"):
        GroupedAttentionGate(8, 8, 4, groups=3)


def test_bad_inputs():
    block = MKIR(4, 8)
    with pytest.raises(ValueError, match="must have 4 channels, got 3"):
        block(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"must be 4-D \(B, C, H, W\), got shape \(4, 8, 8\)"):
        block(torch.randn(4, 8, 8))
    with pytest.raises(ValueError, match="floating-point tensor, got dtype torch.int64"):
        block(torch.ones(1, 4, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="same spatial size"):
        GroupedAttentionGate(4, 4, 2, groups=2)(torch.randn(1, 4, 4, 4), torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="4-D"):
        SpatialAttention()(torch.randn(2, 5))
