"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; arXiv:1708.07747) as torch Datasets, found offline first.

The four idx files are looked for, in this order:

1. ``root`` when given: the files themselves (``.gz`` or uncompressed) or torchvision's ``FashionMNIST/raw``
   layout under it;
2. the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
3. a torchvision download into ``root`` (or ``datasets/`` of the cache, ``$ATTNZOO_CACHE`` or ``~/.cache/attnzoo``)
   where a network exists and neither ``ATTNZOO_OFFLINE`` nor ``HF_HUB_OFFLINE`` is on (read by
   :mod:`attnzoo.settings`, with the same meaning as for the hub).

If none works, a ``FileNotFoundError`` names the three ways. The idx files are parsed here (no torchvision
needed for the first two) and kept in memory per process, so building a split twice costs nothing.

The foreground-segmentation variant derives its masks from the images: a pixel is foreground when it is
brighter than ``threshold`` (default 25/255, above the scanner noise of the near-black background) **or** it is
enclosed by such pixels, i.e. not reachable from the image border through dark pixels (4-connected). Filling the
enclosed dark regions makes the target a silhouette (the inside of a bag handle or the gap between trouser legs
that touches the border stays background, a dark print inside a shirt becomes foreground), so a model has to
reason about shape, not only brightness.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from attnzoo import settings

__all__ = [
    "CLASSES",
    "DEBIAN_ROOT",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "MASK_THRESHOLD",
    "FashionMNIST",
    "FashionMNISTSegmentation",
    "fashion_mnist",
    "fashion_mnist_segmentation",
    "find_fashion_mnist",
    "fmnist_cfg",
    "fmnist_transform",
    "foreground_masks",
    "read_idx",
    "write_idx",
]

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Pixel statistics of the 60,000 training images scaled to [0, 1] (asserted against the data in the tests).
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
MASK_THRESHOLD = 25 / 255
SPLITS = ("train", "test")
_PREFIX = {"train": "train", "test": "t10k"}
# idx magic numbers: two zero bytes, the dtype code 0x08 (unsigned byte), then the number of dimensions.
_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}


