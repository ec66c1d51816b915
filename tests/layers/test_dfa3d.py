"""DeformableAttention3D, MultiScaleDeformableAttention, MultiViewLifting and the dfa3d_bev_tiny model."""

import math

import pytest
import torch

from attnzoo.data.multiview import camera_rig
from attnzoo.kernels.dfa3d import deform_attn_3d_naive, ms_deform_attn_naive
from attnzoo.layers.dfa3d import (
    DeformableAttention3D,
    MultiScaleDeformableAttention,
    depth_distribution,
    flatten_levels,
)
from attnzoo.zoo.bev_lifting import MultiViewLifting

SHAPES = [(6, 8), (3, 4)]


def level_inputs(bs=2, nq=5, channels=16, num_bins=6, anchors=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    value, shapes, starts = flatten_levels([torch.randn(bs, channels, h, w, generator=gen) for h, w in SHAPES])
    query = torch.randn(bs, nq, channels, generator=gen)
    reference = torch.rand(bs, nq, anchors, 3, generator=gen)
    depth = torch.randn(bs, value.shape[1], num_bins, generator=gen).softmax(-1)
    return query, value, reference, shapes, starts, depth


def test_parameter_counts_match_the_published_layers():
    # Deformable DETR's MSDeformAttn (d=256, 8 heads, 4 levels, 4 points): offsets 256x256, weights 256x128,
    # value and output projections 256x256, with biases
    assert sum(p.numel() for p in MultiScaleDeformableAttention(256, 8, 4, 4).parameters()) == 230_272
    # BEVFormer-DFA3D's attention (8 points): + a 256 -> 8*4*8 depth-offset branch, plus the output projection
    dfa3d = DeformableAttention3D(256, 8, 4, 8)
    assert sum(p.numel() for p in dfa3d.parameters()) == 4 * 65_792 + (256 * 512 + 512)
    assert dfa3d.sampling_offsets_depth.weight.shape == (256, 256)


def test_offset_initialisation_follows_the_authors():
    attn = DeformableAttention3D(32, 4, 2, 3)
    depth_bias = attn.sampling_offsets_depth.bias.view(4, 2, 3)
    xy_bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    for h in range(4):
        theta = 2 * math.pi * h / 4
        direction = torch.tensor([math.cos(theta), math.sin(theta)])
        direction = direction / direction.abs().max()
        for p in range(3):
            assert depth_bias[h, 1, p].item() == pytest.approx((math.cos(theta) + math.sin(theta)) / 2 * (p + 1))
            torch.testing.assert_close(xy_bias[h, 0, p], direction * (p + 1))
    assert attn.sampling_offsets_depth.weight.abs().max() == 0 and attn.attention_weights.weight.abs().max() == 0


def _manual_dfa3d(attn, query, value, reference, shapes, starts, depth):
    """BEVFormer-DFA3D's forward written out step by step on the naive (volume) reference."""
    bs, nq, _ = query.shape
    nh, lv, pts = attn.num_heads, attn.num_levels, attn.num_points
    anchors = reference.shape[2]
    v = attn.value_proj(value).view(bs, -1, nh, attn.embed_dims // nh)
    weights = attn.attention_weights(query).view(bs, nq, nh, lv * pts).softmax(-1).view(bs, nq, nh, lv, pts)
    xy = attn.sampling_offsets(query).view(bs, nq, nh, lv, pts, 2) / shapes.flip(-1).view(1, 1, 1, lv, 1, 2)
    z = attn.sampling_offsets_depth(query).view(bs, nq, nh, lv, pts, 1) / depth.shape[-1]
    locations = torch.empty(bs, nq, nh, lv, pts, 3)
    for p in range(pts):  # point p belongs to anchor p % anchors, as BEVFormer's (P / Z, Z) split
        locations[:, :, :, :, p] = reference[:, :, None, None, p % anchors] + torch.cat([xy, z], -1)[:, :, :, :, p]
    sampled = deform_attn_3d_naive(v, depth, shapes, starts, locations, weights)
    return query + attn.output_proj(sampled)


def test_dfa3d_module_matches_a_step_by_step_reference():
    torch.manual_seed(0)
    attn = DeformableAttention3D(16, 2, 2, 4, dropout=0.0).eval()
    for p in attn.parameters():  # random weights so that every branch matters
        torch.nn.init.normal_(p, std=0.3)
    inputs = level_inputs()
    with torch.no_grad():
        torch.testing.assert_close(attn(*inputs[:5], depth=inputs[5]), _manual_dfa3d(attn, *inputs),
                                   rtol=1e-5, atol=1e-5)


def test_dfa3d_with_one_hot_depth_reduces_to_2d_attention():
    torch.manual_seed(1)
    attn3d = DeformableAttention3D(16, 2, 2, 4, dropout=0.0).eval()
    attn2d = MultiScaleDeformableAttention(16, 2, 2, 4, dropout=0.0).eval()
    attn2d.load_state_dict({k: v for k, v in attn3d.state_dict().items() if "depth" not in k})
    torch.nn.init.normal_(attn3d.attention_weights.weight, std=0.3)
    attn2d.attention_weights.weight.data.copy_(attn3d.attention_weights.weight)
    torch.nn.init.zeros_(attn3d.sampling_offsets_depth.bias)
    query, value, reference, shapes, starts, depth = level_inputs(num_bins=6)
    one_hot = torch.zeros_like(depth)
    one_hot[..., 4] = 1
    reference[..., 2] = 4.5 / 6  # every reference point at bin 4's centre, no depth offset
    with torch.no_grad():
        out3d = attn3d(query, value, reference, shapes, starts, one_hot)
        out2d = attn2d(query, value, reference[..., :2], shapes, starts)
    torch.testing.assert_close(out3d, out2d, rtol=1e-5, atol=1e-6)
    assert (out3d - attn3d(query, value, reference, shapes, starts, depth)).abs().max() > 1e-3


def test_2d_module_matches_grid_sample_reference():
    torch.manual_seed(2)
    attn = MultiScaleDeformableAttention(16, 2, 2, 4, dropout=0.0).eval()
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.3)
    query, value, reference, shapes, starts, _ = level_inputs(anchors=1)
    with torch.no_grad():
        out = attn.sample(query, value, reference[..., :2], shapes, starts)
        bs, nq, _ = query.shape
        weights = attn.attention_weights(query).view(bs, nq, 2, 8).softmax(-1).view(bs, nq, 2, 2, 4)
        offsets = attn.sampling_offsets(query).view(bs, nq, 2, 2, 4, 2) / shapes.flip(-1).view(1, 1, 1, 2, 1, 2)
        locations = reference[:, :, None, None, :, :2] + offsets
        expected = ms_deform_attn_naive(attn.value_proj(value).view(bs, -1, 2, 8), shapes, starts, locations, weights)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_compile_fullgraph_matches_eager():
    attn = DeformableAttention3D(16, 2, 2, 4, dropout=0.0).eval()
    inputs = level_inputs()
    compiled = torch.compile(attn, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs[:5], depth=inputs[5]), attn(*inputs[:5], depth=inputs[5]))


