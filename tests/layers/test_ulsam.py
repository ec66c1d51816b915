"""ULSAM layer: parameter count, parity with the authors' per-subspace structure, BN momentum, timm slot, errors."""

import pytest
import torch
import torch.nn as nn

from attnzoo.layers.ulsam import ULSAM


class SubSpace(nn.Module):
    """One subspace as in the authors' ulsam.py after PR #7/#9, written from the spec (momentum configurable)."""

    def __init__(self, channels, momentum):
        super().__init__()
        self.conv_dws = nn.Conv2d(channels, channels, 1, groups=channels)
        self.bn_dws = nn.BatchNorm2d(channels, momentum=momentum)
        self.maxpool = nn.MaxPool2d(3, stride=1, padding=1)
        self.conv_point = nn.Conv2d(channels, 1, 1)
        self.bn_point = nn.BatchNorm2d(1, momentum=momentum)
        self.softmax = nn.Softmax(dim=2)

    def forward(self, x):
        out = torch.relu(self.bn_dws(self.conv_dws(x)))
        out = self.maxpool(out)  # PR #9: pool the depthwise output, not x
        out = torch.relu(self.bn_point(self.conv_point(out)))
        b, _, h, w = out.shape
        out = self.softmax(out.view(b, 1, h * w)).view(b, 1, h, w).expand_as(x)
        return out * x + x


class AuthorsULSAM(nn.Module):
    def __init__(self, channels, num_splits, momentum):
        super().__init__()
        self.num_splits = num_splits
        self.subspaces = nn.ModuleList(SubSpace(channels // num_splits, momentum) for _ in range(num_splits))

    def forward(self, x):
        chunks = torch.chunk(x, self.num_splits, dim=1)  # PR #7: split channels, not the batch
        return torch.cat([sub(chunk) for sub, chunk in zip(self.subspaces, chunks, strict=True)], dim=1)


def load_into(ours, ref):
    """Copy the authors' per-subspace parameters and buffers into our grouped layers (channel concatenation)."""
    pairs = {"dw": "conv_dws", "bn_dw": "bn_dws", "pw": "conv_point", "bn_pw": "bn_point"}
    state = {}
    for name, tensor in ours.state_dict().items():
        module, field = name.split(".")
        parts = [sub.state_dict()[f"{pairs[module]}.{field}"] for sub in ref.subspaces]
        if field == "num_batches_tracked":
            state[name] = parts[0]
        elif module == "pw" and field == "weight":
            state[name] = torch.cat(parts, dim=0)  # each (1, G, 1, 1) -> (g, G, 1, 1) for groups=g
        else:
            state[name] = torch.cat([p.reshape(-1, *tensor.shape[1:]) for p in parts], dim=0)
    ours.load_state_dict(state)


def randomise(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(0.0, 0.5)  # keep the pre-softmax ReLU mostly active so the maps are not flat


def test_parameter_count_m512_g4():
    assert sum(p.numel() for p in ULSAM(512, 4).parameters()) == 2572
    assert sum(p.numel() for p in AuthorsULSAM(512, 4, 0.1).parameters()) == 2572


@pytest.mark.parametrize("num_splits", [1, 4, 8])
def test_matches_authors_structure_train_then_eval(num_splits):
    torch.manual_seed(0)
    ref = AuthorsULSAM(32, num_splits, momentum=0.1).double()
    randomise(ref)
    ours = ULSAM(32, num_splits).double()
    load_into(ours, ref)
    for step in range(2):  # train mode: batch statistics and running-stat updates must agree
        x = torch.randn(3, 32, 6, 5, dtype=torch.float64, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_()
        out, out_ref = ours(x), ref(x_ref)
        torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12, msg=f"train step {step}")
        grad = torch.randn_like(out)
        out.backward(grad)
        out_ref.backward(grad)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.bn_dw.running_var, torch.cat([s.bn_dws.running_var for s in ref.subspaces]))
    torch.testing.assert_close(ours.pw.weight.grad.flatten(),
                               torch.cat([s.conv_point.weight.grad.flatten() for s in ref.subspaces]))
    ours.eval()
    ref.eval()
    x = torch.randn(2, 32, 4, 7, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)


def test_attention_maps_sum_to_one_per_subspace():
    module = ULSAM(16, 4).eval()
    x = torch.ones(2, 16, 5, 6)
    residual = module(x) - x  # = A_n * 1, broadcast over the subspace's channels
    torch.testing.assert_close(residual.sum(dim=(2, 3)), torch.ones(2, 16))
    assert torch.equal(residual[:, 0], residual[:, 3])  # one map per subspace (issue #10: shared by G channels)


@pytest.mark.parametrize("momentum", [0.1, 0.9])
def test_bn_momentum_is_pytorch_convention_and_configurable(momentum):
    module = ULSAM(8, 2, bn_momentum=momentum)
    with torch.no_grad():
        module.dw.weight.fill_(1.0)
        module.dw.bias.zero_()
    x = torch.randn(4, 8, 3, 3) + 2.0
    module(x)
    torch.testing.assert_close(module.bn_dw.running_mean, momentum * x.mean(dim=(0, 2, 3)))
    assert f"bn_momentum={momentum}" in repr(module)


def test_timm_se_layer_slot():
    import timm

    model = timm.create_model("mobilenetv2_100", num_classes=10)
    block = model.blocks[3][1]
    block.se = ULSAM(block.conv_dw.out_channels, 4, rd_ratio=0.25, act_layer=nn.ReLU6)  # what timm passes
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_channels_last_and_reset():
    module = ULSAM(16, 4).eval()
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(module(x.to(memory_format=torch.channels_last)), module(x))
    with torch.no_grad():
        module.bn_pw.weight.fill_(7.0)
    module.reset_parameters()
    assert torch.equal(module.bn_pw.weight, torch.ones(4))


@pytest.mark.parametrize("kwargs,match", [
    (dict(channels=30, num_splits=4), "num_splits must divide channels=30, got num_splits=4"),
    (dict(channels=32, num_splits=0), "num_splits must be a positive int, got 0"),
    (dict(channels=32, bn_momentum=1.5), r"bn_momentum must be in \[0, 1\]"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ULSAM(**kwargs)


@pytest.mark.parametrize("x,match", [
    (torch.randn(2, 8, 4, 4), "ULSAM: x must have 16 channels"),
    (torch.randn(2, 16, 4), "4-D"),
    (torch.ones(1, 16, 4, 4, dtype=torch.int32), "floating-point"),
])
def test_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        ULSAM(16, 4)(x)
