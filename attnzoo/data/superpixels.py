"""Fashion-MNIST as superpixel graphs: a graph-classification set built offline, as MNISTSuperpixels is from MNIST.

PyG's ``MNISTSuperpixels`` (from Monti et al., "Geometric deep learning on graphs and manifolds using mixture model
CNNs", CVPR 2017) turns each MNIST digit into a graph of 75 SLIC superpixels whose feature is the mean intensity and
whose position is the centroid. :class:`FashionMNISTSuperpixels` does the same with the Fashion-MNIST images
(:func:`attnzoo.data.fashion_mnist.fashion_mnist`, found offline first), as a PyG ``InMemoryDataset``:

* superpixels: ``skimage.segmentation.slic`` on the grey image in [0, 1] (``n_segments`` 75, ``compactness``
  0.25, connectivity enforced); SLIC returns about ``n_segments`` regions (67-85 on Fashion-MNIST at the defaults);
* node features ``x = [mean intensity, centroid row / 27, centroid column / 27]`` (``[n, 3]``), ``pos`` the centroid
  in pixels (``[n, 2]``, row then column), ``y`` the class (``[1]``), ``image_id`` the image's index in its split
  (``[1]``);
* edges, both directions: ``'rag'`` (default) joins superpixels that share a border (4-connected pixels), the
  region adjacency graph; ``'knn'`` joins every superpixel to its ``k`` nearest centroids
  (:func:`attnzoo.layers.knn_graph`).

The graphs are built once per setting and cached as a processed file under
``$ATTNZOO_CACHE/datasets/fmnist_superpixels`` (default ``~/.cache/attnzoo/...``, the folder Fashion-MNIST itself is
downloaded to), in a folder named by the setting and a hash of the image file they were built from (so a test's
synthetic images never pass for the real ones). Only building them needs scikit-image (``pip install
'attnzoo[superpixels]'``), and a missing scikit-image is reported with that command. ``num_images`` takes a seeded
random subset of the split.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from attnzoo._checks import check_int

__all__ = ["EDGE_MODES", "FashionMNISTSuperpixels", "superpixel_graph", "superpixels_from_spec"]

EDGE_MODES = ("rag", "knn")
FORMAT = 1  # of the processed files; part of their folder name, so a new layout never reads an old cache
SPEC_NAME = "fashion-mnist-superpixels"
# spec keys, their types and the constructor defaults (a spec names only the settings that differ from these)
_SPEC_FIELDS: dict[str, tuple[type, Any]] = {"split": (str, "train"), "num_images": (int, None),
                                             "n_segments": (int, 75), "compactness": (float, 0.25),
                                             "edges": (str, "rag"), "k": (int, 8), "seed": (int, 0)}


def _slic() -> Callable[..., np.ndarray]:
    try:
        from skimage.segmentation import slic
    except ImportError as err:
        raise ImportError(
            "building the Fashion-MNIST superpixel graphs needs scikit-image (SLIC superpixels), which is not "
            f"installed ({err}). Install it with: pip install 'attnzoo[superpixels]' (or pip install scikit-image). "
            "Graphs built before are read from the cache without it.") from err
    return slic


@functools.lru_cache(maxsize=8)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:10]


def _source_digest(split: str, fmnist_root: str | os.PathLike | None) -> str:
    """A short content hash of the idx image file of ``split`` (found as :mod:`attnzoo.data.fashion_mnist` does)."""
    from attnzoo.data.fashion_mnist import find_fashion_mnist

    images = find_fashion_mnist(split, fmnist_root)[0].resolve()
    stat = images.stat()
    return _file_digest(images, stat.st_size, stat.st_mtime_ns)


def _region_adjacency(labels: np.ndarray) -> Tensor:
    """Both directions of every pair of regions that touch (4-connectivity), sorted, without duplicates."""
    pairs = np.concatenate([np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()]),  # left-right neighbours
                            np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()])], axis=1)  # up-down
    pairs = pairs[:, pairs[0] != pairs[1]]
    pairs = np.unique(np.concatenate([pairs, pairs[::-1]], axis=1), axis=1)  # [2, E]
    return torch.from_numpy(pairs).long()


def superpixel_graph(image: np.ndarray | Tensor, n_segments: int = 75, compactness: float = 0.25,
                     edges: str = "rag", k: int = 8, slic: Callable[..., np.ndarray] | None = None) -> Data:
    """One image as a graph of its SLIC superpixels (see the module docstring).

    Args:
        image: one grey image, uint8 or float in [0, 1].
        n_segments: approximate number of superpixels (SLIC's target).
        compactness: SLIC's balance of intensity against position (higher: more square regions).
        edges: ``'rag'`` (regions that share a border) or ``'knn'`` (``k`` nearest centroids).
        k: neighbours per superpixel in ``'knn'`` mode.
        slic: the SLIC function (default: scikit-image's, imported on use).

    Shapes:
        image ``[H, W]`` -> ``x [n, 3]``, ``pos [n, 2]``, ``edge_index [2, E]``.
    """
    if edges not in EDGE_MODES:
        raise ValueError(f"edges must be one of {EDGE_MODES}, got {edges!r}")
    pixels = image.numpy() if isinstance(image, Tensor) else np.asarray(image)
    if pixels.ndim != 2:
        raise ValueError(f"image must be one grey [H, W] image, got shape {pixels.shape}")
    pixels = pixels.astype(np.float64) / 255.0 if pixels.dtype == np.uint8 else pixels.astype(np.float64)
    slic = slic or _slic()
    segments = slic(pixels, n_segments=n_segments, compactness=compactness, channel_axis=None, start_label=0,
                    enforce_connectivity=True)
    _, labels = np.unique(segments, return_inverse=True)  # consecutive ids 0..n-1
    labels = labels.reshape(segments.shape)
    num = int(labels.max()) + 1
    flat = torch.from_numpy(labels.ravel()).long()  # [H*W]
    rows, cols = np.indices(labels.shape)
    count = torch.zeros(num, dtype=torch.float64).index_add_(0, flat, torch.ones(flat.numel(), dtype=torch.float64))

    def region_mean(values: np.ndarray) -> Tensor:
        return torch.zeros(num, dtype=torch.float64).index_add_(0, flat, torch.from_numpy(values.ravel())) / count

    intensity = region_mean(pixels)
    pos = torch.stack([region_mean(rows.astype(np.float64)), region_mean(cols.astype(np.float64))], 1)  # [n, 2]
    scale = torch.tensor([max(labels.shape[0] - 1, 1), max(labels.shape[1] - 1, 1)], dtype=torch.float64)
    x = torch.cat([intensity.unsqueeze(1), pos / scale], 1).float()  # [n, 3]
    if edges == "rag":
        edge_index = _region_adjacency(labels)
    else:
        from attnzoo.layers import knn_graph

        edge_index = knn_graph(pos.float(), k)
    return Data(x=x, pos=pos.float(), edge_index=edge_index)


class FashionMNISTSuperpixels(InMemoryDataset):
    """Fashion-MNIST images as superpixel graphs, one graph per image, labelled with its class.

    Args:
        root: folder of the processed files; default ``$ATTNZOO_CACHE/datasets/fmnist_superpixels``.
        split: 'train' (60,000 images) or 'test' (10,000).
        num_images: a seeded random subset of this many images; None keeps the split.
        n_segments: SLIC's target number of superpixels per image.
        compactness: SLIC's compactness.
        edges: ``'rag'`` (region adjacency) or ``'knn'`` (``k`` nearest centroids).
        k: neighbours per superpixel for ``edges='knn'``.
        seed: seed of the subset.
        fmnist_root: where to look for the Fashion-MNIST files first (see :mod:`attnzoo.data.fashion_mnist`).
        transform: PyG transform applied on access.
        pre_transform: PyG transform applied before caching.
        pre_filter: PyG filter applied before caching.
        force_reload: rebuild even if the processed file exists.
        log: print PyG's processing messages.

    Shapes:
        item: ``Data(x [n, 3], pos [n, 2], edge_index [2, E], y [1], image_id [1])``, n about ``n_segments``.
    """

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", num_images: int | None = None,
                 n_segments: int = 75, compactness: float = 0.25, edges: str = "rag", k: int = 8, seed: int = 0,
                 fmnist_root: str | os.PathLike | None = None, transform: Callable | None = None,
                 pre_transform: Callable | None = None, pre_filter: Callable | None = None,
                 force_reload: bool = False, log: bool = False) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if edges not in EDGE_MODES:
            raise ValueError(f"edges must be one of {EDGE_MODES}, got {edges!r}")
        for name, value in (("n_segments", n_segments), ("k", k)) + ((("num_images", num_images),)
                                                                     if num_images is not None else ()):
            check_int(name, value, where="FashionMNISTSuperpixels")
        if not compactness > 0:
            raise ValueError(f"compactness must be > 0, got {compactness!r}")
        self.split, self.num_images, self.n_segments, self.compactness = split, num_images, n_segments, compactness
        self.edges, self.k, self.seed, self.fmnist_root = edges, k, seed, fmnist_root
        self.source = _source_digest(split, fmnist_root)
        if root is None:
            from attnzoo.hub import cache_root

            root = cache_root() / "datasets" / "fmnist_superpixels"
        super().__init__(str(root), transform, pre_transform, pre_filter, force_reload=force_reload, log=log)
        self.load(self.processed_paths[0])

    @property
    def spec(self) -> str:
        """The dataset string of this set (``save_pretrained(..., dataset=)``), parsed by
        :func:`superpixels_from_spec`: only the settings that differ from the defaults, e.g.
        ``'fashion-mnist-superpixels:split=test,num_images=2000'``."""
        values = {"split": self.split, "num_images": self.num_images, "n_segments": self.n_segments,
                  "compactness": self.compactness, "edges": self.edges, "k": self.k, "seed": self.seed}
        parts = [f"{key}={value}" for key, value in values.items()
                 if value != _SPEC_FIELDS[key][1] or key == "split"]
        return f"{SPEC_NAME}:" + ",".join(parts)

    @property
    def raw_file_names(self) -> list[str]:
        return []  # the images come from attnzoo.data.fashion_mnist, which finds or downloads them

    @property
    def processed_dir(self) -> str:
        # one folder per setting, so PyG's pre_transform/pre_filter records of different settings never meet
        knn = f"{self.k}" if self.edges == "knn" else ""
        name = (f"{self.split}-n{self.num_images or 'all'}-seed{self.seed}-slic{self.n_segments}"
                f"-c{self.compactness:g}-{self.edges}{knn}-{self.source}-v{FORMAT}")
        return str(Path(self.root) / name)

    @property
    def processed_file_names(self) -> list[str]:
        return ["data.pt"]

    def process(self) -> None:
        slic = _slic()
        from attnzoo.data.fashion_mnist import fashion_mnist

        images = fashion_mnist(self.split, root=self.fmnist_root)
        pick = torch.arange(len(images))
        if self.num_images is not None:
            if self.num_images > len(images):
                raise ValueError(f"num_images must be in [1, {len(images)}] for split {self.split!r}, got "
                                 f"{self.num_images}")
            pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))[:self.num_images]
        data_list = []
        for i in pick.tolist():
            data = superpixel_graph(images.images[i], self.n_segments, self.compactness, self.edges, self.k, slic)
            data.y = images.labels[i].view(1).long()
            data.image_id = torch.tensor([i])
            if self.pre_filter is not None and not self.pre_filter(data):
                continue
            data_list.append(data if self.pre_transform is None else self.pre_transform(data))
        self.save(data_list, self.processed_paths[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)}, split={self.split!r}, edges={self.edges!r})"


def superpixels_from_spec(spec: str, fmnist_root: str | os.PathLike | None = None, **kwargs: Any
                          ) -> FashionMNISTSuperpixels:
    """The :class:`FashionMNISTSuperpixels` a dataset string names, e.g.
    ``'fashion-mnist-superpixels:split=test,num_images=2000,seed=0'`` (keys: split, num_images, n_segments,
    compactness, edges, k, seed); ``kwargs`` go to the constructor (``root``, ``transform``, ...)."""
    base, _, rest = spec.partition(":")
    if base != SPEC_NAME:
        raise ValueError(f"dataset {spec!r} is not a {SPEC_NAME!r} spec")
    args: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in _SPEC_FIELDS:
            raise ValueError(f"dataset {spec!r}: {item!r} is not one of {sorted(_SPEC_FIELDS)} = value")
        cast = _SPEC_FIELDS[key][0]
        try:
            args[key] = cast(value)
        except ValueError as err:
            raise ValueError(f"dataset {spec!r}: {key}={value!r} is not a {cast.__name__}") from err
    return FashionMNISTSuperpixels(fmnist_root=fmnist_root, **args, **kwargs)