def test_module_bad_inputs():
    attn = DeformableAttention3D(16, 2, 2, 4)
    query, value, reference, shapes, starts, depth = level_inputs(anchors=3)
    with pytest.raises(ValueError, match=r"reference_points \(2, 5, 3, 3\).*num_anchors dividing num_points=4"):
        attn(query, value, reference, shapes, starts, depth)
    with pytest.raises(ValueError, match=r"needs depth"):
        attn(query, value, reference[:, :, :2], shapes, starts)
    with pytest.raises(ValueError, match=r"query \(2, 5, 8\): expected \(bs, num_queries, 16\)"):
        attn(query[..., :8], value, reference[:, :, :2], shapes, starts, depth)
    with pytest.raises(ValueError, match="embed_dims=10 must be divisible by num_heads=4"):
        DeformableAttention3D(10, 4)


def test_depth_distribution_bins_and_pools():
    depth = torch.tensor([[1.2, 1.7], [0.0, 40.0]])  # bins of (1, 31, 0.5): 0, 1, no depth, out of range
    dist = depth_distribution(depth, (1.0, 31.0, 0.5))
    assert dist.shape == (60, 2, 2)
    assert dist[0, 0, 0] == 1 and dist[1, 0, 1] == 1 and dist[:, 1].sum() == 0
    pooled = depth_distribution(depth, (1.0, 31.0, 0.5), (1, 1))
    assert pooled[0, 0, 0] == 0.25 and pooled[1, 0, 0] == 0.25 and pooled.sum() == 0.5


