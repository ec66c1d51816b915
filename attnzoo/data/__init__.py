"""Dataset helpers: Fashion-MNIST (classification and foreground segmentation), graph sets, multi-view scenes."""

from attnzoo.data.fashion_mnist import (
    FMNIST_MEAN,
    FMNIST_STD,
    FashionMNIST,
    FashionMNISTSegmentation,
    fashion_mnist,
    fashion_mnist_segmentation,
    fmnist_transform,
)

__all__ = [
    "FMNIST_MEAN",
    "FMNIST_STD",
    "FashionMNIST",
    "FashionMNISTSegmentation",
    "fashion_mnist",
    "fashion_mnist_segmentation",
    "fmnist_transform",
]
