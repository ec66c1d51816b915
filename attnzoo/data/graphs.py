"""Graph data for the graph layers: KarateClub, a k-NN graph of Fashion-MNIST images, and synthetic generators.

* :func:`karate_club` -- PyG's built-in KarateClub (34 vertices, 4 classes, one training vertex per class).
* :func:`fashion_mnist_knn_graph` -- Fashion-MNIST images joined by their exact k-NN graph
  (:func:`attnzoo.layers.knn_graph`; real features, node classification).
* :func:`sbm_graph` -- stochastic block model with class-dependent features (PyG's generator; O(N²) sampling,
  for graphs up to some thousands of vertices); :func:`fake_dataset` -- PyG's ``FakeDataset``, seeded;
  :func:`random_graph` -- exactly ``edges_per_node`` random in-edges per vertex, for scale runs up to millions.
* :func:`long_range_graphs` -- chains whose every label is written on one distant "beacon" vertex, so that
  aggregating a few hops cannot see it: the long-range sanity check of top-m attention.

Graph classification: :class:`attnzoo.data.superpixels.FashionMNISTSuperpixels` (SLIC superpixel graphs of the
images, as PyG's MNISTSuperpixels).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.datasets import FakeDataset, KarateClub
from torch_geometric.utils import stochastic_blockmodel_graph, to_undirected

from attnzoo.layers.knn_graph import knn_graph

__all__ = [
    "fake_dataset",
    "fashion_mnist_knn_graph",
    "karate_club",
    "long_range_graphs",
    "random_graph",
    "sbm_graph",
]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _split_masks(num_nodes: int, fractions: tuple[float, float], gen: torch.Generator) -> dict[str, Tensor]:
    """Random disjoint train/val/test masks with the given train and val fractions.

    Train is ``perm[:int(f_train·N)]``, val the next ``int(f_val·N)``, test the rest, of one permutation drawn from
    ``gen`` (after the subset draw of :func:`fashion_mnist_knn_graph`). This stays hand-written: PyG's
    ``RandomNodeSplit`` cannot give the same masks, and a published graph checkpoint's metric depends on them.
    Its ``'train_rest'`` split reads the permutation as val | test | train (sizes by ``round``, not ``int``) from
    the global generator; ``'random'``/``'test_rest'`` draw a per-class training set first. With the global state
    set to ``gen``'s, ``'train_rest'`` on the tangnn.fmnist_knn graph (5,000 vertices, seed 0) makes every one of
    its 1,000 test vertices a vertex the checkpoint trained on, and its accuracy reads 81.70 instead of the
    published 78.20.
    """
    perm = torch.randperm(num_nodes, generator=gen)
    n_train, n_val = int(fractions[0] * num_nodes), int(fractions[1] * num_nodes)
    masks = {}
    for name, part in (("train_mask", perm[:n_train]), ("val_mask", perm[n_train:n_train + n_val]),
                       ("test_mask", perm[n_train + n_val:])):
        masks[name] = torch.zeros(num_nodes, dtype=torch.bool)
        masks[name][part] = True
    return masks


def karate_club() -> Data:
    """Zachary's karate club (PyG): x = one-hot identity [34, 34], 4 classes, ``train_mask`` (4 vertices) and
    ``test_mask`` (the other 30)."""
    data = KarateClub()[0]
    data.test_mask = ~data.train_mask
    return data


def fashion_mnist_knn_graph(split: str = "train", k: int = 10, num_nodes: int | None = None,
                            root: str | os.PathLike | None = None, seed: int = 0,
                            fractions: tuple[float, float] = (0.6, 0.2)) -> Data:
    """Fashion-MNIST images as vertices (pixels in [0, 1] as features), joined by their k-NN graph.

    Args:
        split: 'train' (60,000 images) or 'test' (10,000).
        k: neighbours per image (Euclidean distance on pixels).
        num_nodes: keep a seeded random subset of this many images; None keeps the split.
        root: where to look for the files first (see :func:`attnzoo.data.fashion_mnist.fashion_mnist`).
        seed: seed of the subset and of the train/val/test masks.
        fractions: train and val fractions of the vertices (the rest is test).

    Shapes:
        ``x [N, 784]``, ``y [N]``, ``edge_index [2, N·k]``, ``train_mask``/``val_mask``/``test_mask [N]``.
    """
    from attnzoo.data.fashion_mnist import fashion_mnist

    dataset = fashion_mnist(split, root=root)
    gen = _generator(seed)
    images, labels = dataset.images, dataset.labels
    if num_nodes is not None:
        if not 1 <= num_nodes <= len(dataset):
            raise ValueError(f"num_nodes must be in [1, {len(dataset)}], got {num_nodes}")
        pick = torch.randperm(len(dataset), generator=gen)[:num_nodes]
        images, labels = images[pick], labels[pick]
    x = images.flatten(1).float() / 255.0  # [N, 784]
    return Data(x=x, y=labels.long(), edge_index=knn_graph(x, k), **_split_masks(x.size(0), fractions, gen))


def sbm_graph(block_sizes: list[int], p_in: float, p_out: float, num_channels: int = 16, feature_shift: float = 1.0,
              seed: int = 0, fractions: tuple[float, float] = (0.6, 0.2)) -> Data:
    """Undirected stochastic block model; a vertex's class is its block, its features a noisy class centroid.

    Args:
        block_sizes: vertices per block (= class).
        p_in: edge probability inside a block.
        p_out: edge probability between blocks.
        num_channels: feature width.
        feature_shift: distance of the class centroids from the origin (0: features carry no label signal).
        seed: seed of the graph, the features and the masks.
        fractions: train and val fractions of the vertices.
    """
    num_blocks = len(block_sizes)
    probs = torch.full((num_blocks, num_blocks), p_out)
    probs.fill_diagonal_(p_in)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        edge_index = stochastic_blockmodel_graph(block_sizes, probs, directed=False)
    gen = _generator(seed)
    y = torch.repeat_interleave(torch.arange(num_blocks), torch.tensor(block_sizes))
    centroids = torch.randn(num_blocks, num_channels, generator=gen)
    x = feature_shift * centroids[y] + torch.randn(y.size(0), num_channels, generator=gen)
    return Data(x=x, y=y, edge_index=edge_index, **_split_masks(y.size(0), fractions, gen))


def fake_dataset(seed: int = 0, **kwargs) -> FakeDataset:
    """PyG's ``FakeDataset`` (random sizes around ``avg_num_nodes``), made reproducible by ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return FakeDataset(**kwargs)


