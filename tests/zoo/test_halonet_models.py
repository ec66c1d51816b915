"""HaloNet H0-H7 registrations, the value-widened bottleneck, and swapping timm's HaloAttn for ours."""

from functools import partial

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers.halo_attn import HaloAttn
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg
from timm_model_checks import check_timm_classifier

from attnzoo.layers.halo import HaloAttention, swap_halo_attention
from attnzoo.zoo import create_model
from attnzoo.zoo.halonet_attnzoo import HaloBottleneck

# Exact counts of our builds (1000 classes) and the paper's (spec table 1.6, millions).
PARAMS = {
    "azhalonet_h0": (5_500_952, 5.5),
    "azhalonet_h1": (8_100_056, 8.1),
    "azhalonet_h2": (9_404_312, 9.4),
    "azhalonet_h3": (11_841_304, 11.8),
    "azhalonet_h4": (19_101_976, 19.1),
    "azhalonet_h5": (30_717_272, 30.7),
    "azhalonet_h6": (43_456_792, 43.4),
    "azhalonet_h7": (67_433_240, 67.4),
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_counts_match_the_paper(name):
    with torch.device("meta"):
        model = create_model(name)
    count = sum(p.numel() for p in model.parameters())
    exact, paper = PARAMS[name]
    assert count == exact
    assert abs(count / (paper * 1e6) - 1) < 0.03
    assert all(isinstance(m.self_attn, HaloAttention) for m in model.modules() if isinstance(m, HaloBottleneck))


def test_h0_is_a_timm_model():
    # 64 px: the stage maps (16, 8, 4, 2) are smaller than / not multiples of the 8-px blocks; the layer pads.
    check_timm_classifier("azhalonet_h0", input_size=(3, 64, 64))


def test_width_multiplier_and_block_override_build_the_small_fmnist_model():
    model = create_model("azhalonet_h0", width_multiplier=0.375, block_size=4, halo_size=1, num_classes=10,
                         in_chans=1)
    assert sum(p.numel() for p in model.parameters()) == 749_326
    assert model.stem.conv1.conv.out_channels == 24
    attns = [m for m in model.modules() if isinstance(m, HaloAttention)]
    assert len(attns) == 16 and {(a.block_size, a.halo_size) for a in attns} == {(4, 1)}
    assert [stage[0].conv1_1x1.conv.out_channels for stage in model.stages] == [32, 48, 96, 192]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("multiplier", [0.0, 0.1, 1.5])
def test_width_multiplier_out_of_range_is_refused(multiplier):
    with pytest.raises(ValueError, match=f"width_multiplier must be in .*got {multiplier}"):
        create_model("azhalonet_h0", width_multiplier=multiplier)


def test_block_size_zero_is_refused_not_replaced_by_the_papers():
    with pytest.raises(ValueError, match="block_size must be a positive int, got 0"):
        create_model("azhalonet_h0", block_size=0)


def test_h1_has_timms_halonet_h1_layout():
    with torch.device("meta"):
        ours, theirs = create_model("azhalonet_h1"), timm.create_model("halonet_h1")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_value_ratio_widens_only_the_values():
    block_type = partial(HaloBottleneck, value_ratio=2.5)
    cfg = ByoModelCfg(blocks=(ByoBlockCfg(type=block_type, d=1, c=32, s=1, br=0.5),
                              ByoBlockCfg(type=block_type, d=2, c=64, s=2, br=0.5)),
                      stem_chs=16, stem_type="7x7", stem_pool="", self_attn_layer=HaloAttention,
                      self_attn_kwargs=dict(block_size=4, halo_size=1, num_heads=4))
    model = ByobNet(cfg, num_classes=3)
    block = model.stages[1][0]
    attn = block.self_attn
    # mid = 32: q 32 -> 32, kv 32 -> 32 + 80, conv3 reads the 80 value channels.
    assert (attn.q.out_channels, attn.kv.out_channels, block.conv3_1x1.conv.in_channels) == (32, 112, 80)
    assert attn.dim_head_qk == 8 and attn.dim_head_v == 20
    x = torch.randn(2, 3, 30, 30)
    out = model(x)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_block_reset_parameters_keeps_attention_init():
    block = create_model("azhalonet_h0").stages[2][0]
    block.reset_parameters()
    q = block.self_attn.q.weight
    assert q.std().item() == pytest.approx(q.shape[1] ** -0.5, rel=0.1)
    assert "value_ratio=1.0" in repr(block)


def test_swap_keeps_outputs_of_timm_halonet26t():
    torch.manual_seed(0)
    model = timm.create_model("halonet26t").eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        expected = model(x)
        assert swap_halo_attention(model) is model
        got = model(x)
    assert sum(isinstance(m, HaloAttention) for m in model.modules()) == 3
    assert not any(isinstance(m, HaloAttn) for m in model.modules())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 200, 232)).shape == (1, 1000)  # timm's HaloAttn asserts here


@pytest.mark.parametrize("kwargs", [
    dict(dim=16, num_heads=2, block_size=4, halo_size=1, stride=2, avg_down=True, qkv_bias=True),
    dict(dim=16, num_heads=2, block_size=3, halo_size=1, stride=2),
    dict(dim=16, dim_out=24, num_heads=4, dim_head=4, block_size=4, halo_size=2, stride=2, scale_pos_embed=True),
])
def test_swap_reproduces_every_halo_attn_config(kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 1), HaloAttn(**kwargs)).train()
    x = torch.randn(2, 3, 12, 12)
    expected = model(x)
    swap_halo_attention(model)
    assert isinstance(model[1], HaloAttention) and model[1].training
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_swap_bad_input_and_bare_layer():
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        swap_halo_attention("halonet26t")
    layer = swap_halo_attention(HaloAttn(16, num_heads=2, block_size=4, halo_size=1), mask_padding=True)
    assert isinstance(layer, HaloAttention) and layer.mask_padding
    with pytest.raises(ValueError, match="value_ratio must be > 0, got 0"):
        HaloBottleneck(8, 8, value_ratio=0, layers=object())
