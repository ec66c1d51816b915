"""HaloAttention: parity with timm's HaloAttn, any input size, masking, timm integration, errors."""

import pytest
import torch
import torch.nn.functional as F
from timm.layers.halo_attn import HaloAttn

from attnzoo.layers.halo import HaloAttention


def pair(**kwargs):
    """A timm HaloAttn and our layer holding the same weights."""
    torch.manual_seed(0)
    theirs = HaloAttn(**kwargs).eval()
    ours = HaloAttention(**kwargs).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


PARITY = [
    dict(dim=32, num_heads=4, block_size=4, halo_size=1),
    dict(dim=32, num_heads=4, block_size=4, halo_size=2, stride=2),
    dict(dim=32, num_heads=2, block_size=4, halo_size=1, stride=2, avg_down=True),
    dict(dim=32, num_heads=4, block_size=8, halo_size=3, scale_pos_embed=True),
    dict(dim=24, num_heads=2, block_size=3, halo_size=2, stride=2),  # odd block: full-res attention + avg pool
    dict(dim=16, dim_out=32, num_heads=4, block_size=2, halo_size=0, qkv_bias=True),
    dict(dim=32, num_heads=4, dim_head=4, block_size=4, halo_size=2, stride=2, scale_pos_embed=True),
    dict(dim=48, num_heads=2, block_size=4, halo_size=1, qk_ratio=0.33),
]


@pytest.mark.parametrize("kwargs", PARITY, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_matches_timm_halo_attn(kwargs):
    theirs, ours = pair(**kwargs)
    size = 12 if kwargs["block_size"] == 3 else 16
    x = torch.randn(2, kwargs["dim"], size, size)
    expected = theirs(x)
    got = ours(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_gradients_match_timm():
    theirs, ours = pair(dim=32, num_heads=4, block_size=4, halo_size=2, stride=2, scale_pos_embed=True)
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    grad = torch.randn(2, 32, 4, 4)
    expected = torch.autograd.grad(theirs(x), [x, *theirs.parameters()], grad)
    got = torch.autograd.grad(ours(x), [x, *ours.parameters()], grad)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_state_dict_keys_and_shapes_are_timms():
    theirs, ours = pair(dim=64, num_heads=8, block_size=8, halo_size=2, stride=2, qkv_bias=True)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    # 64 -> q 64 + kv 128 channels (with bias), two (2 * 12 - 1, 8) tables
    assert sum(p.numel() for p in ours.parameters()) == 64 * 64 + 64 + 64 * 128 + 128 + 2 * 23 * 8


@pytest.mark.parametrize("stride,avg_down,size", [(1, False, (13, 10)), (2, False, (13, 11)), (2, True, (10, 14))])
def test_any_input_size_equals_timm_on_zero_padded_input(stride, avg_down, size):
    theirs, ours = pair(dim=16, num_heads=2, block_size=4, halo_size=1, stride=stride, avg_down=avg_down)
    h, w = size
    x = torch.randn(1, 16, h, w)
    got = ours(x)
    # Zero input rows project to zero keys/values, which is what the op assumes outside the map.
    expected = theirs(F.pad(x, (0, -w % 4, 0, -h % 4)))
    if avg_down:
        expected_size = (h // 2, w // 2)
    else:
        expected_size = (-(-h // stride), -(-w // stride))
    assert got.shape[-2:] == expected_size
    torch.testing.assert_close(got, expected[..., :expected_size[0], :expected_size[1]], atol=1e-5, rtol=0)


def test_mask_padding_changes_only_border_blocks():
    theirs, ours = pair(dim=16, num_heads=2, block_size=4, halo_size=1)
    ours.mask_padding = True
    x = torch.randn(1, 16, 12, 12)
    got, expected = ours(x), theirs(x)
    # The centre block's window (rows/cols 3..8) lies inside the map: identical there; every border block differs.
    torch.testing.assert_close(got[..., 4:8, 4:8], expected[..., 4:8, 4:8], atol=1e-5, rtol=0)
    for i, j in [(0, 0), (0, 4), (8, 8), (4, 0)]:
        assert (got[..., i:i + 4, j:j + 4] - expected[..., i:i + 4, j:j + 4]).abs().max() > 1e-3


def test_compile_fullgraph_matches_eager():
    _, ours = pair(dim=16, num_heads=2, block_size=4, halo_size=1, stride=2)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    expected = torch.autograd.grad(ours(x).square().sum(), x)[0]
    got = torch.autograd.grad(compiled(x).square().sum(), x)[0]
    torch.testing.assert_close(got, expected)


def test_works_as_byobnet_self_attn_layer():
    from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg

    cfg = ByoModelCfg(blocks=(ByoBlockCfg(type="self_attn", d=1, c=32, s=1, br=0.5),
                              ByoBlockCfg(type="self_attn", d=1, c=64, s=2, br=0.5)),
                      stem_chs=16, stem_type="7x7", stem_pool="maxpool",
                      self_attn_layer=HaloAttention, self_attn_kwargs=dict(block_size=4, halo_size=1, num_heads=2))
    model = ByobNet(cfg, num_classes=5)
    layers = [m for m in model.modules() if isinstance(m, HaloAttention)]
    assert len(layers) == 2 and layers[1].block_stride == 2
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 5)  # 40 -> 10 -> 5: not block multiples


def test_dtype_device_reset_and_repr():
    layer = HaloAttention(16, num_heads=2, block_size=4, halo_size=1, dtype=torch.float64)
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    before = layer.pos_embed.height_rel.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.pos_embed.height_rel)
    assert layer.pos_embed.height_rel.std().item() == pytest.approx(layer.scale, rel=0.35)
    text = repr(layer)
    assert "block_size=4, halo_size=1" in text and "mask_padding=False" in text and "win_size=6" in text


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="dim_out=30 must be divisible by num_heads=4"):
        HaloAttention(16, dim_out=30, num_heads=4)
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        HaloAttention(16, num_heads=2, stride=3)
    with pytest.raises(ValueError, match="halo_size must be an int >= 0, got -1"):
        HaloAttention(16, num_heads=2, halo_size=-1)
    with pytest.raises(ValueError, match="block_size must be a positive int, got 0"):
        HaloAttention(16, num_heads=2, block_size=0)
    layer = HaloAttention(16, num_heads=2, block_size=4, halo_size=1)
    with pytest.raises(ValueError, match=r"HaloAttention: x must have 16 channels, got 8 \(shape \(1, 8, 8, 8\)\)"):
        layer(torch.randn(1, 8, 8, 8))
