import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attnzoo.profiling import count_macs, count_params


class _Shared(nn.Module):
    """A block that reuses one activation module twice and does some uncounted functional work."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, groups=1)
        self.dw = nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.up = nn.Upsample(scale_factor=2)
        self.fc = nn.Linear(8, 5)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))  # (B, 8, 16, 16)
        x = self.act(self.bn(self.dw(x)))  # (B, 8, 8, 8)
        x = self.up(x) * self.gate(x).repeat_interleave(2, -1).repeat_interleave(2, -2)  # (B, 8, 16, 16)
        x = F.max_pool2d(x, 2)  # functional: not counted
        return self.fc(self.pool(x).flatten(1))


def test_count_macs_hand_computed():
    model = _Shared()
    x = torch.randn(2, 3, 16, 16)
    total, per_module = count_macs(model, x, per_module=True)
    b = 2
    expected = {
        "conv": b * 16 * 16 * (9 * 3 * 8) + b * 8 * 16 * 16,
        "dw": b * 8 * 8 * (25 * 1 * 8),
        "bn": 2 * b * 8 * 8 * 8,
        "act": b * 8 * 16 * 16 + b * 8 * 8 * 8,  # shared module: priced at each of its two calls
        "up": b * 8 * 16 * 16,
        "pool": b * 8 * 8 * 8,
        "fc": b * (8 * 5 + 5),
    }
    assert per_module == expected
    assert total == sum(expected.values()) == 152_666


def test_count_macs_restores_mode_and_accepts_custom_hooks():
    model = _Shared().train()
    x = torch.randn(1, 3, 16, 16)
    base = count_macs(model, x)
    assert model.training
    with_sigmoid = count_macs(model, (x,), custom_hooks={nn.Sigmoid: lambda m, i, o: o.numel()})
    assert with_sigmoid - base == 8 * 8 * 8


def test_count_macs_subclasses_and_transposed_conv():
    class MyBN(nn.BatchNorm2d):
        pass

    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 2, stride=2), MyBN(6, affine=False), nn.LayerNorm(16))
    x = torch.randn(1, 4, 8, 8)
    total, per_module = count_macs(model, {"input": x}, per_module=True)
    assert per_module == {"0": 8 * 8 * (4 * 4 * 6) + 6 * 16 * 16, "1": 6 * 16 * 16, "2": 2 * 6 * 16 * 16}
    assert total == 12_288


def test_count_macs_matches_ptflops_on_torchvision_resnet18():
    ptflops = pytest.importorskip("ptflops")
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18()
    ours = count_macs(model, torch.randn(1, 3, 64, 64))
    theirs, _ = ptflops.get_model_complexity_info(model, (3, 64, 64), as_strings=False, backend="pytorch",
                                                  print_per_layer_stat=False, verbose=False,
                                                  backend_specific_config={"count_functional": False})
    assert ours == theirs


def test_count_params_shared_and_trainable():
    lin = nn.Linear(4, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin, nn.BatchNorm1d(3))
    assert count_params(model) == 15 + 6
    model[3].weight.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 15 + 3


def test_bad_input():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        count_params("resnet")
    with pytest.raises(TypeError, match="example_input"):
        count_macs(nn.ReLU(), [torch.randn(1)])


def test_count_macs_with_ops_counts_the_attention_inside_attnzoo_ops():
    # HaloAttention at 32x32, 64 channels, 8-px blocks with a 3-px halo: every query attends to a 14x14 window
    # (q.k and attn.v over all 64 channels) and adds 14 height + 14 width relative logits per channel
    from attnzoo.layers import HaloAttention

    layer, x = HaloAttention(64, 64, block_size=8, halo_size=3), torch.randn(1, 64, 32, 32)
    modules = count_macs(layer, x)
    assert modules == 3 * 64 * 64 * 32 * 32  # the q, k and v 1x1 convs only
    total, per_module = count_macs(layer, x, ops=True, per_module=True)
    window = 8 + 2 * 3
    attention = 32 * 32 * (window * window * (64 + 64) + 2 * window * 64)
    assert per_module["halo_attention (attnzoo op)"] == attention
    assert total == modules + attention
