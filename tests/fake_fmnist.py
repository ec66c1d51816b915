"""A tiny stand-in for the Fashion-MNIST idx files, for tests that must not depend on the real dataset."""

from pathlib import Path

import torch

from attnzoo.data.fashion_mnist import write_idx


def write_fake_fmnist(root: Path, n_train: int = 80, n_test: int = 24, seed: int = 0) -> Path:
    """Learnable fake data: class k is a bright 8x20 bar starting at row 2 + 2k on a dark noisy background."""
    g = torch.Generator().manual_seed(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 30, (n, 28, 28), generator=g, dtype=torch.uint8)
        for i, k in enumerate(labels.tolist()):
            images[i, 2 + 2 * k:10 + 2 * k, 4:24] = 220
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.to(torch.uint8))
    return root
