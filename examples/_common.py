"""Pieces shared by the example scripts: common flags, image-folder datasets and the model's data config.

Not an attnzoo API: the examples import it by path (``sys.path`` holds the script's folder when a script runs).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# what --smoke changes: a handful of images, two optimiser steps, no progress bars in captured output
SMOKE = dict(train_subset=48, val_subset=16, batch_size=8, max_steps=2, epochs=1)


def add_common_args(parser: argparse.ArgumentParser, epochs: int, lr: float, batch_size: int, out: str) -> None:
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--lr", type=float, default=lr, help="peak AdamW learning rate")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: the model's cfg)")
    parser.add_argument("--train-subset", type=int, default=None, help="train on the first N of a seeded shuffle")
    parser.add_argument("--val-subset", type=int, default=None, help="validate on the first N of a seeded shuffle")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    parser.add_argument("--out", type=Path, default=Path(out),
                        help="folder for the checkpoint, metrics.csv, curves.png")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a few images (used by the tests)")


def apply_smoke(args: argparse.Namespace) -> argparse.Namespace:
    """Shrink the run for --smoke (explicit smaller values are kept)."""
    if args.smoke:
        for key, value in SMOKE.items():
            current = getattr(args, key)
            setattr(args, key, value if current is None else min(current, value))
        args.progress = False
    return args


def smoke_default(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str,
                  value: Callable[[], Any]) -> None:
    """Fill the flag ``--name`` left unset: with ``value()`` under --smoke, else stop with argparse's error."""
    if getattr(args, name) is not None:
        return
    if not args.smoke:
        parser.error(f"--{name} is required (only --smoke runs without it)")
    setattr(args, name, value())


def write_smoke_images(masks: bool = False, classes: int = 3, per_class: int = 16) -> Path:
    """Tiny seeded RGB images in a new temporary folder, for --smoke runs given no --data.

    ``masks=False``: an ImageFolder (one sub-folder per class, the class's colour channel brightened);
    ``masks=True``: ``images/`` + ``masks/`` pairs (a bright square on a dark background, its mask).
    """
    import tempfile

    import numpy as np
    from PIL import Image

    root = Path(tempfile.mkdtemp(prefix="attnzoo-smoke-"))
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            pixels = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
            if masks:
                top, left = rng.integers(2, 12, 2)
                pixels[top:top + 10, left:left + 10] += 150
                mask = np.zeros((24, 24), dtype=np.uint8)
                mask[top:top + 10, left:left + 10] = 255
                for folder, array in (("images", pixels), ("masks", mask)):
                    (root / folder).mkdir(exist_ok=True)
                    Image.fromarray(array).save(root / folder / f"{c}_{i}.png")
            else:
                pixels[:, :, c] += 150
                (root / f"class{c}").mkdir(exist_ok=True)
                Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def json_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"--model-kwargs must be a JSON object, got {text!r}")
    return value


def seeded_subset(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """The first ``n`` items of a seeded permutation (all of them when n is None)."""
    if n is None or n >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:n].tolist())


def split_train_val(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction={val_fraction}, expected in (0, 1)")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(val_fraction * len(order)))
    return Subset(dataset, order[n_val:]), Subset(dataset, order[:n_val])


def pil_to_tensor(image_size: int, in_chans: int, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, nearest: bool = False) -> Callable[[Any], torch.Tensor]:
    """PIL image -> (in_chans, image_size, image_size) float tensor, normalised when mean/std are given."""
    from torchvision import transforms

    if in_chans not in (1, 3):
        raise ValueError(f"image files give 1 or 3 channels, the model wants in_chans={in_chans}")
    mode = "L" if in_chans == 1 else "RGB"
    interpolation = transforms.InterpolationMode.NEAREST if nearest else transforms.InterpolationMode.BILINEAR
    steps: list[Callable[[Any], Any]] = [lambda img: img.convert(mode),
                                         transforms.Resize((image_size, image_size), interpolation=interpolation),
                                         transforms.PILToTensor(), lambda t: t.float() / 255.0]
    if mean is not None and std is not None:
        steps.append(transforms.Normalize(mean, std))
    return transforms.Compose(steps)


def image_folder_splits(root: Path, transform: Callable[[Any], torch.Tensor], val_fraction: float, seed: int
                        ) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, classes) from ``root/train`` + ``root/val`` when both exist, else a seeded split of ``root``."""
    from torchvision.datasets import ImageFolder

    if (root / "train").is_dir() and (root / "val").is_dir():
        train = ImageFolder(str(root / "train"), transform=transform)
        val = ImageFolder(str(root / "val"), transform=transform)
        if val.classes != train.classes:
            raise ValueError(f"{root}/val classes {val.classes} differ from {root}/train classes {train.classes}")
        return train, val, train.classes
    full = ImageFolder(str(root), transform=transform)
    train, val = split_train_val(full, val_fraction, seed)
    return train, val, full.classes


class ImageMaskFolder(Dataset):
    """``root/images/<stem>.<ext>`` with ``root/masks/<stem>.<ext>``; a mask pixel > 127 is foreground.

    Shapes:
        item: ``(image (in_chans, S, S) float normalised, mask (1, S, S) float in {0, 1})``
    """

    def __init__(self, root: Path, image_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float]
                 ) -> None:
        def files(folder: Path) -> dict[str, Path]:
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} does not exist; expected {root}/images and {root}/masks")
            return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}

        images, masks = files(root / "images"), files(root / "masks")
        missing = sorted(set(images) ^ set(masks))
        if missing:
            raise ValueError(f"{root}: images and masks must pair up by file stem; unpaired: {missing[:5]}")
        if not images:
            raise ValueError(f"{root}/images holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.pairs = [(images[k], masks[k]) for k in sorted(images)]
        self.image_tf = pil_to_tensor(image_size, in_chans, mean, std)
        self.mask_tf = pil_to_tensor(image_size, 1, nearest=True)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        image_path, mask_path = self.pairs[index]
        with Image.open(image_path) as image, Image.open(mask_path) as mask:
            return self.image_tf(image), (self.mask_tf(mask) > 0.5).float()
