"""NAT and DiNAT: the papers' parameters and GFLOPs, the authors' configs and state_dict keys, timm's model API."""

from __future__ import annotations

import pytest
import timm
import torch
from timm_model_checks import check_timm_classifier
from torch.utils.flop_counter import FlopCounterMode

import attnzoo
from attnzoo.layers import NeighborhoodAttention2D
from attnzoo.zoo.nat import NAT

# Our exact count at 1000 classes, the paper's params (M) and GFLOPs at 224 (fvcore MACs): NAT arXiv 2204.07143
# table 2, DiNAT arXiv 2209.15001 table 2 (as transcribed in the attnzoo spec, section 2.4).
PAPER = {
    "nat_mini": (19_984_174, 20, 2.7),
    "nat_tiny": (27_901_582, 28, 4.3),
    "nat_small": (50_743_297, 51, 7.8),
    "nat_base": (89_769_652, 90, 13.7),
    "dinat_mini": (19_984_174, 20, 2.7),
    "dinat_tiny": (27_901_582, 28, 4.3),
    "dinat_small": (50_719_681, 51, 7.8),  # no layer scale in the authors' DiNAT-Small
    "dinat_base": (89_769_652, 90, 13.7),
}


@pytest.mark.parametrize("name", list(PAPER))
def test_parameters_and_gflops_match_the_papers(name):
    exact, paper_params, paper_gflops = PAPER[name]
    with torch.device("meta"):  # FlopCounterMode counts on the meta device: the ops have fakes and FLOP formulas
        model = attnzoo.create_model(name).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 224, 224))
    count = sum(p.numel() for p in model.parameters())
    assert count == exact
    assert round(count / 1e6) == paper_params
    macs = counter.get_total_flops() / 2  # the papers' "FLOPs" are multiply-accumulates
    assert round(macs / 1e9, 1) == paper_gflops
    attention = counter.get_flop_counts()["Global"][torch.ops.attnzoo.neighborhood_attention]
    assert attention > 0


def test_names_collide_with_nothing_in_timm():
    ours = set(attnzoo.list_models("*nat_*"))
    assert ours == set(PAPER)
    assert set(timm.list_models("*nat*")) == ours  # timm itself has no NA model (checked against timm 1.0.31)
    assert {timm.models.model_entrypoint(name).__module__ for name in ours} == {"attnzoo.zoo.nat"}
    with torch.device("meta"):
        assert type(timm.create_model("dinat_mini")) is NAT


def test_configs_are_the_authors():
    with torch.device("meta"):
        small, dinat = attnzoo.create_model("nat_small"), attnzoo.create_model("dinat_tiny")
        dinat_mini, dinat_small = attnzoo.create_model("dinat_mini"), attnzoo.create_model("dinat_small")
    dilations = [[layer.attn.dilation[0] for layer in level.blocks] for level in dinat.levels]
    assert dilations == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
    assert [[layer.attn.dilation[0] for layer in level.blocks] for level in dinat_mini.levels][2] == [1, 2] * 3
    assert [level.blocks[0].attn.num_heads for level in small.levels] == [3, 6, 12, 24]
    assert {m.kernel_size for m in small.modules() if isinstance(m, NeighborhoodAttention2D)} == {(7, 7)}
    assert small.levels[0].blocks[0].mlp.fc1.out_features == 192  # mlp_ratio 2
    assert small.levels[0].blocks[0].layer_scale == 1e-5 and dinat_small.levels[0].blocks[0].layer_scale is None
    rates = [layer.drop_path.drop_prob for level in small.levels for layer in level.blocks[1:]]
    assert max(rates) == pytest.approx(0.3)


