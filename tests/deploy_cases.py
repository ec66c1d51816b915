"""One :class:`deploy_checks.Case` for every registered model, every published checkpoint and every layer.

The cases are small (64-px images, graphs of a few dozen nodes, two cameras' worth of BEV) so that the whole
matrix runs on a CPU; each states which sizes it declares dynamic: the batch always (nodes and edges for graphs),
height and width too for models that take any image size.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
from deploy_checks import Case, Inputs, batch_dynamic
from torch.export import Dim

import attnzoo
from attnzoo import layers

CLASSIFIER_SIZE = 64  # px of the test images of a classifier that takes any size


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _image_inputs(channels: int, size: tuple[int, int], any_size: bool, multiple: int = 1):
    def inputs(batch: int, variant: int) -> Inputs:
        h, w = size
        if variant and any_size:
            h, w = h + multiple, w + 2 * multiple  # other sides, not square: nothing may be baked in
        return (_randn(batch, channels, h, w, seed=variant),)

    return inputs


def _pretrained_cfg(name: str) -> dict:
    model = attnzoo.create_model(name, pretrained="." in name)
    return dict(model.pretrained_cfg)


def classifier_case(name: str) -> Case:
    cfg = _pretrained_cfg(name)
    channels, *size = cfg["input_size"]
    fixed = bool(cfg.get("fixed_input_size"))
    pretrained = "." in name
    if not fixed:  # at 28 px a CNN's last map is 1x1, which export specialises: show any size at 64 px
        size = [CLASSIFIER_SIZE, CLASSIFIER_SIZE]
    build = functools.partial(attnzoo.create_model, name, pretrained=pretrained)
    any_size = not fixed
    return Case(name, build, _image_inputs(channels, tuple(size), any_size, multiple=32 if any_size else 0),
                batch_dynamic(hw=(0,) if any_size else ()))


def segmentation_case(name: str) -> Case:
    build = functools.partial(attnzoo.create_model, name, pretrained="." in name)
    return Case(name, build, _image_inputs(3, (64, 64), True, multiple=32), batch_dynamic(hw=(0,)))


def _graph_inputs(in_channels: int, seed_nodes: int = 24):
    def inputs(batch: int, variant: int) -> Inputs:
        # `batch` scales the node count; a ring plus random chords keeps every node connected
        num_nodes = seed_nodes * batch + 5 * variant
        gen = torch.Generator().manual_seed(variant)
        ring = torch.arange(num_nodes)
        chords = torch.randint(0, num_nodes, (2, 2 * num_nodes), generator=gen)
        src = torch.cat([ring, (ring + 1) % num_nodes, chords[0]])
        dst = torch.cat([(ring + 1) % num_nodes, ring, chords[1]])
        x = torch.randn(num_nodes, in_channels, generator=gen)
        return x, torch.stack([src, dst])

    return inputs


def _graph_dynamic(inputs: Inputs):
    return ({0: Dim.DYNAMIC}, {1: Dim.DYNAMIC})


GRAPH_ARGS = dict(in_channels=8, hidden_channels=16, num_layers=2, out_channels=3, m=4, heads=2)


def graph_case(name: str) -> Case:
    if "." in name:
        model = attnzoo.create_model(name, pretrained=True)
        in_channels = model.convs[0].in_channels
        build = functools.partial(attnzoo.create_model, name, pretrained=True)
    else:
        in_channels = GRAPH_ARGS["in_channels"]
        build = functools.partial(attnzoo.create_model, name, **GRAPH_ARGS)
    return Case(name, build, _graph_inputs(in_channels), _graph_dynamic, image_arg=None)


def _bev_inputs(num_cameras: int = 4, image_size: tuple[int, int] = (48, 64)):
    from attnzoo.data.multiview import camera_rig

    _, _, lidar2img = camera_rig(num_cameras, image_size)

    def inputs(batch: int, variant: int) -> Inputs:
        images = torch.rand((batch, num_cameras, 3, *image_size), generator=torch.Generator().manual_seed(variant))
        return images, lidar2img.expand(batch, -1, -1, -1).contiguous()

    return inputs


def bev_case(name: str) -> Case:
    pretrained = "." in name
    kwargs = {} if pretrained else dict(bev_size=(8, 8), num_points=4)
    build = functools.partial(attnzoo.create_model, name, pretrained=pretrained, **kwargs)
    return Case(name, build, _bev_inputs(), batch_dynamic(), image_arg=None)


BUILDERS = {"classification": classifier_case, "segmentation": segmentation_case, "graph": graph_case,
            "bev": bev_case}


def model_cases(names: list[str]) -> list[Case]:
    return [BUILDERS[attnzoo.zoo.model_task(name)](name) for name in names]


# ------------------------------------------------------------------------------------------------- layers


class _MSDAHarness(nn.Module):
    """A deformable-attention layer fed from two image-like levels, so that its tensors have a batch dim."""

    def __init__(self, attn: nn.Module, sizes=((8, 8), (4, 4))) -> None:
        super().__init__()
        self.attn, self.sizes = attn, sizes

    def forward(self, query: torch.Tensor, value: torch.Tensor, reference_points: torch.Tensor,
                depth: torch.Tensor | None = None) -> torch.Tensor:
        shapes = torch.tensor(self.sizes, device=query.device)
        starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
        return self.attn(query, value, reference_points, shapes, starts, depth)


def _msda_inputs(coord_dim: int, depth_bins: int = 0, embed: int = 16, num_queries: int = 10):
    def inputs(batch: int, variant: int) -> Inputs:
        gen = torch.Generator().manual_seed(variant)
        num_keys = 8 * 8 + 4 * 4
        args = [torch.randn(batch, num_queries, embed, generator=gen), torch.randn(batch, num_keys, embed,
                                                                                   generator=gen),
                torch.rand(batch, num_queries, 2, coord_dim, generator=gen)]
        if depth_bins:
            args.append(torch.randn(batch, num_keys, depth_bins, generator=gen).softmax(-1))
        return tuple(args)

    return inputs


class _TopMHarness(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.conv(x, edge_index)


class _NHWCHarness(nn.Module):
    """NCHW in and out around a layer of (B, H, W, C) maps (NeighborhoodAttention2D takes NATTEN's layout)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _map_case(name: str, build, channels: int, size: int = 16) -> Case:
    return Case(name, build, _image_inputs(channels, (size, size), True, multiple=8), batch_dynamic(hw=(0,)))


def layer_cases() -> list[Case]:
    c = 16
    return [
        _map_case("layer:ELA", lambda: layers.ELA(c), c),
        _map_case("layer:ULSAM", lambda: layers.ULSAM(c), c),
        _map_case("layer:MKDC", lambda: layers.MKDC(c), c),
        _map_case("layer:MKIR", lambda: layers.MKIR(c, 24), c),
        _map_case("layer:HaloAttention", lambda: layers.HaloAttention(c, num_heads=2, block_size=4, halo_size=1), c),
        _map_case("layer:HaloAttention(stride 2)",
                  lambda: layers.HaloAttention(c, 32, stride=2, num_heads=2, block_size=4, halo_size=1), c),
        _map_case("layer:NeighborhoodAttention2D",
                  lambda: _NHWCHarness(layers.NeighborhoodAttention2D(c, 2, 3, dilation=2, rel_pos_bias=True)), c),
        Case("layer:NiNBlock", lambda: layers.NiNBlock(c, seq_len=12),
             lambda batch, variant: (_randn(batch, 12, c, seed=variant),), batch_dynamic(), image_arg=None),
        Case("layer:TopMAttentionConv", lambda: _TopMHarness(layers.TopMAttentionConv(8, 16, m=4, heads=2)),
             _graph_inputs(8), _graph_dynamic, image_arg=None),
        Case("layer:TopMAttentionConv(knn)",
             lambda: _TopMHarness(layers.TopMAttentionConv(8, 16, m=4, heads=2, mode="knn")),
             _graph_inputs(8), _graph_dynamic, image_arg=None),
        Case("layer:MultiScaleDeformableAttention",
             lambda: _MSDAHarness(layers.MultiScaleDeformableAttention(16, 2, num_levels=2, num_points=2)),
             _msda_inputs(2), batch_dynamic(), image_arg=None),
        Case("layer:DeformableAttention3D",
             lambda: _MSDAHarness(layers.DeformableAttention3D(16, 2, num_levels=2, num_points=2)),
             _msda_inputs(3, depth_bins=6), batch_dynamic(), image_arg=None),
    ]


def zoo_names(names: list[str]) -> list[str]:
    """The names attnzoo itself registers (not the suite's tiny test models, whichever test imported them first)."""
    entry = attnzoo.zoo.model_entry
    return [n for n in names if entry(n).entrypoint.__module__.startswith("attnzoo.")]


def all_cases() -> list[Case]:
    return [*model_cases(zoo_names(attnzoo.list_models())), *model_cases(zoo_names(attnzoo.list_pretrained())),
            *layer_cases()]