def random_graph(num_nodes: int, edges_per_node: int = 10, num_channels: int = 64, num_classes: int = 10,
                 seed: int = 0) -> Data:
    """Exactly ``edges_per_node`` uniformly random in-edges per vertex, Gaussian features and random labels.

    Built in O(N·edges_per_node) time and memory, for scale runs (one million vertices is ~0.5 GiB).
    """
    gen = _generator(seed)
    src = torch.randint(num_nodes, (num_nodes * edges_per_node,), generator=gen)
    dst = torch.arange(num_nodes).repeat_interleave(edges_per_node)
    return Data(x=torch.randn(num_nodes, num_channels, generator=gen), edge_index=torch.stack([src, dst]),
                y=torch.randint(num_classes, (num_nodes,), generator=gen))


def long_range_graphs(num_graphs: int, num_nodes: int = 20, num_classes: int = 4, noise_channels: int = 4,
                      seed: int = 0) -> Batch:
    """Undirected chains whose vertices all carry the class written on one beacon vertex of the chain.

    Features are ``[is_beacon, one-hot class (beacon only), Gaussian noise]``, so a vertex more than L hops
    from its beacon cannot be classified by L rounds of neighbourhood aggregation (chance level), while an
    attention that can pick out the beacon -- by its features, anywhere in the graph -- solves every vertex.

    Args:
        num_graphs: chains in the batch.
        num_nodes: vertices per chain.
        num_classes: label classes.
        noise_channels: Gaussian noise features per vertex.
        seed: seed of beacon positions, classes and noise.

    Shapes:
        ``x [G·n, 1 + num_classes + noise_channels]``, ``y [G·n]``, ``batch [G·n]``; attribute ``beacon [G·n]``.
    """
    if num_graphs < 1 or num_nodes < 2 or num_classes < 2:
        raise ValueError(f"need num_graphs >= 1, num_nodes >= 2, num_classes >= 2; got {num_graphs}, "
                         f"{num_nodes}, {num_classes}")
    gen = _generator(seed)
    path = torch.stack([torch.arange(num_nodes - 1), torch.arange(1, num_nodes)])
    path = to_undirected(path, num_nodes=num_nodes)
    graphs = []
    for cls, where in zip(torch.randint(num_classes, (num_graphs,), generator=gen).tolist(),
                          torch.randint(num_nodes, (num_graphs,), generator=gen).tolist(), strict=True):
        x = torch.zeros(num_nodes, 1 + num_classes + noise_channels)
        x[:, 1 + num_classes:] = torch.randn(num_nodes, noise_channels, generator=gen)
        x[where, 0] = 1.0
        x[where, 1 + cls] = 1.0
        beacon = torch.zeros(num_nodes, dtype=torch.bool)
        beacon[where] = True
        graphs.append(Data(x=x, edge_index=path, y=torch.full((num_nodes,), cls), beacon=beacon))
    return Batch.from_data_list(graphs)
