"""Synthetic multi-view scenes: geometry consistency, determinism, depth noise, occupancy, bad input."""

import math

import pytest
import torch

from attnzoo.data.multiview import SyntheticMultiViewScenes, add_depth_noise, camera_rig, render_scene


@pytest.fixture(scope="module")
def scene():
    return SyntheticMultiViewScenes(length=4, num_cameras=5, image_size=(24, 32), bev_size=24, seed=3)[1]


def test_item_shapes_and_ranges(scene):
    shapes = {k: tuple(v.shape) for k, v in scene.items()}
    assert shapes == {"images": (5, 3, 24, 32), "depth": (5, 24, 32), "noisy_depth": (5, 24, 32),
                      "intrinsics": (5, 3, 3), "cam2ego": (5, 4, 4), "lidar2img": (5, 4, 4),
                      "occupancy": (24, 24), "boxes": (5, 6), "num_boxes": ()}
    assert 0 <= scene["images"].min() and scene["images"].max() <= 1
    assert 0.2 < (scene["depth"] > 0).float().mean() < 1  # ground and boxes, and some sky
    assert scene["depth"].max() <= 30


def test_depth_unprojects_onto_ground_or_a_box_and_reprojects_to_its_pixel(scene):
    cams, height, width = scene["depth"].shape
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3)
    boxes = scene["boxes"][: scene["num_boxes"]]
    on_box_pixels = 0
    for c in range(cams):
        d = scene["depth"][c].reshape(-1)
        keep = d > 0
        cam_pts = (torch.linalg.inv(scene["intrinsics"][c]) @ pix[keep].T).T * d[keep, None]
        ego = (scene["cam2ego"][c] @ torch.cat([cam_pts, torch.ones_like(cam_pts[:, :1])], 1).T).T
        img = (scene["lidar2img"][c] @ ego.T).T
        torch.testing.assert_close(img[:, :2] / img[:, 2:3], pix[keep, :2], atol=2e-3, rtol=0)
        on_ground = ego[:, 2].abs() < 1e-3
        on_box = torch.zeros_like(on_ground)
        for x, y, length, width_, h, yaw in boxes.tolist():
            dx, dy = ego[:, 0] - x, ego[:, 1] - y
            local = torch.stack([dx * math.cos(yaw) + dy * math.sin(yaw), -dx * math.sin(yaw) + dy * math.cos(yaw),
                                 ego[:, 2] - h / 2], 1).abs()
            half = torch.tensor([length / 2, width_ / 2, h / 2])
            # on the surface: inside the box (with tolerance) and on one face
            on_box |= (local <= half + 1e-3).all(1) & ((local - half).abs() < 1e-3).any(1)
        assert (on_ground | on_box).all()
        on_box_pixels += int(on_box.sum())
    assert on_box_pixels > 0


def test_occupancy_marks_box_footprints():
    data = SyntheticMultiViewScenes(length=8, bev_size=48, bev_range=12.0, seed=5)
    for i in range(3):
        item = data[i]
        boxes = item["boxes"][: item["num_boxes"]]
        area = float((boxes[:, 2] * boxes[:, 3]).sum())
        cell = (24.0 / 48) ** 2
        assert item["occupancy"].sum() * cell == pytest.approx(area, rel=0.35)
        for x, y, *_ in boxes.tolist():  # the cell under each box centre is occupied
            row, col = int((x + 12) / 24 * 48), int((y + 12) / 24 * 48)
            assert item["occupancy"][row, col] == 1


def test_scenes_are_deterministic_and_distinct():
    data = SyntheticMultiViewScenes(length=3, image_size=(16, 24), seed=1)
    a, b, c = data[0], data[0], data[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["images"], c["images"])
    assert not torch.equal(a["images"], SyntheticMultiViewScenes(length=3, image_size=(16, 24), seed=2)[0]["images"])
    with pytest.raises(IndexError, match="scene index 3 out of range for 3 scenes"):
        data[3]


def test_noisy_depth_has_the_requested_relative_error():
    depth = torch.full((200, 200), 10.0)
    depth[:50] = 0
    noisy = add_depth_noise(depth, 0.2, torch.Generator().manual_seed(0))
    assert noisy[:50].abs().max() == 0  # no surface stays no surface
    relative = noisy[50:] / 10 - 1
    assert relative.std().item() == pytest.approx(0.2, rel=0.03)
    assert relative.mean().abs() < 0.01
    assert torch.equal(add_depth_noise(depth, 0.0), depth)


def test_camera_ring_covers_every_direction_and_looks_outwards():
    for cams in (4, 5, 6):
        _, cam2ego, lidar2img = camera_rig(cams, (24, 32))
        forward = cam2ego[:, :3, 2]
        yaws = torch.atan2(forward[:, 1], forward[:, 0])
        expected = torch.arange(cams) * 2 * math.pi / cams
        torch.testing.assert_close(torch.remainder(yaws - expected + math.pi, 2 * math.pi) - math.pi,
                                   torch.zeros(cams), atol=1e-5, rtol=0)
        # a point 10 m along each camera's yaw on the ground projects inside that camera's image
        pts = torch.stack([10 * expected.cos(), 10 * expected.sin(), torch.zeros(cams), torch.ones(cams)], 1)
        img = torch.einsum("nij,nj->ni", lidar2img, pts)
        u, v = img[:, 0] / img[:, 2], img[:, 1] / img[:, 2]
        assert ((img[:, 2] > 0) & (u > 0) & (u < 32) & (v > 0) & (v < 24)).all()


def test_render_without_boxes_is_ground_and_sky():
    intrinsics, cam2ego, _ = camera_rig(4, (16, 24))
    images, depth = render_scene(torch.zeros(0, 6), torch.zeros(0, 3), cam2ego, intrinsics, (16, 24), 30.0)
    assert images.shape == (4, 3, 16, 24)
    assert (depth[:, :2] == 0).all() and (depth[:, -2:] > 0).all()  # sky on top, ground at the bottom


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_cameras=3: expected 4 to 6 cameras"):
        SyntheticMultiViewScenes(num_cameras=3)
    with pytest.raises(ValueError, match="num_cameras=7: expected 4 to 6 cameras"):
        camera_rig(7, (8, 8))
    with pytest.raises(ValueError, match=r"depth_noise=-0.1 is out of range"):
        SyntheticMultiViewScenes(depth_noise=-0.1)
    with pytest.raises(ValueError, match=r"image_size=\(2, 8\)"):
        SyntheticMultiViewScenes(image_size=(2, 8))