def test_state_dict_keys_are_the_authors():
    """The key list of the authors' modules (spec section 2.5), so their checkpoints load by name."""
    depths = (3, 4, 18, 5)
    expected = {"patch_embed.proj.0.weight", "patch_embed.proj.0.bias", "patch_embed.proj.1.weight",
                "patch_embed.proj.1.bias", "patch_embed.norm.weight", "patch_embed.norm.bias", "norm.weight",
                "norm.bias", "head.weight", "head.bias"}
    for i, depth in enumerate(depths):
        for j in range(depth):
            prefix = f"levels.{i}.blocks.{j}."
            expected |= {prefix + name for name in (
                "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.rpb", "attn.proj.weight",
                "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                "mlp.fc2.bias", "gamma1", "gamma2")}
        if i < 3:
            expected |= {f"levels.{i}.downsample.reduction.weight", f"levels.{i}.downsample.norm.weight",
                         f"levels.{i}.downsample.norm.bias"}
    with torch.device("meta"):
        model = attnzoo.create_model("nat_small")
    assert set(model.state_dict()) == expected
    assert model.no_weight_decay_keywords() == {"rpb"}
    assert model.no_weight_decay() == {k for k in expected if k.endswith(".rpb")}


def test_authors_init():
    torch.manual_seed(0)
    model = attnzoo.create_model("nat_small", num_classes=10)
    layer = model.levels[1].blocks[0]
    assert layer.attn.qkv.bias.abs().max() == 0
    assert layer.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(layer.gamma1 == 1e-5) and layer.norm1.weight.eq(1).all()
    assert layer.attn.rpb.std().item() == pytest.approx(0.02, rel=0.1)


# Small builds keep timm's matrix at a few seconds: 32 px gives level maps 8, 4, 2, 1, smaller than the window from
# level 1 on (the attention pads them as NATTEN 0.14 did); DiNAT's dilation 2 fits level 0 (3 * 2 <= 8) unpadded.
_SMALL = dict(embed_dim=16, depths=(2, 1, 2, 1), num_heads=(1, 2, 2, 4), kernel_size=3)
_SMALL_DILATIONS = ((1, 2), (1,), (1, 2), (1,))


@pytest.mark.parametrize("name", ["nat_mini", "dinat_mini"])
def test_is_a_timm_model(name):
    extra = dict(dilations=_SMALL_DILATIONS) if name.startswith("dinat") else {}
    check_timm_classifier(name, input_size=(3, 32, 32), **_SMALL, **extra)


@pytest.mark.parametrize("size", [(33, 97), (64, 48), (130, 70)])
def test_any_input_size(size):
    # the authors' DiNAT-Mini layout and 224-px dilations (kernel 7) at a quarter of the width
    model = attnzoo.create_model("dinat_mini", num_classes=5, embed_dim=16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
        final, feats = model.forward_intermediates(torch.randn(1, 3, *size))
    assert out.shape == (1, 5)
    sides = [size]
    for _ in range(5):
        sides.append(tuple(-(-s // 2) for s in sides[-1]))
    assert [tuple(f.shape[2:]) for f in feats] == sides[2:6]
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128] and final.shape[1:] == (128, *sides[5])


def test_forward_intermediates_and_features_only_agree():
    torch.manual_seed(0)
    model = attnzoo.create_model("nat_mini", embed_dim=16).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x, indices=(1, 3), norm=True)
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(feats[1], final)  # norm=True: the last level's output is the final norm's
        features = attnzoo.create_model("nat_mini", embed_dim=16, features_only=True, out_indices=(1, 3)).eval()
        missing, unexpected = features.model.load_state_dict(model.state_dict(), strict=False)
        assert not missing and {key.split(".")[0] for key in unexpected} <= {"head", "norm"}
        outs = features(x)
    torch.testing.assert_close(outs[0], feats[0])
    assert features.feature_info.channels() == [32, 128] and features.feature_info.reduction() == [8, 32]


def test_bad_arguments():
    with pytest.raises(ValueError, match="global_pool must be one of"):
        attnzoo.create_model("nat_mini", global_pool="max")
    with pytest.raises(ValueError, match="dilations=\\(1, 2\\) must have one entry per layer \\(depth=3\\)"):
        NAT(depths=(3, 1), num_heads=(2, 4), dilations=((1, 2), (1,)))
