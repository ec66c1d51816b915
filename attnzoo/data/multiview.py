"""Synthetic multi-view driving-like scenes for 2-D-to-3-D lifting: boxes on a ground plane seen by a camera ring.

Each scene is a flat textured ground (z = 0) with a few upright boxes of random size, yaw and colour, seen by
``num_cameras`` (4 to 6) pinhole cameras mounted on the ego origin at ``camera_height``, pointing outwards at
evenly spaced yaws and pitched down, with overlapping fields of view (the nuScenes rig in miniature). Images are
ray cast exactly (no rasterisation error), so every pixel has a true depth: the distance along the camera's
optical axis to the first surface, 0 where the ray hits nothing (sky). A noisy depth multiplies the true depth
by ``1 + depth_noise * N(0, 1)`` per pixel, the error model of a monocular depth network (relative error).

Frames: ego/"lidar" x forward, y left, z up; cameras OpenCV-style (x right, y down, z forward).
``lidar2img`` is ``K @ inv(cam2ego)`` padded to 4 x 4, so ``lidar2img @ [x, y, z, 1]`` gives ``(u d, v d, d, 1)``
with pixel coordinates (u, v) whose pixel centres are at half-integers, and camera depth d.

The BEV target is the occupancy of a ``bev_size`` grid over ``[-bev_range, bev_range]^2`` (rows along -x ... +x,
columns along -y ... +y): a cell is occupied when its centre lies inside a box footprint.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SyntheticMultiViewScenes", "add_depth_noise", "camera_rig", "render_scene", "sample_boxes"]


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name}={value!r} is out of range: expected {low} <= {name} <= {high}")


def camera_rig(num_cameras: int, image_size: tuple[int, int], camera_height: float = 1.2, pitch_deg: float = 12.0,
               overlap: float = 1.25, jitter: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Intrinsics, cam2ego and lidar2img of a ring of outward-looking pinhole cameras.

    Args:
        num_cameras: cameras evenly spaced in yaw, 4 to 6.
        image_size: (height, width) in pixels.
        camera_height: mounting height above the ground, metres.
        pitch_deg: downward tilt of every camera, degrees.
        overlap: horizontal field of view as a multiple of the yaw spacing (> 1 gives overlapping views).
        jitter: optional (num_cameras, 3) perturbation of (yaw rad, pitch rad, height m) per camera.

    Shapes:
        returns intrinsics (N, 3, 3), cam2ego (N, 4, 4), lidar2img (N, 4, 4), float32.
    """
    if not 4 <= num_cameras <= 6:
        raise ValueError(f"num_cameras={num_cameras!r}: expected 4 to 6 cameras")
    height, width = image_size
    fov = 2 * math.pi / num_cameras * overlap
    focal = width / 2 / math.tan(fov / 2)
    intrinsics = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]]).expand(num_cameras, 3, 3)
    delta = torch.zeros(num_cameras, 3) if jitter is None else jitter
    yaw = torch.arange(num_cameras) * (2 * math.pi / num_cameras) + delta[:, 0]
    pitch = math.radians(pitch_deg) + delta[:, 1]
    forward = torch.stack([yaw.cos() * pitch.cos(), yaw.sin() * pitch.cos(), -pitch.sin()], -1)  # camera z
    right = torch.stack([yaw.sin(), -yaw.cos(), torch.zeros_like(yaw)], -1)  # camera x
    down = torch.linalg.cross(forward, right)  # camera y (z cross x = y in a right-handed frame)
    cam2ego = torch.eye(4).repeat(num_cameras, 1, 1)
    cam2ego[:, :3, :3] = torch.stack([right, down, forward], -1)  # columns: camera axes in the ego frame
    cam2ego[:, 2, 3] = camera_height + delta[:, 2]
    k4 = torch.eye(4).repeat(num_cameras, 1, 1)
    k4[:, :3, :3] = intrinsics
    return intrinsics.contiguous(), cam2ego, k4 @ torch.linalg.inv(cam2ego)


