import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

from attnzoo.layers.ela import ELA
from attnzoo.layers.mkdc import MKIR
from attnzoo.layers.ulsam import ULSAM
from attnzoo.profiling import count_macs, count_params
from attnzoo.zoo import create_model, list_models
from attnzoo.zoo.mkunet import MKUNet
from attnzoo.zoo.smp_bridge import AttentionUnet, MKUNetEncoder


@pytest.fixture(scope="module")
def mkunet_t() -> MKUNet:
    torch.manual_seed(0)
    return create_model("mkunet_t").eval()


def test_registered_for_segmentation():
    assert {"mkunet", "mkunet_s", "mkunet_t", "smp_unet_ela", "smp_unet_ulsam"} <= set(
        list_models(task="segmentation"))


@pytest.mark.parametrize(("name", "params", "macs"), [
    # the authors' counts (num_classes=1, 3 input channels); MACs at 3x256x256 on modules, as ptflops counts,
    # for the authors' forward, which runs all four heads
    ("mkunet", 315_566, 313_757_368),
    ("mkunet_s", 93_050, 124_680_156),
    ("mkunet_t", 27_384, 62_210_908),
])
def test_params_and_macs_match_the_authors(name, params, macs):
    model = create_model(name, num_classes=1, deep_supervision=True)
    assert count_params(model) == params
    assert count_macs(model, torch.randn(1, 3, 256, 256)) == macs
    if name == "mkunet":
        assert round(macs / 1e9, 3) == 0.314  # the paper's "0.314G FLOPs"


def test_deep_supervision_outputs(mkunet_t):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final = mkunet_t(x)
        mkunet_t.deep_supervision = True
        outs = mkunet_t(x)
        mkunet_t.deep_supervision = False
    assert isinstance(final, torch.Tensor) and final.shape == (2, 1, 64, 64)
    assert len(outs) == 4 and all(o.shape == (2, 1, 64, 64) for o in outs)
    torch.testing.assert_close(outs[0], final)
    # p1 comes from the 1/8-scale head: bilinear x8 of a 8x8 map is smooth, p4 is not
    assert outs[3].diff(dim=-1).abs().mean() < outs[0].diff(dim=-1).abs().mean()


def test_sides_not_multiple_of_32_are_padded_then_cropped(mkunet_t):
    x = torch.randn(1, 3, 50, 70)
    padded = torch.nn.functional.pad(x, (0, 26, 0, 14))  # zero-padded to 64 x 96
    with torch.no_grad():
        out = mkunet_t(x)
        ref = mkunet_t(padded)[..., :50, :70]
    assert out.shape == (1, 1, 50, 70)
    torch.testing.assert_close(out, ref)


def test_grey_input_is_repeated_to_rgb(mkunet_t):
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(mkunet_t(x), mkunet_t(x.repeat(1, 3, 1, 1)))


def test_backward_reaches_every_parameter():
    model = create_model("mkunet_t", num_classes=2, deep_supervision=True).train()
    outs = model(torch.randn(2, 3, 32, 32))
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_state_dict_names_follow_the_authors():
    keys = set(MKUNet(channels=(4, 8, 16, 24, 32)).state_dict())
    for key in ("encoder1.0.pconv1.0.weight", "encoder1.0.multi_scale_dwconv.dwconvs.2.0.weight",
                "encoder1.0.conv1x1.weight", "decoder5.0.pconv2.1.running_var", "AG4.W_g.0.bias", "AG1.psi.1.weight",
                "CA5.fc2.weight", "SA.conv.weight", "out1.weight", "out4.bias"):
        assert key in keys
    # one shared spatial attention: no per-stage copies
    assert not any(k.startswith(("SA1", "SA2")) for k in keys)


