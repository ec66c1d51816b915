"""Random DFA3D / MSDA inputs shared by the op tests and the Triton kernel tests."""

import torch

SHAPES = ((5, 7), (3, 4))  # two levels, 35 + 12 keys


def make_inputs(bs=2, nq=6, nh=2, channels=3, num_points=3, num_bins=5, dtype=torch.float64, seed=0, shapes=SHAPES,
                shape_dtype=torch.int64):
    """Random inputs in the MSDA layout; (x, y, z) spill outside [0, 1] so zero padding on every border is used."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=shape_dtype)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cumsum(sizes, 0) - sizes
    num_keys, num_levels = int(sizes.sum()), len(shapes)
    value = torch.randn(bs, num_keys, nh, channels, generator=gen, dtype=dtype)
    depth = torch.randn(bs, num_keys, num_bins, generator=gen, dtype=dtype).softmax(-1)
    locations = torch.rand(bs, nq, nh, num_levels, num_points, 3, generator=gen, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(bs, nq, nh, num_levels, num_points, generator=gen, dtype=dtype)
    return value, depth, spatial_shapes, level_start_index, locations, weights