def sample_boxes(num_boxes: int, bev_range: float, generator: torch.Generator, min_distance: float = 2.5,
                 max_tries: int = 200) -> Tensor:
    """Random upright boxes on the ground, inside the BEV range, clear of the cameras and of each other.

    Returns (num_boxes, 6) rows of (x, y, length, width, height, yaw); fewer rows if placement keeps failing.
    """
    boxes: list[Tensor] = []
    for _ in range(max_tries):
        if len(boxes) == num_boxes:
            break
        u = torch.rand(6, generator=generator)
        length, width, height = 1.0 + 2.0 * u[2], 0.8 + 1.2 * u[3], 0.6 + 1.6 * u[4]
        half_diag = 0.5 * math.hypot(length, width)
        limit = bev_range - half_diag
        x, y = (2 * u[0] - 1) * limit, (2 * u[1] - 1) * limit
        if math.hypot(x, y) < min_distance + half_diag:
            continue
        if any(math.hypot(x - b[0], y - b[1]) < half_diag + 0.5 * math.hypot(b[2], b[3]) + 0.3 for b in boxes):
            continue
        boxes.append(torch.stack([x, y, length, width, height, (u[5] - 0.5) * math.pi]))
    return torch.stack(boxes) if boxes else torch.zeros(0, 6)