def _file_names(split: str) -> tuple[str, str]:
    prefix = _PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_in(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of ``split`` in ``folder``, gzipped or not, else None."""
    found = []
    for name in _file_names(split):
        candidates = [folder / name, folder / f"{name}.gz"]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def _default_download_root() -> Path:
    return settings.cache_dir() / "datasets"


def _torchvision_download(root: Path) -> str | None:
    """Download through torchvision into ``root``; the reason it failed, or None on success."""
    try:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST
    except ImportError as err:
        return f"torchvision is not importable ({err})"
    try:
        TorchvisionFashionMNIST(str(root), train=True, download=True)
        TorchvisionFashionMNIST(str(root), train=False, download=True)
    except Exception as err:  # noqa: BLE001 - any network/IO failure becomes one readable reason
        return f"torchvision download into {root} failed ({type(err).__name__}: {err})"
    return None


def find_fashion_mnist(split: str, root: str | os.PathLike | None = None, download: bool | None = None
                       ) -> tuple[Path, Path]:
    """Paths of the (images, labels) idx files of ``split``, searching root, Debian, then a download.

    Args:
        split: 'train' or 'test'.
        root: a folder holding the idx files, or torchvision's root (with ``FashionMNIST/raw`` under it).
        download: allow the torchvision download; None means "unless ATTNZOO_OFFLINE / HF_HUB_OFFLINE is on".
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    folders = []
    if root is not None:
        root = Path(root).expanduser()
        folders += [root, root / "FashionMNIST" / "raw"]
    folders.append(DEBIAN_ROOT)
    for folder in folders:
        hit = _find_in(folder, split)
        if hit is not None:
            return hit
    target = root if root is not None else _default_download_root()
    hit = _find_in(target / "FashionMNIST" / "raw", split)
    if hit is not None:
        return hit
    if download is None:
        download = not settings.offline()
    reason = "downloads are disabled (ATTNZOO_OFFLINE / HF_HUB_OFFLINE is on, or download=False)"
    if download:
        reason = _torchvision_download(target) or ""
        hit = _find_in(target / "FashionMNIST" / "raw", split)
        if hit is not None:
            return hit
    names = ", ".join(f"{n}[.gz]" for n in _file_names(split))
    searched = ", ".join(str(f) for f in folders)
    raise FileNotFoundError(
        f"Fashion-MNIST {split!r} split not found ({names}); searched {searched}. Get it one of three ways:\n"
        f"  1. pass root=<folder holding the idx files> (or torchvision's root with FashionMNIST/raw in it);\n"
        f"  2. install the Debian package: sudo apt-get install dataset-fashion-mnist (files in {DEBIAN_ROOT});\n"
        f"  3. let torchvision download it into {target} (needs a network and ATTNZOO_OFFLINE/HF_HUB_OFFLINE unset)."
        + (f"\nDownload not done: {reason}" if reason else ""))


def read_idx(path: str | os.PathLike, ndim: int) -> torch.Tensor:
    """Read an unsigned-byte idx file (optionally gzipped) with ``ndim`` dimensions into a uint8 tensor."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: {len(data)} bytes is shorter than an idx header of {header} bytes")
    magic = int.from_bytes(data[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise ValueError(f"{path}: idx magic {magic:#010x}, expected {_IDX_MAGIC[ndim]:#010x} (uint8, {ndim}-D)")
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(torch.tensor(shape).prod())
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, expected {expected} for shape {tuple(shape)}")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def write_idx(path: str | os.PathLike, tensor: torch.Tensor) -> Path:
    """Write a uint8 tensor as an idx file (gzipped when the name ends in .gz), e.g. a subset or test fixture."""
    path = Path(path)
    if tensor.dim() not in _IDX_MAGIC or tensor.dtype != torch.uint8:
        raise ValueError(f"tensor: got {tensor.dtype} with {tensor.dim()} dims, expected uint8 with 1 or 3 dims")
    data = _IDX_MAGIC[tensor.dim()].to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in tensor.shape)
    data += tensor.contiguous().numpy().tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@functools.lru_cache(maxsize=8)
def _load(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(images, 3)
    y = read_idx(labels, 1).long()
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels")
    return x, y


def fmnist_transform(image_size: int | tuple[int, int] = 28, in_chans: int = 1,
                     mean: float | tuple[float, ...] | None = FMNIST_MEAN,
                     std: float | tuple[float, ...] | None = FMNIST_STD) -> Callable[[torch.Tensor], torch.Tensor]:
    """A transform of a (1, 28, 28) [0, 1] image: bilinear resize, channel repeat, then (x - mean) / std.

    ``mean``/``std`` may be per output channel (as in a timm ``pretrained_cfg``); None skips normalisation.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size={image_size!r}, expected a positive int or (height, width)")
    if in_chans < 1:
        raise ValueError(f"in_chans={in_chans}, expected >= 1")

    def channel_tensor(value: float | tuple[float, ...], name: str) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
        if t.numel() not in (1, in_chans):
            raise ValueError(f"{name}={value!r} has {t.numel()} values, expected 1 or in_chans={in_chans}")
        return t.reshape(-1, 1, 1)

    mean_t = None if mean is None else channel_tensor(mean, "mean")
    std_t = None if std is None else channel_tensor(std, "std")

    def transform(image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        image = image.expand(in_chans, -1, -1)
        if mean_t is not None:
            image = image - mean_t
        if std_t is not None:
            image = image / std_t
        return image.contiguous()

    return transform


def fmnist_cfg(image_size: int = 28, in_chans: int = 1, num_classes: int = 10) -> dict[str, Any]:
    """The timm ``pretrained_cfg`` fields of a model trained on Fashion-MNIST through :func:`fmnist_transform`."""
    return {"input_size": (in_chans, image_size, image_size), "mean": (FMNIST_MEAN,) * in_chans,
            "std": (FMNIST_STD,) * in_chans, "num_classes": num_classes, "crop_pct": 1.0, "interpolation": "bilinear"}


class FashionMNIST(Dataset):
    """Fashion-MNIST images as (1, 28, 28) float tensors in [0, 1] and int labels.

    Args:
        images: (N, 28, 28) uint8 images.
        labels: (N,) int64 labels in [0, 10).
        transform: applied to each float image (see :func:`fmnist_transform`).

    Shapes:
        item: ``(image (1, 28, 28) or the transform's shape, label int)``
    """

    classes = CLASSES

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if images.dim() != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images: got {images.dtype} {tuple(images.shape)}, expected uint8 (N, H, W)")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels: got shape {tuple(labels.shape)}, expected ({images.shape[0]},)")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def image(self, index: int) -> torch.Tensor:
        return self.images[index].float().div_(255.0).unsqueeze(0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, transform={self.transform is not None})"


def fashion_mnist(split: str, root: str | os.PathLike | None = None,
                  transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  download: bool | None = None) -> FashionMNIST:
    """The Fashion-MNIST ``split`` ('train': 60,000 images, 'test': 10,000) as a :class:`FashionMNIST`.

    Args:
        split: 'train' or 'test'.
        root: optional folder to look in first (and to download into); see the module docstring for the search.
        transform: optional per-image transform, e.g. ``fmnist_transform(32, in_chans=3)``.
        download: allow a torchvision download; None means unless offline.
    """
    images, labels = _load(*find_fashion_mnist(split, root, download))
    return FashionMNIST(images, labels, transform)


def _spread_along_rows(outside: torch.Tensor, dark: torch.Tensor) -> torch.Tensor:
    """Mark a whole horizontal run of dark pixels as outside when any pixel of the run is."""
    n, h, w = dark.shape
    run = torch.cumsum(~dark, dim=-1)  # (n, h, w): run index within each row, bright pixels end a run
    # (n, h, w) global run ids: one slot per (image, row, run)
    ids = (torch.arange(n * h).view(n, h, 1) * (w + 1) + run).reshape(-1)
    hit = torch.zeros(n * h * (w + 1), dtype=torch.uint8).scatter_reduce_(
        0, ids, outside.reshape(-1).to(torch.uint8), "amax")
    return hit[ids].view(n, h, w).bool() & dark


def foreground_masks(images: torch.Tensor, threshold: float = MASK_THRESHOLD, chunk: int = 8192) -> torch.Tensor:
    """Silhouette masks: bright pixels plus the dark regions they enclose (see the module docstring).

    The flood fill from the border alternates whole-run sweeps along rows and columns, so it needs as many
    sweeps as the longest outside path has turns, not as many as it has pixels.

    Args:
        images: (N, H, W) uint8 or float in [0, 1].
        threshold: brightness in [0, 1] above which a pixel is foreground.
        chunk: images processed at once (bounds the temporary memory).

    Shapes:
        return: (N, H, W) bool.
    """
    if images.dim() != 3:
        raise ValueError(f"images: got shape {tuple(images.shape)}, expected (N, H, W)")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold={threshold}, expected a brightness in [0, 1)")
    out = torch.empty(images.shape, dtype=torch.bool)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        dark = x <= threshold
        border = torch.ones_like(dark)
        border[:, 1:-1, 1:-1] = False
        outside = dark & border
        while True:
            grown = _spread_along_rows(outside, dark)
            grown = _spread_along_rows(grown.transpose(1, 2), dark.transpose(1, 2)).transpose(1, 2)
            if torch.equal(grown, outside):
                break
            outside = grown
        out[start:start + chunk] = ~outside
    return out


class FashionMNISTSegmentation(FashionMNIST):
    """Fashion-MNIST foreground segmentation: (image, mask) with the mask from :func:`foreground_masks`.

    Args:
        images: (N, 28, 28) uint8 images.
        labels: (N,) class labels (kept for stratified subsets; not returned).
        masks: (N, 28, 28) bool foreground masks.
        transform: applied to the float image only (a resize in it is applied to the mask too, nearest).

    Shapes:
        item: ``(image (C, H, W) float, mask (1, H, W) float in {0, 1})``
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__(images, labels, transform)
        if masks.shape != images.shape:
            raise ValueError(f"masks: got shape {tuple(masks.shape)}, expected {tuple(images.shape)}")
        self.masks = masks

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        image, _ = super().__getitem__(index)
        mask = self.masks[index].float().unsqueeze(0)  # (1, 28, 28)
        if tuple(mask.shape[-2:]) != tuple(image.shape[-2:]):
            mask = F.interpolate(mask[None], size=image.shape[-2:], mode="nearest")[0]
        return image, mask


@functools.lru_cache(maxsize=4)
def _masks(images: Path, labels: Path, threshold: float) -> torch.Tensor:
    return foreground_masks(_load(images, labels)[0], threshold)


def fashion_mnist_segmentation(split: str, root: str | os.PathLike | None = None,
                               transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                               threshold: float = MASK_THRESHOLD, download: bool | None = None
                               ) -> FashionMNISTSegmentation:
    """Fashion-MNIST ``split`` with silhouette masks derived from the images (threshold 25/255 + hole filling).

    Args:
        split: 'train' or 'test'.
        root: optional folder to look in first (see :func:`fashion_mnist`).
        transform: optional per-image transform (its resize is mirrored on the mask).
        threshold: brightness above which a pixel is foreground before the enclosed regions are filled.
        download: allow a torchvision download; None means unless offline.
    """
    files = find_fashion_mnist(split, root, download)
    images, labels = _load(*files)
    return FashionMNISTSegmentation(images, labels, _masks(*files, float(threshold)), transform)
