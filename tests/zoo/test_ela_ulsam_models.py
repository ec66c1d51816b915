"""ELA and ULSAM model families: timm model checks, exact parameter counts, MACs against the papers, placements."""

import pytest
import timm
import torch
import torch.nn as nn
from timm.models.resnet import Bottleneck
from timm_model_checks import check_timm_classifier

import attnzoo.zoo  # noqa: F401  (registers the models)
from attnzoo.layers.ela import ELA
from attnzoo.layers.ulsam import ULSAM
from attnzoo.profiling import count_macs, count_params
from attnzoo.zoo import create_model
from attnzoo.zoo.ela_resnet import ElaBottleneck, ResidualELA

MODELS = ["ela_resnet18", "ela_resnet50", "ela_mobilenetv2_100", "ulsam_mobilenetv1_100", "ulsam_mobilenetv2_100",
          "ulsam_ins_mobilenetv2_100"]


def _zero(*_):
    return 0


# the papers count conv/linear multiply-accumulates only (ptflops' module convention would add BN and ReLU)
CONV_LINEAR_ONLY = {nn.BatchNorm2d: _zero, nn.ReLU: _zero, nn.ReLU6: _zero}


def conv_macs(model):
    return count_macs(model.eval(), torch.randn(1, 3, 224, 224), custom_hooks=CONV_LINEAR_ONLY)


@pytest.mark.parametrize("name", MODELS)
def test_timm_model_checks(name):
    check_timm_classifier(name, input_size=(3, 32, 32))  # 32x32 keeps the ResNet-50 checks at ~20 s CPU


@pytest.mark.parametrize("name,kwargs,base,expected", [
    ("ela_resnet18", {}, "resnet18", 11_706_792),  # ELA-B: +17,280
    ("ela_resnet50", {}, "resnet50", 25_715_624),  # ELA-S after the 3x3 conv: +158,592
    ("ela_resnet50", dict(ela_variant="B"), "resnet50", 25_591_016),  # +33,984
    ("ela_resnet50", dict(ela_variant="B", ela_position="timm"), "resnet50", 25_692_968),  # after bn3: +135,936
    ("ela_mobilenetv2_100", {}, "mobilenetv2_100", 3_916_904),  # ELA-L, authors' MBV2 placement: +411,928
    ("ela_mobilenetv2_100", dict(ela_variant="B"), "mobilenetv2_100", 3_568_808),
    ("ela_mobilenetv2_100", dict(ela_variant="S"), "mobilenetv2_100", 3_803_240),
])
def test_ela_parameter_counts(name, kwargs, base, expected):
    assert count_params(create_model(name, **kwargs)) == expected
    assert count_params(timm.create_model(base)) < expected


def test_ulsam_mobilenetv1_replacement_matches_paper():
    model = create_model("ulsam_mobilenetv1_100")
    assert isinstance(model.blocks[3][5], ULSAM) and model.blocks[3][5].channels == 512
    assert count_params(model) == 3_965_748  # timm's MV1 4,231,976 - 268,800 + 2,572; the paper: 4.2M -> 3.9M
    assert conv_macs(timm.create_model("mobilenetv1_100")) == pytest.approx(569e6, rel=0.01)  # paper baseline
    assert conv_macs(model) == pytest.approx(517e6, rel=0.01)


def test_ulsam_mobilenetv2_replacement_matches_paper():
    model = create_model("ulsam_mobilenetv2_100")
    assert [type(model.blocks[s][i]) for s, i in ((4, 2), (5, 2))] == [ULSAM, ULSAM]
    macs = conv_macs(model)
    assert macs == pytest.approx(261.88e6, rel=0.01)  # measured 262.75M
    base = timm.create_model("mobilenetv2_100")
    assert conv_macs(base) == pytest.approx(300e6, rel=0.01)
    # timm's MV2 has 3,504,872 params where the paper starts from 3.4M: the reduction is what reproduces
    assert count_params(model) == 3_067_904
    assert count_params(base) - count_params(model) == pytest.approx(3.4e6 - 2.96e6, rel=0.01)
    assert count_macs(model, torch.randn(1, 3, 224, 224)) == pytest.approx(281.26e6, rel=1e-3)  # ptflops-style
    four = create_model("ulsam_mobilenetv2_100", ulsam_blocks=((3, 2), (3, 3), (4, 2), (5, 2)))
    assert count_params(four) == pytest.approx(2.96e6, rel=0.01)


def test_ulsam_mobilenetv2_insertion():
    model = create_model("ulsam_ins_mobilenetv2_100")
    assert isinstance(model.blocks[5][-1], ULSAM) and len(model.blocks[5]) == 4
    assert count_params(model) == 3_504_872 + 812
    assert conv_macs(model) == pytest.approx(300.01e6, rel=0.01)


def test_ulsam_splits_and_momentum_reach_the_modules():
    model = create_model("ulsam_mobilenetv2_100", ulsam_splits=8, ulsam_bn_momentum=0.01)
    module = model.blocks[4][2]
    assert (module.num_splits, module.bn_dw.momentum) == (8, 0.01)


@pytest.mark.parametrize("kwargs,match", [
    (dict(ulsam_blocks=((3, 0),)), r"block \(3, 0\) changes the shape of its input"),
    (dict(ulsam_blocks=((9, 0),)), r"no block \(9, 0\)"),
    (dict(ulsam_insert=(7,)), "stage 7 out of range 0..6"),
])
def test_ulsam_bad_block_choice(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("ulsam_mobilenetv2_100", **kwargs)


def test_ela_mobilenetv2_placement():
    model = create_model("ela_mobilenetv2_100")
    assert isinstance(model.blocks[0][0].se, nn.Identity)  # the t=1 block gets no ELA, as in the authors' MBV2
    ela = model.blocks[1][0].se
    assert isinstance(ela, ELA) and (ela.channels, ela.variant, ela.kernel_size, ela.groups) == (96, "L", 7, 12)
    assert sum(isinstance(m, ELA) for m in model.modules()) == 16


def test_ela_resnet_authors_placement():
    model = create_model("ela_resnet50")
    block = model.layer2[0]
    assert isinstance(block, ElaBottleneck) and block.se is None
    assert isinstance(block.ela, ResidualELA) and block.ela.channels == 128 and block.ela.variant == "S"
    basic = create_model("ela_resnet18").layer3[1]
    assert isinstance(basic.se, ResidualELA) and basic.se.channels == 256 and basic.se.variant == "B"
    with pytest.raises(ValueError, match="ela_position must be one of"):
        create_model("ela_resnet18", ela_position="after")


def test_residual_ela_adds_its_input():
    torch.manual_seed(0)
    plain, residual = ELA(32, "S"), ResidualELA(32, "S")
    residual.load_state_dict(plain.state_dict())
    x = torch.randn(2, 32, 5, 6)
    torch.testing.assert_close(residual(x), plain(x) + x)


def test_ela_bottleneck_forward_is_timms_with_the_extra_slot():
    # with a pass-through in the ELA slot the rewritten forward must be exactly timm's Bottleneck
    torch.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(32, 64, 1, stride=2, bias=False), nn.BatchNorm2d(64))
    ours = ElaBottleneck(32, 16, stride=2, downsample=downsample, ela_layer=lambda c, **dd: nn.Identity()).eval()
    theirs = Bottleneck(32, 16, stride=2, downsample=downsample).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(ours(x), theirs(x))
