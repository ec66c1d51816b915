"""Dataset helpers: Fashion-MNIST (classification and foreground segmentation), graph sets, multi-view scenes.

``attnzoo.data.fashion_mnist`` is the function (the public name the docs use), which hides the submodule of the
same name as an attribute: import the module's other names with ``from attnzoo.data.fashion_mnist import ...``.
"""

from attnzoo.data.fashion_mnist import (
    FMNIST_MEAN,
    FMNIST_STD,
    FashionMNIST,
    FashionMNISTSegmentation,
    fashion_mnist,
    fashion_mnist_segmentation,
    fmnist_cfg,
    fmnist_transform,
)

__all__ = [
    "FMNIST_MEAN",
    "FMNIST_STD",
    "FashionMNIST",
    "FashionMNISTSegmentation",
    "fashion_mnist",
    "fashion_mnist_segmentation",
    "fmnist_cfg",
    "fmnist_transform",
]
