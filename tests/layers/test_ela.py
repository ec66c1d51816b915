"""ELA layer: variant parameter counts, authors' semantics, odd channel counts, timm slots, compile, bad input."""

from functools import partial

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import create_attn
from timm.layers.coord_attn import EfficientLocalAttn

from attnzoo.layers.ela import ELA


class AuthorsELA(nn.Module):
    """The authors' ELA72 structure, written from the spec: shared Conv1d + shared GroupNorm, per-strip calls."""

    def __init__(self, channels, kernel_size, groups, norm_groups):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=False)
        self.gn = nn.GroupNorm(norm_groups, channels)

    def forward(self, x):
        b, c, h, w = x.shape
        x_h = x.mean(dim=3, keepdim=True).view(b, c, h)
        x_w = x.mean(dim=2, keepdim=True).view(b, c, w)
        x_h = torch.sigmoid(self.gn(self.conv(x_h))).view(b, c, h, 1)
        x_w = torch.sigmoid(self.gn(self.conv(x_w))).view(b, c, 1, w)
        return x * x_h * x_w


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("variant,expected", [("T", 1792), ("B", 2304), ("S", 10752), ("L", 14848)])
def test_parameter_counts_at_256(variant, expected):
    assert n_params(ELA(256, variant)) == expected


@pytest.mark.parametrize("variant,config", [("T", (5, 64, 32)), ("B", (7, 64, 16)), ("S", (5, 8, 16)),
                                            ("L", (7, 8, 16))])
def test_matches_authors_module(variant, config):
    torch.manual_seed(0)
    ours = ELA(64, variant).double()
    ref = AuthorsELA(64, *config).double()
    with torch.no_grad():
        ours.gn.weight.uniform_(0.5, 1.5)
        ours.gn.bias.uniform_(-0.5, 0.5)
    ref.load_state_dict(ours.state_dict())  # same parameter names and shapes as the authors' layout
    x = torch.randn(2, 64, 6, 9, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = ours(x), ref(x_ref)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    for (name, p), p_ref in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("variant,groups,norm_groups,shown", [
    ("T", 144, 24, "norm_groups=24 (requested 32)"),
    ("B", 144, 16, "norm_groups=16,"),
    ("S", 18, 16, "groups=18,"),
    ("L", 18, 16, "groups=18,"),
])
def test_mobilenetv2_144_channels_build(variant, groups, norm_groups, shown):
    module = ELA(144, variant)
    assert (module.groups, module.norm_groups) == (groups, norm_groups)
    assert shown in module.extra_repr()
    assert module(torch.randn(1, 144, 5, 5)).shape == (1, 144, 5, 5)


def test_largest_divisor_fallback_for_conv_groups():
    module = ELA(100, "S")  # C/8 = 12 groups requested; 10 is the largest divisor of 100 not above 12
    assert (module.groups, module.norm_groups) == (10, 10)
    assert "groups=10 (requested 12)" in repr(module) and "norm_groups=10 (requested 16)" in repr(module)
    explicit = ELA(30, kernel_size=3, groups=4, norm_groups=7)
    assert (explicit.kernel_size, explicit.groups, explicit.norm_groups) == (3, 3, 6)


def test_reset_parameters_restores_gn_identity():
    module = ELA(32, "B")
    with torch.no_grad():
        module.gn.weight.fill_(3.0)
    module.reset_parameters()
    assert torch.equal(module.gn.weight, torch.ones(32)) and torch.equal(module.gn.bias, torch.zeros(32))


def test_timm_resnet_attn_layer_slot():
    # timm's slot is after bn2/bn3 on the block output (the spec's counts: +17,280 for ELA-B on ResNet-18)
    base = n_params(timm.create_model("resnet18"))
    model = timm.create_model("resnet18", block_args=dict(attn_layer=partial(ELA, variant="B")))
    assert n_params(model) - base == 17280
    assert isinstance(model.layer1[0].se, ELA)


def test_timm_se_layer_slot_accepts_and_ignores_rd_ratio_and_act_layer():
    module = ELA(8, "L", rd_ratio=0.25, act_layer=nn.ReLU6)  # what timm's EfficientNet builder passes
    assert n_params(module) == n_params(ELA(8, "L"))


def test_not_timms_ela():
    assert isinstance(create_attn("ela", 64), EfficientLocalAttn)  # importing attnzoo leaves timm's 'ela' alone
    assert not isinstance(create_attn(ELA, 64), EfficientLocalAttn)


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    module = ELA(32, "S")
    x = torch.randn(2, 32, 5, 7, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, module(x))
    out.sum().backward()
    grad_compiled = x.grad.clone()
    x.grad = None
    module(x).sum().backward()
    torch.testing.assert_close(grad_compiled, x.grad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(channels=32, variant="XL"), r"variant must be one of \['B', 'L', 'S', 'T'\], got 'XL'"),
    (dict(channels=32, kernel_size=4), "kernel_size must be odd"),
    (dict(channels=0), "channels must be a positive int, got 0"),
    (dict(channels=32, groups=-1), "groups must be a positive int, got -1"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ELA(**kwargs)


@pytest.mark.parametrize("x,match", [
    (torch.randn(2, 16, 4, 4), "ELA: x must have 32 channels"),
    (torch.randn(32, 4, 4), "4-D"),
    (torch.ones(1, 32, 4, 4, dtype=torch.int64), "floating-point"),
])
def test_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        ELA(32)(x)