def _ray_box_hits(origins: Tensor, dirs: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test of every ray against every box: entry parameter (inf on a miss), entry face axis, local point.

    Shapes:
        origins, dirs (R, 3), boxes (K, 6) -> t (R, K), axis (R, K) in {0, 1, 2}, local hit point (R, K, 3).
    """
    cos, sin = boxes[:, 5].cos(), boxes[:, 5].sin()
    rel = origins[:, None, :2] - boxes[None, :, :2]  # (R, K, 2)
    # rotate into each box frame (by -yaw); z stays: boxes stand on the ground, bottom at z = 0
    lo = torch.stack([cos * rel[..., 0] + sin * rel[..., 1], -sin * rel[..., 0] + cos * rel[..., 1],
                      origins[:, None, 2].expand_as(rel[..., 0])], -1)  # (R, K, 3)
    ld = torch.stack([cos * dirs[:, None, 0] + sin * dirs[:, None, 1], -sin * dirs[:, None, 0] + cos * dirs[:, None, 1],
                      dirs[:, None, 2].expand(-1, boxes.shape[0])], -1)
    half = torch.stack([boxes[:, 2] / 2, boxes[:, 3] / 2, boxes[:, 4] / 2], -1)  # (K, 3)
    centre = torch.stack([torch.zeros_like(half[:, 0]), torch.zeros_like(half[:, 0]), half[:, 2]], -1)
    safe = torch.where(ld.abs() < 1e-9, torch.full_like(ld, 1e-9), ld)
    t1, t2 = (centre - half - lo) / safe, (centre + half - lo) / safe
    near, far = torch.minimum(t1, t2), torch.maximum(t1, t2)
    t_near, axis = near.max(-1)
    t_far = far.min(-1).values
    t = torch.where((t_near <= t_far) & (t_near > 1e-4), t_near, torch.full_like(t_near, math.inf))
    return t, axis, lo + t.clamp(max=1e6).unsqueeze(-1) * ld


def _checker(a: Tensor, b: Tensor, cell: float) -> Tensor:
    return ((a / cell).floor() + (b / cell).floor()).remainder(2)


def render_scene(boxes: Tensor, colours: Tensor, cam2ego: Tensor, intrinsics: Tensor, image_size: tuple[int, int],
                 max_depth: float) -> tuple[Tensor, Tensor]:
    """Ray cast textured boxes and a checkered ground into every camera.

    Box faces get the box colour times a per-face Lambertian shade and a stripe pattern; the ground is a grey
    1 m checkerboard; the sky a vertical gradient. Surfaces farther than ``max_depth`` count as sky.

    Shapes:
        boxes (K, 6), colours (K, 3), cam2ego (N, 4, 4), intrinsics (N, 3, 3) -> images (N, 3, H, W) in [0, 1],
        depth (N, H, W) in metres (0 = no surface).
    """
    height, width = image_size
    num_cameras = cam2ego.shape[0]
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1).reshape(1, -1, 3, 1)  # (1, H*W, 3, 1)
    dirs_cam = (torch.linalg.inv(intrinsics)[:, None] @ pix).squeeze(-1)  # (N, H*W, 3), z = 1: t is camera depth
    dirs = (cam2ego[:, None, :3, :3] @ dirs_cam.unsqueeze(-1)).squeeze(-1).reshape(-1, 3)  # (N*H*W, 3)
    origins = cam2ego[:, None, :3, 3].expand(-1, height * width, -1).reshape(-1, 3)
    t_ground = torch.where(dirs[:, 2] < -1e-6, -origins[:, 2] / dirs[:, 2].clamp(max=-1e-6),
                           torch.full_like(dirs[:, 2], math.inf))
    ground = origins + t_ground.clamp(max=1e6).unsqueeze(-1) * dirs
    checker = _checker(ground[:, 0], ground[:, 1], 1.0)
    colour = (0.3 + 0.15 * checker).unsqueeze(-1).expand(-1, 3).clone()  # (R, 3)
    depth = t_ground
    if boxes.shape[0]:
        t_box, axis, local = _ray_box_hits(origins, dirs, boxes)
        t_first, which = t_box.min(-1)
        hit = t_first < depth
        face = axis.gather(1, which[:, None]).squeeze(1)  # 0/1: side faces, 2: top
        point = local[torch.arange(local.shape[0]), which]  # (R, 3) hit point in that box's frame
        shade = torch.tensor([0.95, 0.7, 1.0])[face]
        stripes = 0.75 + 0.25 * _checker(point[:, 0] + point[:, 1], point[:, 2], 0.25)
        box_colour = colours[which] * (shade * stripes).unsqueeze(-1)
        colour = torch.where(hit.unsqueeze(-1), box_colour, colour)
        depth = torch.where(hit, t_first, depth)
    sky = ~(depth <= max_depth)
    rows = v.reshape(1, -1).expand(num_cameras, -1).reshape(-1) / height
    sky_colour = torch.stack([0.55 + 0.2 * rows, 0.7 + 0.1 * rows, torch.full_like(rows, 0.95)], -1)
    colour = torch.where(sky.unsqueeze(-1), sky_colour, colour)
    depth = torch.where(sky, torch.zeros_like(depth), depth)
    images = colour.reshape(num_cameras, height, width, 3).permute(0, 3, 1, 2)  # (N, 3, H, W)
    return images.contiguous(), depth.reshape(num_cameras, height, width)


def add_depth_noise(depth: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Relative per-pixel depth noise: ``d * (1 + std * N(0, 1))``, clamped positive; 0 (no surface) stays 0."""
    _check_range("std", std, 0.0, 10.0)
    noise = torch.randn(depth.shape, generator=generator, dtype=depth.dtype)
    return torch.where(depth > 0, (depth * (1 + std * noise)).clamp(min=1e-3), depth)


def bev_occupancy(boxes: Tensor, bev_size: int, bev_range: float) -> Tensor:
    """(bev_size, bev_size) float mask: 1 where the cell centre lies in a box footprint (rows x, columns y)."""
    centres = (torch.arange(bev_size) + 0.5) / bev_size * 2 * bev_range - bev_range
    x, y = torch.meshgrid(centres, centres, indexing="ij")
    occupied = torch.zeros(bev_size, bev_size, dtype=torch.bool)
    for bx, by, length, width, _, yaw in boxes.tolist():
        dx, dy = x - bx, y - by
        along = dx * math.cos(yaw) + dy * math.sin(yaw)
        across = -dx * math.sin(yaw) + dy * math.cos(yaw)
        occupied |= (along.abs() <= length / 2) & (across.abs() <= width / 2)
    return occupied.float()


class SyntheticMultiViewScenes(Dataset):
    """A deterministic, infinite-style dataset of synthetic multi-view scenes (item i is always the same scene).

    Args:
        length: number of scenes.
        num_cameras: cameras in the ring, 4 to 6.
        image_size: (height, width) of every image.
        bev_size: BEV occupancy grid side, cells.
        bev_range: half side of the BEV square, metres.
        max_boxes: 1 to ``max_boxes`` boxes per scene.
        depth_noise: relative std of the noisy depth.
        max_depth: surfaces beyond this distance are sky (depth 0).
        camera_jitter: std of per-scene (yaw rad, pitch rad, height m) perturbations of every camera.
        seed: base seed; scene i uses ``seed * 1_000_003 + i``.

    Shapes:
        item: dict with images (N, 3, H, W), depth and noisy_depth (N, H, W), intrinsics (N, 3, 3),
        cam2ego and lidar2img (N, 4, 4), occupancy (bev_size, bev_size), boxes (max_boxes, 6) zero-padded and
        num_boxes ().
    """

    def __init__(self, length: int = 1000, num_cameras: int = 4, image_size: tuple[int, int] = (48, 64),
                 bev_size: int = 32, bev_range: float = 12.0, max_boxes: int = 5, depth_noise: float = 0.1,
                 max_depth: float = 30.0, camera_jitter: tuple[float, float, float] = (0.02, 0.01, 0.05),
                 seed: int = 0) -> None:
        if length < 1:
            raise ValueError(f"length={length!r}: expected at least one scene")
        if not 4 <= num_cameras <= 6:
            raise ValueError(f"num_cameras={num_cameras!r}: expected 4 to 6 cameras")
        if len(image_size) != 2 or min(image_size) < 4:
            raise ValueError(f"image_size={image_size!r}: expected (height, width), each at least 4 pixels")
        if max_boxes < 1:
            raise ValueError(f"max_boxes={max_boxes!r}: expected at least 1")
        _check_range("depth_noise", depth_noise, 0.0, 10.0)
        self.length, self.num_cameras, self.image_size = length, num_cameras, tuple(image_size)
        self.bev_size, self.bev_range, self.max_boxes = bev_size, bev_range, max_boxes
        self.depth_noise, self.max_depth, self.seed = depth_noise, max_depth, seed
        self.camera_jitter = torch.tensor(camera_jitter, dtype=torch.float32)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(f"scene index {index} out of range for {self.length} scenes")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index % self.length)
        num_boxes = int(torch.randint(1, self.max_boxes + 1, (), generator=gen))
        boxes = sample_boxes(num_boxes, self.bev_range, gen)
        hue = torch.rand(boxes.shape[0], generator=gen)
        colours = 0.5 + 0.45 * torch.stack([torch.cos(2 * math.pi * (hue + k / 3)) for k in range(3)], -1)
        jitter = torch.randn(self.num_cameras, 3, generator=gen) * self.camera_jitter
        intrinsics, cam2ego, lidar2img = camera_rig(self.num_cameras, self.image_size, jitter=jitter)
        images, depth = render_scene(boxes, colours, cam2ego, intrinsics, self.image_size, self.max_depth)
        images = (images + 0.02 * torch.randn(images.shape, generator=gen)).clamp(0, 1)
        padded = torch.zeros(self.max_boxes, 6)
        padded[: boxes.shape[0]] = boxes
        return {
            "images": images, "depth": depth, "noisy_depth": add_depth_noise(depth, self.depth_noise, gen),
            "intrinsics": intrinsics, "cam2ego": cam2ego, "lidar2img": lidar2img,
            "occupancy": bev_occupancy(boxes, self.bev_size, self.bev_range), "boxes": padded,
            "num_boxes": torch.tensor(boxes.shape[0]),
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(length={self.length}, num_cameras={self.num_cameras}, "
                f"image_size={self.image_size}, bev_size={self.bev_size}, bev_range={self.bev_range}, "
                f"depth_noise={self.depth_noise})")
