"""TANGNN on a heterogeneous graph with PyG's ``to_hetero``: Fashion-MNIST images and their superpixels.

The graph has two node types and four relations, built from real data:

* ``image`` vertices (features: the image average-pooled to 7 x 7, 49 values; label: the class) and ``superpixel``
  vertices (features: mean intensity + centroid, 3 values; the SLIC superpixels of
  :class:`attnzoo.data.superpixels.FashionMNISTSuperpixels`);
* ``(superpixel, adjacent, superpixel)``: region adjacency inside each image; ``(superpixel, part_of, image)`` and
  ``(image, contains, superpixel)``: membership; ``(image, similar, image)``: the k-NN graph of the pooled images.

``to_hetero(TANGNN(-1, ...), metadata)`` turns the homogeneous TANGNN into one :class:`TopMAttentionConv` per
relation (lazy ``in_channels``, so every relation gets its own source and destination widths: 3 -> 49 for
``part_of``); the relations into a node type are summed. On a relation between two node types the layer is
bipartite: image vertices attend to their top-m superpixels by relevance, and the other way round. The task is
node classification of the image vertices (seeded 60/20/20 masks), full batch, the recipe of
examples/train_tangnn.py (AdamW, cross-entropy on the training vertices); ``--compile`` runs the hetero model
through ``torch.compile``. Writes ``metrics.csv``, ``curves.png`` and ``model.pt`` (the hetero model's state dict).

    python examples/tangnn_hetero.py --images 2000 --epochs 60 --out runs/tangnn_hetero
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMOKE = dict(images=20, epochs=2, hidden=8)


def image_superpixel_graph(images: int, k: int = 5, seed: int = 0, fmnist_root: Path | None = None,
                           cache: Path | None = None) -> Any:
    """The ``HeteroData`` of the module docstring for ``images`` seeded test-split images."""
    import torch
    import torch.nn.functional as F
    from torch_geometric.data import Batch, HeteroData

    from attnzoo.data.fashion_mnist import fashion_mnist
    from attnzoo.data.superpixels import FashionMNISTSuperpixels
    from attnzoo.layers import knn_graph

    graphs = Batch.from_data_list(list(FashionMNISTSuperpixels(cache, split="test", num_images=images, seed=seed,
                                                               fmnist_root=fmnist_root)))
    pixels = fashion_mnist("test", root=fmnist_root).images[graphs.image_id].float() / 255.0  # [I, 28, 28]
    pooled = F.avg_pool2d(pixels.unsqueeze(1), 4).flatten(1)  # [I, 49]
    data = HeteroData()
    data["image"].x, data["image"].y = pooled, graphs.y
    data["superpixel"].x = graphs.x
    membership = torch.stack([torch.arange(graphs.num_nodes), graphs.batch])  # superpixel -> its image
    data["superpixel", "adjacent", "superpixel"].edge_index = graphs.edge_index
    data["superpixel", "part_of", "image"].edge_index = membership
    data["image", "contains", "superpixel"].edge_index = membership.flip(0)
    data["image", "similar", "image"].edge_index = knn_graph(pooled, k)
    order = torch.randperm(images, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(0.6 * images), int(0.2 * images)
    for name, part in (("train_mask", order[:n_train]), ("val_mask", order[n_train:n_train + n_val]),
                       ("test_mask", order[n_train + n_val:])):
        mask = torch.zeros(images, dtype=torch.bool)
        mask[part] = True
        data["image"][name] = mask
    return data


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="test-split images (image vertices)")
    parser.add_argument("--k", type=int, default=5, help="image-image k-NN neighbours")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--m", type=int, default=8, help="top-m candidates per vertex and relation")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="train the torch.compile'd hetero model")
    parser.add_argument("--fmnist-root", type=Path, default=None, help="folder with the Fashion-MNIST idx files")
    parser.add_argument("--data-cache", type=Path, default=None, help="folder of the cached superpixel graphs")
    parser.add_argument("--out", type=Path, default=Path("runs/tangnn_hetero"))
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--smoke", action="store_true", help="20 images, 2 epochs, a tiny model (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, min(getattr(args, key), value))
        args.progress = False
    import torch
    import torch.nn.functional as F
    from torch_geometric.nn import to_hetero
    from tqdm.auto import tqdm

    from attnzoo.apps.training import plot_curves, seed_everything, write_metrics_csv
    from attnzoo.zoo.tangnn import TANGNN

    data = image_superpixel_graph(args.images, args.k, args.seed, args.fmnist_root, args.data_cache)
    seed_everything(args.seed)
    model = to_hetero(TANGNN(-1, args.hidden, args.layers, out_channels=10, m=args.m, heads=args.heads),
                      data.metadata(), aggr="sum")
    with torch.no_grad():  # materialise the lazy per-relation weights before the optimiser sees them
        model(data.x_dict, data.edge_index_dict)
    forward = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    images = data["image"]

    def accuracy(out: torch.Tensor, mask: torch.Tensor) -> float:
        return 100.0 * (out[mask].argmax(-1) == images.y[mask]).float().mean().item()

    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    for epoch in tqdm(range(1, args.epochs + 1), desc="epochs", disable=not args.progress):
        model.train()
        out = forward(data.x_dict, data.edge_index_dict)["image"]
        loss = F.cross_entropy(out[images.train_mask], images.y[images.train_mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            out = forward(data.x_dict, data.edge_index_dict)["image"]
        history.append({"epoch": epoch, "step": epoch, "lr": args.lr, "train_loss": loss.item(),
                        "val_loss": F.cross_entropy(out[images.val_mask], images.y[images.val_mask]).item(),
                        "val_top1": accuracy(out, images.val_mask), "elapsed_s": time.perf_counter() - start})
    metrics = {"accuracy": round(accuracy(out, images.test_mask), 2)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(history, args.out / "metrics.csv")
    plot_curves(history, args.out / "curves.png", title="to_hetero(TANGNN): images + superpixels")
    torch.save(model.state_dict(), args.out / "model.pt")
    relations = ", ".join("-".join(t) for t in data.edge_types)
    print(f"to_hetero(TANGNN) on {args.images} images + {data['superpixel'].num_nodes} superpixels ({relations}): "
          f"test accuracy {metrics['accuracy']:.2f} after {args.epochs} epochs ({time.perf_counter() - start:.0f} s)"
          f" -> {args.out}")
    return {"metrics": metrics, "model": model, "history": history, "data": data}


if __name__ == "__main__":
    main()
