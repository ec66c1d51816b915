import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mkunet_reference import bn_eval, randomize

from attnzoo.layers.mkdc import MKDC, MKIR
from attnzoo.profiling import count_params


def _ref_branch(x: torch.Tensor, branch: nn.Sequential, stride: int) -> torch.Tensor:
    conv, bn = branch[0], branch[1]
    k = conv.kernel_size[0]
    y = F.conv2d(x, conv.weight, stride=stride, padding=k // 2, groups=x.shape[1])
    return bn_eval(y, bn).clamp(0, 6)


@pytest.mark.parametrize(("channels", "groups"), [(12, 3), (6, 2), (32, 32), (24, 6), (12, 1)])
def test_channel_shuffle_is_the_shufflenet_permutation(channels, groups):
    # MKIR shuffles with torch's F.channel_shuffle; it must be the authors' view-transpose-reshape (ShuffleNet's
    # permutation: output channel i * groups + g holds input channel g * (C / groups) + i), in every memory format
    x = torch.randn(2, channels, 3, 5)
    b, c, h, w = x.shape
    authors = x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
    expected = [g * (c // groups) + i for i in range(c // groups) for g in range(groups)]
    assert torch.equal(authors, x[:, expected])
    assert torch.equal(F.channel_shuffle(x, groups), authors)
    assert torch.equal(F.channel_shuffle(x.to(memory_format=torch.channels_last), groups), authors)
    assert torch.equal(F.channel_shuffle(x.half(), groups), authors.half())


def test_timm_activation_factory_gives_the_authors_modules():
    # the authors' ReLU6(inplace=True) after every MKIR expansion and MKDC branch
    block = MKIR(4, 8)
    acts = [m for m in block.modules() if isinstance(m, nn.ReLU6 | nn.ReLU | nn.GELU | nn.SiLU)]
    assert len(acts) == 4 and all(type(m) is nn.ReLU6 and m.inplace for m in acts)
    assert all(type(b[2]) is nn.SiLU for b in MKDC(4, act_layer="silu").dwconvs)
    assert all(type(b[2]) is nn.Hardswish for b in MKDC(4, act_layer=nn.Hardswish).dwconvs)


@pytest.mark.parametrize("stride", [1, 2])
def test_mkdc_parallel_sum_matches_reference(stride):
    mkdc = randomize(MKDC(6, (1, 3, 5), stride=stride))
    x = torch.randn(2, 6, 9, 10)
    expected = sum(_ref_branch(x, b, stride) for b in mkdc.dwconvs)
    out = mkdc(x)
    assert out.shape == (2, 6, math.ceil(9 / stride), math.ceil(10 / stride))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_mkdc_sequential_and_cat_modes():
    x = torch.randn(2, 4, 7, 7)
    seq = randomize(MKDC(4, (3, 5, 1), parallel=False))
    running, outs = x, []
    for branch in seq.dwconvs:
        outs.append(_ref_branch(running, branch, 1))
        running = running + outs[-1]
    torch.testing.assert_close(seq(x), outs[0] + outs[1] + outs[2], rtol=1e-5, atol=1e-5)

    cat = randomize(MKDC(4, (1, 3, 5), combine="cat"))
    assert cat.out_channels == 12
    expected = torch.cat([_ref_branch(x, b, 1) for b in cat.dwconvs], dim=1)
    torch.testing.assert_close(cat(x), expected, rtol=1e-5, atol=1e-5)
    # C * (1 + 9 + 25) depthwise weights and two affine BN parameters per branch channel
    assert count_params(cat) == 4 * 35 + 3 * 2 * 4 == 164


def _ref_mkir(block: MKIR, x: torch.Tensor) -> torch.Tensor:
    p1 = block.pconv1
    h = bn_eval(F.conv2d(x, p1[0].weight), p1[1]).clamp(0, 6)
    branches = [_ref_branch(h, b, block.stride) for b in block.multi_scale_dwconv.dwconvs]
    d = sum(branches) if block.multi_scale_dwconv.combine == "sum" else torch.cat(branches, 1)
    groups = math.gcd(d.shape[1], block.out_channels)
    perm = [g * (d.shape[1] // groups) + i for i in range(d.shape[1] // groups) for g in range(groups)]
    out = bn_eval(F.conv2d(d[:, perm], block.pconv2[0].weight), block.pconv2[1])
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
    block = randomize(MKIR(cin, cout, stride=stride, add=add))
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


def test_authors_initialisation():
    block = MKIR(8, 8)
    weights = torch.cat([m.weight.flatten() for m in block.modules() if isinstance(m, nn.Conv2d)])
    assert abs(weights.std().item() - 0.02) < 0.004
    bn = block.pconv2[1]
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))


def test_compile_fullgraph_matches_eager():
    block = randomize(MKIR(4, 8))
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
    with pytest.raises(ValueError, match="act_layer='swish2' is not an activation name"):
        MKIR(4, 4, act_layer="swish2")
    with pytest.raises(TypeError, match="act_layer must be an activation name or an nn.Module class, got 3"):
        MKDC(4, act_layer=3)
    with pytest.raises(ValueError, match="channels must be a positive int, got 0"):
        MKDC(0)
    with pytest.raises(TypeError, match=r"in_channels must be a positive int, got 4.0 \(float\)"):
        MKIR(4.0, 4)


def test_bad_inputs():
    block = MKIR(4, 8)
    with pytest.raises(ValueError, match="must have 4 channels, got 3"):
        block(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"must be 4-D \(B, C, H, W\), got shape \(4, 8, 8\)"):
        block(torch.randn(4, 8, 8))
    with pytest.raises(ValueError, match="floating-point tensor, got dtype torch.int64"):
        block(torch.ones(1, 4, 8, 8, dtype=torch.long))