def test_bad_inputs(mkunet_t):
    with pytest.raises(ValueError, match="must have 3 channels, got 4"):
        mkunet_t(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        mkunet_t(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="floating-point tensor, got dtype torch.uint8"):
        mkunet_t(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels must be 5 even ints"):
        MKUNet(channels=(4, 8, 16, 24))
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        MKUNet(num_classes=0)


# --- segmentation-models-pytorch, both directions, with real smp objects -------------------------------------


def test_smp_unet_builds_on_the_mkunet_encoder(mkunet_t):
    assert "attnzoo-mkunet" in smp.encoders.get_encoder_names()
    model = smp.Unet("attnzoo-mkunet_t", encoder_weights=None, classes=3).eval()
    assert isinstance(model.encoder, MKUNetEncoder) and model.encoder.out_channels == [3, 4, 8, 16, 24, 32]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 3, 64, 64)
        # the encoder holds exactly MK-UNet's encoder: a trained MK-UNet's weights load and give the same features
        model.encoder.load_from_mkunet(mkunet_t)
        feats = model.encoder(x)
        ref = mkunet_t.forward_features(x)
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8, 4, 2]
    for ours, theirs in zip(feats[1:], ref, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_smp_encoder_options():
    grey = smp.Unet("attnzoo-mkunet_t", encoder_weights=None, in_channels=1, encoder_depth=3,
                    decoder_channels=(32, 16, 8))
    assert grey.encoder.out_channels == [1, 4, 8, 16]
    assert grey(torch.randn(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    deeplab = smp.DeepLabV3Plus("attnzoo-mkunet_t", encoder_weights=None, encoder_output_stride=8).eval()
    feats = deeplab.encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8, 8, 8]
    dilations = {m.dilation for m in deeplab.encoder.encoder5.modules() if isinstance(m, nn.Conv2d)}
    assert dilations == {(2, 2)}
    assert deeplab(torch.randn(2, 3, 64, 64)).shape == (2, 1, 64, 64)
    with pytest.raises(KeyError, match="Wrong pretrained weights"):
        smp.Unet("attnzoo-mkunet_t")  # smp's default encoder_weights='imagenet' does not exist for it


@pytest.mark.parametrize(("attention", "cls"), [("ela", ELA), ("ulsam", ULSAM)])
def test_smp_unet_with_attnzoo_decoder_attention(attention, cls):
    model = create_model(f"smp_unet_{attention}", decoder_channels=(64, 32, 16, 16, 16), classes=2)
    assert isinstance(model, smp.Unet) and isinstance(model.encoder, smp.encoders.resnet.ResNetEncoder)
    blocks = model.decoder.blocks
    # attention on [upsampled; skip] (resnet18 skips 256, 128, 64, 64) and on each block output
    assert [b.attention1.channels for b in blocks[:4]] == [512 + 256, 64 + 128, 32 + 64, 16 + 64]
    assert isinstance(blocks[4].attention1, nn.Identity)
    assert all(isinstance(b.attention2, cls) and isinstance(b.attention1, (cls, nn.Identity)) for b in blocks)
    plain = smp.Unet("resnet18", encoder_weights=None, decoder_channels=(64, 32, 16, 16, 16), classes=2)
    extra = sum(count_params(b.attention1) + count_params(b.attention2) for b in blocks)
    assert count_params(model) == count_params(plain) + extra
    out = model.train()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 2, 64, 64)
    out.mean().backward()
    assert all(p.grad is not None for b in blocks for p in b.attention2.parameters())


def test_attention_unet_on_mkunet_encoder_and_bad_arguments():
    model = AttentionUnet("attnzoo-mkunet_t", decoder_attention="ela", decoder_attention_kwargs={"variant": "L"},
                          decoder_channels=(32, 16, 16, 8, 8)).eval()
    assert isinstance(model.encoder, MKUNetEncoder)
    assert model.decoder.blocks[0].attention1.variant == "L"
    assert "decoder_attention='ela'" in repr(model)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="decoder_attention='cbam' is not one of"):
        AttentionUnet("attnzoo-mkunet_t", decoder_attention="cbam")
    with pytest.raises(ValueError, match="not smp's decoder_attention_type"):
        AttentionUnet("attnzoo-mkunet_t", decoder_attention_type="scse")


def test_smp_own_encoders_are_left_intact():
    # registering our encoders must leave smp's own table intact
    assert smp.encoders.encoders["resnet18"]["encoder"] is smp.encoders.resnet.ResNetEncoder
    assert all(isinstance(m, MKIR) for m in MKUNetEncoder((4, 8, 16, 24, 32)).encoder1)


@pytest.mark.parametrize("name", ["smp_unet_ela", "smp_unet_ulsam", "mkunet_t"])
def test_segmentation_models_declare_they_do_not_script(name):
    """smp reads ``_is_torch_scriptable``; torch.jit.script then fails at once, naming what works instead."""
    model = create_model(name)
    assert model._is_torch_scriptable is False
    with pytest.raises(RuntimeError, match="not TorchScript-scriptable.*torch.export.export"):
        torch.jit.script(model)
