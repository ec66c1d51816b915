"""Train a TANGNN graph classifier on Fashion-MNIST superpixel graphs and save it for `attnzoo publish`.

Every image becomes a graph of about 75 SLIC superpixels (:class:`attnzoo.data.superpixels.FashionMNISTSuperpixels`:
node features = mean intensity + centroid, region-adjacency edges), built once and cached; the model
(``tangnn_graph`` by default: TANGNN layers, a global mean-pool readout, an MLP head) predicts the class of each
graph. ``--train-images`` images of the training split are split 90/10 into train and validation (seeded),
``--test-images`` images of the test split give the saved metric (graph-classification accuracy, percent), which
`attnzoo eval NAME.TAG` recomputes from the published weights. The recipe: AdamW, cosine schedule over the epochs,
cross-entropy, shuffled mini-batches of ``--batch-size`` graphs; ``metrics.csv`` and ``curves.png`` as in the other
examples. :func:`fit_graph_classifier` is the recipe, shared with benchmarks/tangnn_baselines.py.

    python examples/train_tangnn_graph.py --model-kwargs '{"m": 8, "heads": 2}' --out runs/tangnn_graph
    attnzoo publish tangnn_graph.fmnist_superpixels --from runs/tangnn_graph --to weights/
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import json_kwargs  # noqa: E402

SMOKE = dict(train_images=30, test_images=8, epochs=2, batch_size=8, hidden=8, layers=1)


def load_superpixels(train_images: int, test_images: int, seed: int = 0, val_fraction: float = 0.1,
                     fmnist_root: Path | None = None, cache: Path | None = None) -> tuple[Any, Any, Any]:
    """(train, val, test) superpixel graph sets: a seeded 90/10 split of ``train_images`` training images, and
    ``test_images`` test images."""
    import torch

    from attnzoo.data.superpixels import FashionMNISTSuperpixels

    full = FashionMNISTSuperpixels(cache, split="train", num_images=train_images, seed=seed, fmnist_root=fmnist_root)
    test = FashionMNISTSuperpixels(cache, split="test", num_images=test_images, seed=seed, fmnist_root=fmnist_root)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(val_fraction * len(full)))
    return full[order[n_val:]], full[order[:n_val]], test


def fit_graph_classifier(model: Any, train: Any, val: Any, epochs: int, lr: float = 3e-3,
                         weight_decay: float = 1e-4, batch_size: int = 64, seed: int = 0,
                         device: str = "cpu", progress: bool = False) -> list[dict[str, Any]]:
    """The recipe: AdamW, cosine over the epochs, cross-entropy on ``model(x, edge_index, batch, batch_size=B)``.

    Returns one history row per epoch (train loss, validation loss and top-1, seconds of the training epoch).
    """
    import torch
    import torch.nn.functional as F
    from torch_geometric.loader import DataLoader
    from tqdm.auto import tqdm

    model.to(device)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(loader)))
    history: list[dict[str, Any]] = []
    step, start = 0, time.perf_counter()
    for epoch in tqdm(range(1, epochs + 1), desc="epochs", disable=not progress):
        model.train()
        total, count, epoch_start = 0.0, 0, time.perf_counter()
        for batch in loader:
            batch = batch.to(device)
            loss = F.cross_entropy(model(batch.x, batch.edge_index, batch.batch, batch_size=batch.num_graphs),
                                   batch.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            total, count = total + loss.item() * batch.num_graphs, count + batch.num_graphs
        epoch_s = time.perf_counter() - epoch_start
        row: dict[str, Any] = {"epoch": epoch, "step": step, "lr": schedule.get_last_lr()[0],
                               "train_loss": total / max(count, 1), "epoch_s": epoch_s,
                               "elapsed_s": time.perf_counter() - start}
        if val is not None and len(val):
            model.eval()
            with torch.no_grad():
                losses, correct = 0.0, 0
                for batch in DataLoader(val, batch_size=256):
                    batch = batch.to(device)
                    out = model(batch.x, batch.edge_index, batch.batch, batch_size=batch.num_graphs)
                    losses += F.cross_entropy(out, batch.y, reduction="sum").item()
                    correct += int((out.argmax(-1) == batch.y).sum())
            row["val_loss"], row["val_top1"] = losses / len(val), 100.0 * correct / len(val)
        if not math.isfinite(row["train_loss"]):
            raise FloatingPointError(f"training loss is {row['train_loss']} at epoch {epoch}")
        history.append(row)
    return history


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tangnn_graph", help="a graph-level model (one row per graph)")
    parser.add_argument("--model-kwargs", default=None, help='JSON, e.g. {"m": 8, "heads": 2, "readout": "max"}')
    parser.add_argument("--train-images", type=int, default=4000, help="training-split images (90%% train, 10%% val)")
    parser.add_argument("--test-images", type=int, default=1000, help="test-split images (the saved metric)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the shuffling and the data subsets")
    parser.add_argument("--fmnist-root", type=Path, default=None, help="folder with the Fashion-MNIST idx files")
    parser.add_argument("--data-cache", type=Path, default=None,
                        help="folder of the cached graphs (default $ATTNZOO_CACHE/datasets/fmnist_superpixels)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/train_tangnn_graph"))
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--smoke", action="store_true", help="30 + 8 images, 2 epochs, a tiny model (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, min(getattr(args, key), value))
        args.progress = False

    import attnzoo
    from attnzoo.apps.evaluation import graph_accuracy
    from attnzoo.apps.training import plot_curves, seed_everything, write_metrics_csv
    from attnzoo.zoo import model_task

    if model_task(args.model) != "graph":
        raise ValueError(f"--model {args.model!r} is not a graph model; see `attnzoo list --task graph`")
    train, val, test = load_superpixels(args.train_images, args.test_images, args.seed, fmnist_root=args.fmnist_root,
                                        cache=args.data_cache)
    seed_everything(args.seed)
    model = attnzoo.create_model(args.model, in_channels=train.num_features, hidden_channels=args.hidden,
                                 num_layers=args.layers, out_channels=10, **json_kwargs(args.model_kwargs))
    start = time.perf_counter()
    history = fit_graph_classifier(model, train, val, args.epochs, args.lr, args.weight_decay, args.batch_size,
                                   args.seed, args.device, args.progress)
    args.out.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(history, args.out / "metrics.csv")
    plot_curves(history, args.out / "curves.png", title=f"{args.model} on Fashion-MNIST superpixels")
    model.cpu()
    metrics = {"accuracy": round(graph_accuracy(model, test, device="cpu")["accuracy"], 2)}
    attnzoo.save_pretrained(model, args.out, metrics=metrics, dataset=test.spec)
    print(f"{args.model} on {test.spec}: test accuracy {metrics['accuracy']:.2f} after {args.epochs} epochs "
          f"({time.perf_counter() - start:.0f} s) -> {args.out}")
    return {"metrics": metrics, "model": model, "history": history, "dataset": test.spec}


if __name__ == "__main__":
    main()
