"""Fashion-MNIST superpixel graphs: features and edges of known segmentations, SLIC, the cached dataset, errors."""

import sys

import numpy as np
import pytest
import torch
from fake_fmnist import write_fake_fmnist
from torch_geometric.utils import is_undirected

from attnzoo.data.superpixels import FashionMNISTSuperpixels, superpixel_graph, superpixels_from_spec


def _blocks(image, **_):
    """A stand-in for SLIC: a 4 x 4 grid of 7 x 7 blocks, labelled 10, 20, ... (not consecutive)."""
    rows, cols = np.indices(image.shape)
    return 10 * (1 + (rows // 7) * 4 + cols // 7)


def test_features_and_region_adjacency_of_a_known_segmentation():
    image = np.arange(28 * 28, dtype=np.float64).reshape(28, 28) / (28 * 28)
    data = superpixel_graph(image, slic=_blocks)
    assert data.num_nodes == 16 and data.x.shape == (16, 3) and data.pos.shape == (16, 2)
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    centroid = torch.stack([3.0 + 7 * i, 3.0 + 7 * j], -1).reshape(16, 2)
    torch.testing.assert_close(data.pos, centroid)
    torch.testing.assert_close(data.x[:, 1:], centroid / 27)
    # the mean of a linear ramp over a block is its value at the block's centroid
    torch.testing.assert_close(data.x[:, 0], ((centroid[:, 0] * 28 + centroid[:, 1]) / 784).float())
    # region adjacency of a 4 x 4 grid: 24 touching pairs, both directions, no self-loops, no duplicates
    expected = {(a, b) for a in range(16) for b in range(16)
                if abs(a // 4 - b // 4) + abs(a % 4 - b % 4) == 1}
    assert set(map(tuple, data.edge_index.T.tolist())) == expected and data.num_edges == 48
    knn = superpixel_graph(image, edges="knn", k=3, slic=_blocks)
    assert knn.num_edges == 48 and torch.bincount(knn.edge_index[1], minlength=16).eq(3).all()
    corner_neighbours = set(knn.edge_index[0, knn.edge_index[1] == 0].tolist())
    assert {1, 4} <= corner_neighbours  # the two blocks at distance 7 from the corner block
    with pytest.raises(ValueError, match="edges must be one of"):
        superpixel_graph(image, edges="delaunay", slic=_blocks)
    with pytest.raises(ValueError, match=r"one grey \[H, W\] image"):
        superpixel_graph(np.zeros((2, 28, 28)), slic=_blocks)


def test_slic_superpixels_of_a_real_image_shape():
    pytest.importorskip("skimage")
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 8:20] = 200  # a bright rectangle on black
    data = superpixel_graph(image)
    assert 50 <= data.num_nodes <= 90
    assert is_undirected(data.edge_index) and (data.edge_index[0] != data.edge_index[1]).all()
    assert data.x[:, 0].min() >= 0 and data.x[:, 0].max() <= 200 / 255 + 1e-6
    # SLIC follows the rectangle's border: every superpixel is (nearly) all dark or all bright
    assert ((data.x[:, 0] < 0.05) | (data.x[:, 0] > 0.95 * 200 / 255)).float().mean() > 0.9


@pytest.fixture
def fake_root(tmp_path):
    (tmp_path / "fmnist").mkdir()
    return write_fake_fmnist(tmp_path / "fmnist", n_train=40, n_test=12)


def test_dataset_subset_labels_cache_and_spec(fake_root, tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    cache = tmp_path / "cache"
    ds = FashionMNISTSuperpixels(cache, split="train", num_images=10, seed=3, fmnist_root=fake_root)
    labels = torch.arange(40) % 10  # the fake set's labels
    pick = torch.randperm(40, generator=torch.Generator().manual_seed(3))[:10]
    assert len(ds) == 10 and torch.equal(torch.cat([d.y for d in ds]), labels[pick])
    assert torch.equal(torch.cat([d.image_id for d in ds]), pick)
    assert ds.num_features == 3 and ds.spec == "fashion-mnist-superpixels:split=train,num_images=10,seed=3"
    # the second construction reads the processed file: building a graph would fail now
    import attnzoo.data.superpixels as superpixels

    monkeypatch.setattr(superpixels, "superpixel_graph", lambda *a, **k: pytest.fail("rebuilt a cached set"))
    again = superpixels_from_spec(ds.spec, fmnist_root=fake_root, root=cache)
    assert again.processed_dir == ds.processed_dir
    pairs = zip(ds, again, strict=True)
    assert all(torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index) for a, b in pairs)
    # other images under the same setting get their own folder
    (tmp_path / "other").mkdir()
    other = write_fake_fmnist(tmp_path / "other", n_train=40, n_test=12, seed=1)
    monkeypatch.undo()
    assert FashionMNISTSuperpixels(cache, "train", 10, seed=3, fmnist_root=other).processed_dir != ds.processed_dir


def test_missing_scikit_image_is_named_with_the_install_command(fake_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(ImportError, match=r"needs scikit-image .*pip install 'attnzoo\[superpixels\]'"):
        FashionMNISTSuperpixels(tmp_path / "cache", split="test", num_images=4, fmnist_root=fake_root)


def test_bad_arguments_raise_value_errors(fake_root, tmp_path):
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        FashionMNISTSuperpixels(tmp_path, split="val", fmnist_root=fake_root)
    with pytest.raises(ValueError, match="FashionMNISTSuperpixels: n_segments must be a positive int, got 0"):
        FashionMNISTSuperpixels(tmp_path, n_segments=0, fmnist_root=fake_root)
    with pytest.raises(ValueError, match="edges must be one of"):
        FashionMNISTSuperpixels(tmp_path, edges="grid", fmnist_root=fake_root)
    with pytest.raises(ValueError, match=r"'colour=1' is not one of"):
        superpixels_from_spec("fashion-mnist-superpixels:colour=1", fmnist_root=fake_root)
    with pytest.raises(ValueError, match="num_images='many' is not a int"):
        superpixels_from_spec("fashion-mnist-superpixels:num_images=many", fmnist_root=fake_root)
    with pytest.raises(ValueError, match="is not a 'fashion-mnist-superpixels' spec"):
        superpixels_from_spec("fashion-mnist-knn:k=3")
    pytest.importorskip("skimage")
    with pytest.raises(ValueError, match=r"num_images must be in \[1, 12\] for split 'test', got 13"):
        FashionMNISTSuperpixels(tmp_path, split="test", num_images=13, fmnist_root=fake_root)
