"""NiNformer classifiers: the authors' CIFAR model (exact size and cost), the NiNBlock ViT, timm's model checks."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm_model_checks import check_timm_classifier

import attnzoo.zoo  # noqa: F401  (registers the models)
from attnzoo.layers.ninformer import NiNBlock
from attnzoo.profiling import count_macs, count_params
from attnzoo.zoo import create_model


def _block_params(d: int, n: int, f: int, shared_norm: bool = True) -> int:
    """Parameters of one NiNBlock: gate Linear(d, d), Mixer (2 norms, token MLP n-f-n, channel MLP d-f-d), FFN."""
    mlp = d * f + f + f * d + d
    mixer = 2 * (2 * d) + (n * f + f + f * n + n) + mlp
    return (d * d + d) + mixer + mlp + (1 if shared_norm else 2) * 2 * d


def test_cifar_model_size_matches_authors():
    # 4x4 patch conv 3->256, 4 blocks on 64 tokens, linear head: the spec's 2.652M / 2.675M
    assert _block_params(256, 64, 512) == 659_264
    assert count_params(create_model("ninformer_cifar")) == 2_652_170 == 48 * 256 + 256 + 4 * 659_264 + 2_570
    assert count_params(create_model("ninformer_cifar", num_classes=100)) == 2_675_300
    assert count_params(create_model("ninformer_cifar", shared_norm=False)) == 2_652_170 + 4 * 512


def test_cifar_model_cost_at_32px():
    # ptflops convention (Linear/Conv with bias, LayerNorm 2*numel per call, GELU numel): the shared norm is
    # called twice per block. The linear/conv MACs without biases are 218.9M, the spec's "219M".
    tokens, d, f = 64, 256, 512
    token_mlp = d * (tokens * f + f) + d * (f * tokens + tokens)  # applied to each of the d channel rows
    linear = tokens * (d * d + d) + token_mlp + 2 * tokens * (d * f + f + f * d + d)
    norms, gelus = 4 * 2 * tokens * d, d * f + 2 * tokens * f
    expected = (48 * d * tokens + d * tokens) + 4 * (linear + norms + gelus) + (d * 10 + 10)
    model = create_model("ninformer_cifar").eval()
    assert count_macs(model, torch.randn(1, 3, 32, 32)) == expected == 221_268_490


def test_cifar_model_is_the_authors_pipeline():
    # patch conv -> tokens -> blocks -> mean over tokens -> linear; no position embedding, class token or final norm
    model = create_model("ninformer_cifar").eval()
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"patch_embed", "blocks", "head"}
    assert all(isinstance(b, NiNBlock) and b.seq_len == 64 and b.dropout == 0.5 and b.shared_norm for b in model.blocks)
    x = torch.randn(2, 3, 32, 32)
    tokens = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=4)
    tokens = tokens.flatten(2).transpose(1, 2)  # (B, 64, 256), row-major patch order
    expected = model.head(model.blocks(tokens).mean(dim=1))
    torch.testing.assert_close(model(x), expected)


def test_cifar_model_passes_timm_checks():
    # token model: forward_features gives (B, N, d); features_only gives NCHW maps through forward_intermediates
    check_timm_classifier("ninformer_cifar", input_size=(3, 32, 32), spatial=False)


def test_vit_variant_passes_timm_checks():
    check_timm_classifier("ninformer_vit_tiny_patch16", input_size=(3, 32, 32), spatial=False, img_size=32, depth=3)


def test_vit_variant_uses_ninblocks_through_block_fn():
    model = timm.create_model("ninformer_vit_tiny_patch16")
    assert type(model) is timm.models.VisionTransformer
    assert model.pos_embed is None and model.cls_token is None and model.global_pool == "avg"
    assert all(isinstance(b, NiNBlock) and (b.seq_len, b.d_ffn) == (196, 384) for b in model.blocks)
    # patch embed + 12 blocks + fc_norm + head; no attention parameters anywhere
    expected = (3 * 16 * 16 * 192 + 192) + 12 * _block_params(192, 196, 384) + 2 * 192 + (192 * 1000 + 1000)
    assert count_params(model) == expected == 6_165_592
    with_cls = timm.create_model("ninformer_vit_tiny_patch16", img_size=32, depth=1, class_token=True,
                                 global_pool="token")
    assert with_cls.blocks[0].seq_len == 5 and with_cls(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


@pytest.mark.parametrize("name, kwargs", [("ninformer_cifar", {}),
                                          ("ninformer_vit_tiny_patch16", dict(img_size=32, depth=1))])
def test_other_input_size_raises(name, kwargs):
    model = create_model(name, **kwargs)
    with pytest.raises(ValueError, match=r"built for \(32, 32\) images, got input of shape \(1, 3, 64, 64\).*"
                                         r"img_size=\(64, 64\)"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"built for \(32, 32\) images"):
        model.forward_intermediates(torch.randn(1, 3, 48, 32))


def test_bad_build_arguments_raise():
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        create_model("ninformer_vit_tiny_patch16", dynamic_img_size=True)
    with pytest.raises(ValueError, match="init_values=0.1"):
        create_model("ninformer_vit_tiny_patch16", img_size=32, depth=1, init_values=0.1)
    with pytest.raises(ValueError, match="global_pool must be one of \\('', 'avg'\\), got 'token'"):
        create_model("ninformer_cifar", global_pool="token")
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW' or 'NLC', got 'NHWC'"):
        create_model("ninformer_cifar").forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt="NHWC")


def test_other_image_size_and_intermediates():
    model = create_model("ninformer_cifar", img_size=(16, 24), depth=2).eval()
    assert model.blocks[0].seq_len == 24
    final, maps = model.forward_intermediates(torch.randn(1, 3, 16, 24))
    assert final.shape == (1, 24, 256) and [m.shape for m in maps] == [(1, 256, 4, 6)] * 2
    tokens = model.forward_intermediates(torch.randn(1, 3, 16, 24), indices=[0], output_fmt="NLC",
                                         intermediates_only=True)
    assert [t.shape for t in tokens] == [(1, 24, 256)]


@pytest.mark.parametrize("name, kwargs", [("ninformer_cifar", dict(num_classes=3, shared_norm=False, depth=1)),
                                          ("ninformer_vit_tiny_patch16", dict(img_size=32, depth=1, num_classes=7))])
def test_save_and_from_pretrained_rebuild_the_same_model(tmp_path, name, kwargs):
    import attnzoo

    model = create_model(name, **kwargs).eval()
    attnzoo.save_pretrained(model, tmp_path)
    loaded = attnzoo.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert repr(loaded.blocks[0]).splitlines()[1] == repr(model.blocks[0]).splitlines()[1]  # seq_len, shared_norm
