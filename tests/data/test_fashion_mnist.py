import importlib
from collections import deque
from pathlib import Path

import pytest
import torch

# the package re-exports the function fashion_mnist, which shadows the submodule of the same name
fm = importlib.import_module("attnzoo.data.fashion_mnist")


def fake_split(folder: Path, split: str, n: int = 5, gz: bool = True,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    ext = ".gz" if gz else ""
    fm.write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    fm.write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return images, labels


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(fm, "DEBIAN_ROOT", tmp_path / "no-debian")
    monkeypatch.setenv("ATTNZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ATTNZOO_OFFLINE", "1")


@pytest.mark.parametrize("gz", [True, False])
def test_root_folder_gz_and_raw(tmp_path, no_debian, gz):
    images, labels = fake_split(tmp_path, "test", gz=gz)
    ds = fm.fashion_mnist("test", root=tmp_path)
    assert len(ds) == 5
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], images[3].float() / 255, rtol=0, atol=0)
    assert y == int(labels[3])


def test_torchvision_layout_and_transform(tmp_path, no_debian):
    images, _ = fake_split(tmp_path / "FashionMNIST" / "raw", "train", n=3)
    ds = fm.fashion_mnist("train", root=tmp_path, transform=fm.fmnist_transform(32, in_chans=3))
    x, _ = ds[1]
    assert x.shape == (3, 32, 32)
    # bilinear 28->32 keeps the mean roughly; channels are copies; values are normalised with the train stats
    torch.testing.assert_close(x[0], x[2])
    raw = images[1].float() / 255
    assert abs(x.mean().item() - (raw.mean().item() - fm.FMNIST_MEAN) / fm.FMNIST_STD) < 0.05


def test_transform_per_channel_stats_and_errors():
    t = fm.fmnist_transform(28, in_chans=2, mean=(0.5, 0.0), std=(0.5, 2.0))
    out = t(torch.ones(1, 28, 28))
    assert out[0].unique().tolist() == [1.0] and out[1].unique().tolist() == [0.5]
    with pytest.raises(ValueError, match="mean"):
        fm.fmnist_transform(28, in_chans=3, mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="image_size"):
        fm.fmnist_transform(0)


def test_not_found_lists_three_ways(tmp_path, no_debian):
    with pytest.raises(FileNotFoundError) as err:
        fm.fashion_mnist("train", root=tmp_path / "empty")
    msg = str(err.value)
    assert "root=" in msg and "apt-get install dataset-fashion-mnist" in msg and "torchvision" in msg
    assert "downloads are disabled" in msg


def test_bad_split():
    with pytest.raises(ValueError, match="split='val'"):
        fm.fashion_mnist("val")


def test_torchvision_download_path(tmp_path, no_debian, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeTorchvisionFMNIST:  # stands in for the network: writes the files torchvision would
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            fake_split(Path(root) / "FashionMNIST" / "raw", "train" if train else "test", n=2)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeTorchvisionFMNIST)
    monkeypatch.delenv("ATTNZOO_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    ds = fm.fashion_mnist("test", root=tmp_path / "dl")
    assert len(ds) == 2 and [c[1] for c in calls] == [True, False]
    # found without downloading again
    assert len(fm.fashion_mnist("train", root=tmp_path / "dl")) == 2 and len(calls) == 2


def test_download_failure_reason_is_reported(tmp_path, no_debian, monkeypatch):
    import torchvision.datasets

    def failing(root, train, download):
        raise RuntimeError("no route to host")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", failing)
    with pytest.raises(FileNotFoundError, match="no route to host"):
        fm.fashion_mnist("test", root=tmp_path, download=True)


def test_read_idx_rejects_bad_files(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    fm.write_idx(path, torch.zeros(2, 3, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="magic"):
        fm.read_idx(path, 1)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="expected 34"):
        fm.read_idx(path, 3)
    with pytest.raises(ValueError, match="uint8"):
        fm.write_idx(path, torch.zeros(2, 3))


def bfs_masks(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """Reference: breadth-first flood fill of dark pixels from the border, one image at a time."""
    out = []
    for img in images:
        dark = (img.float() / 255 <= threshold).tolist()
        h, w = len(dark), len(dark[0])
        outside = [[False] * w for _ in range(h)]
        queue = deque((i, j) for i in range(h) for j in range(w) if (i in (0, h - 1) or j in (0, w - 1)) and dark[i][j])
        for i, j in queue:
            outside[i][j] = True
        while queue:
            i, j = queue.popleft()
            for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if 0 <= a < h and 0 <= b < w and dark[a][b] and not outside[a][b]:
                    outside[a][b] = True
                    queue.append((a, b))
        out.append(~torch.tensor(outside))
    return torch.stack(out)


def test_foreground_masks_match_flood_fill_reference():
    g = torch.Generator().manual_seed(1)
    # sparse bright pixels make long winding dark paths: a hard case for the row/column sweeps
    images = (torch.rand(40, 13, 11, generator=g) < 0.45).to(torch.uint8) * 200
    expected = bfs_masks(images, fm.MASK_THRESHOLD)
    got = fm.foreground_masks(images, chunk=16)
    assert torch.equal(got, expected)
    assert 0 < (got & (images == 0)).sum() < (images == 0).sum()  # some dark pixels filled, not all


def test_foreground_masks_fill_enclosed_holes_only():
    img = torch.zeros(1, 9, 9, dtype=torch.uint8)
    img[0, 2:7, 2:7] = 255
    img[0, 3:6, 3:6] = 0  # a hole enclosed by the ring -> foreground
    mask = fm.foreground_masks(img)[0]
    assert mask[2:7, 2:7].all() and mask.sum() == 25
    img[0, 4, 2] = 0  # open the ring on the left: the hole now touches the outside
    mask = fm.foreground_masks(img)[0]
    assert not mask[4, 2] and not mask[4, 4] and mask.sum() == 25 - 10
    with pytest.raises(ValueError, match="threshold"):
        fm.foreground_masks(img, threshold=1.5)


def test_segmentation_dataset_items(tmp_path, no_debian):
    images, _ = fake_split(tmp_path, "test", n=4)
    ds = fm.fashion_mnist_segmentation("test", root=tmp_path, transform=fm.fmnist_transform(32, in_chans=3))
    x, mask = ds[2]
    assert x.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(fm.fashion_mnist_segmentation("test", root=tmp_path)[2][1][0],
                               fm.foreground_masks(images[2:3])[0].float())


debian = pytest.mark.skipif(not (fm.DEBIAN_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
                            reason="Debian package dataset-fashion-mnist not installed")


@debian
def test_debian_package_data():
    train, test = fm.fashion_mnist("train"), fm.fashion_mnist("test")
    assert (len(train), len(test)) == (60000, 10000)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    x = train.images.float() / 255
    assert abs(x.mean().item() - fm.FMNIST_MEAN) < 1e-4 and abs(x.std().item() - fm.FMNIST_STD) < 1e-4


@debian
def test_debian_segmentation_foreground_fraction():
    seg = fm.fashion_mnist_segmentation("test")
    frac = seg.masks.float().mean().item()
    bright = (seg.images > 25).float().mean().item()
    # measured: 46.55 % foreground, of which 1.11 % of all pixels are filled dark regions
    assert abs(frac - 0.4655) < 5e-4 and abs(frac - bright - 0.0111) < 5e-4