def _lifting_inputs(lifting, cams=4, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    _, _, lidar2img = camera_rig(cams, (32, 48))
    features = [torch.randn(batch, cams, 16, h, w, generator=gen) for h, w in [(8, 12), (4, 6)]]
    dist = depth_distribution(torch.rand(batch, cams, 8, 12, generator=gen) * 20 + 1, lifting.depth_bound)
    return features, lidar2img.expand(batch, -1, -1, -1), dist


@pytest.mark.parametrize("attention", ["dfa3d", "2d"])
def test_lifting_averages_only_over_views_that_see_the_pillar(attention):
    torch.manual_seed(0)
    lifting = MultiViewLifting(16, (6, 6), num_heads=2, num_points=4, num_anchors=2, attention=attention,
                               dropout=0.0).eval()
    features, lidar2img, dist = _lifting_inputs(lifting)
    _, visible = lifting.project_pillars(lidar2img, (32, 48))
    assert visible.shape == (1, 4, 36) and visible.any(1).all()  # the ring of cameras sees every pillar
    with torch.no_grad():
        bev, used = lifting(features, lidar2img, (32, 48), dist)
        changed = [f.clone() for f in features]
        for f in changed:
            f[:, 1] += 5.0  # only camera 1's features change
        bev_changed, _ = lifting(changed, lidar2img, (32, 48), dist)
    # reference without BEVFormer's rebatching: every pillar in every view, masked mean over the views that see it
    with torch.no_grad():
        flat = [f.flatten(0, 1) + lifting.level_embed[i].view(1, -1, 1, 1) for i, f in enumerate(features)]
        keys, shapes, starts = flatten_levels(flat)
        keys = keys + lifting.cams_embed[:4].unsqueeze(1)
        ref, _ = lifting.project_pillars(lidar2img, (32, 48))
        halved = torch.nn.functional.avg_pool2d(dist[0], 2)  # level 1 is half the size of level 0
        key_depth = flatten_levels([dist[0], halved])[0] if attention == "dfa3d" else None
        per_view = lifting.attn.sample(lifting.bev_embed.expand(4, -1, -1), keys,
                                       ref[0, ..., : 3 if attention == "dfa3d" else 2], shapes, starts, key_depth,
                                       lifting.bev_pos().expand(4, -1, -1))
        mask = visible[0].unsqueeze(-1).float()
        expected = lifting.attn.project((per_view * mask).sum(0) / mask.sum(0), lifting.bev_embed)
    torch.testing.assert_close(bev[0], expected, rtol=1e-5, atol=1e-5)
    moved = (bev - bev_changed).abs().amax(-1)[0] > 1e-6
    assert torch.equal(moved, visible[0, 1])  # exactly the pillars camera 1 sees move
    assert bev.shape == (1, 36, 16) and (used is dist if attention == "dfa3d" else used is None)


def test_lifting_depth_head_and_gradients():
    lifting = MultiViewLifting(16, (4, 4), num_heads=2, num_points=4, num_anchors=2)
    for linear in (lifting.attn.sampling_offsets, lifting.attn.attention_weights):
        torch.nn.init.normal_(linear.weight, std=0.1)  # zero at init, which blocks the gradient to the queries
    features, lidar2img, _ = _lifting_inputs(lifting, batch=2)
    bev, dist = lifting(features, lidar2img, (32, 48))
    assert dist.shape == (2, 4, 60, 8, 12)
    torch.testing.assert_close(dist.sum(2), torch.ones(2, 4, 8, 12))
    bev.square().sum().backward()
    missing = [n for n, p in lifting.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert missing == []
    with pytest.raises(ValueError, match=r"depth \(2, 4, 5, 8, 12\): expected \(2, 4, 60, h, w\)"):
        lifting(features, lidar2img, (32, 48), torch.zeros(2, 4, 5, 8, 12))
    with pytest.raises(ValueError, match="attention='3d': expected 'dfa3d' or '2d'"):
        MultiViewLifting(attention="3d")


def test_bev_model_registered_and_switches_attention():
    from attnzoo.zoo import create_model, model_task

    assert model_task("dfa3d_bev_tiny") == "bev"
    gen = torch.Generator().manual_seed(0)
    images, depth = torch.rand(1, 4, 3, 32, 48, generator=gen), torch.rand(1, 4, 32, 48, generator=gen) * 20
    lidar2img = camera_rig(4, (32, 48))[2].unsqueeze(0)
    for attention, params in (("dfa3d", 102_477), ("2d", 89_105)):
        model = create_model("dfa3d_bev_tiny", attention=attention, bev_size=(8, 8)).eval()
        assert model.lifting.attention == attention
        # the BEV query table shrinks with bev_size: 32*32*32 at the default size
        assert sum(p.numel() for p in model.parameters()) == params - 32 * (32 * 32 - 8 * 8) - 16 * 2 * (32 - 8)
        assert model(images, lidar2img, depth).shape == (1, 8, 8)
    with pytest.raises(ValueError, match=r"depth \(1, 4, 16, 48\): expected \(B, N, H, W\)"):
        model(images, lidar2img, depth[:, :, :16])
