"""Train TANGNN full-batch on a node-classification graph and save it for `attnzoo publish`.

``--dataset`` is the string stored with the checkpoint, which `attnzoo eval` parses to rebuild the same graph:
``karateclub`` (PyG's KarateClub: 4 labelled vertices, the other 30 are the test set) or
``fashion-mnist-knn:split=test,k=10,num_nodes=10000,seed=0`` (the k-NN graph of Fashion-MNIST images,
:func:`attnzoo.data.graphs.fashion_mnist_knn_graph`, with its seeded 60/20/20 train/val/test masks).
The whole graph is one batch (see examples/tangnn_neighborloader.py for neighbour-sampled mini-batches).
Progress bar, ``metrics.csv`` and ``curves.png`` as in the other examples; the saved metric is the test accuracy.
:func:`fit_node_classifier` is the recipe (full-batch AdamW, cross-entropy on the training vertices), shared with
benchmarks/tangnn_baselines.py.

    python examples/train_tangnn.py --dataset karateclub --out runs/tangnn_karate
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import json_kwargs  # noqa: E402


def fit_node_classifier(model: Any, data: Any, epochs: int, lr: float = 1e-2, weight_decay: float = 5e-4,
                        progress: bool = False) -> list[dict[str, Any]]:
    """Full-batch training of ``model(x, edge_index)`` on ``data.train_mask``; one history row per epoch
    (train loss, validation loss and top-1 where ``data`` has a ``val_mask``, seconds of the training step)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    val_mask = getattr(data, "val_mask", None)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    for epoch in tqdm(range(1, epochs + 1), desc="epochs", disable=not progress):
        epoch_start = time.perf_counter()
        model.train()
        out = model(data.x, data.edge_index)
        loss = F.cross_entropy(out[data.train_mask], data.y[data.train_mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        row: dict[str, Any] = {"epoch": epoch, "step": epoch, "lr": lr, "train_loss": loss.item(),
                               "epoch_s": time.perf_counter() - epoch_start, "elapsed_s": time.perf_counter() - start}
        if val_mask is not None:
            model.eval()
            with torch.no_grad():
                out = model(data.x, data.edge_index)
            row["val_loss"] = F.cross_entropy(out[val_mask], data.y[val_mask]).item()
            row["val_top1"] = 100.0 * (out[val_mask].argmax(-1) == data.y[val_mask]).float().mean().item()
        history.append(row)
    return history


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="karateclub", help="karateclub or fashion-mnist-knn:key=value,...")
    parser.add_argument("--model", default="tangnn", help="tangnn or tangnn_lc")
    parser.add_argument("--model-kwargs", default=None, help='JSON, e.g. {"m": 8, "heads": 2, "dropout": 0.5}')
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="Fashion-MNIST folder (fashion-mnist-knn)")
    parser.add_argument("--out", type=Path, default=Path("runs/train_tangnn"))
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--smoke", action="store_true", help="KarateClub, 5 epochs (used by the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.dataset, args.epochs, args.progress = "karateclub", min(args.epochs, 5), False
    import attnzoo
    from attnzoo.apps.evaluation import graph_for_dataset, node_accuracy
    from attnzoo.apps.training import plot_curves, seed_everything, write_metrics_csv
    from attnzoo.zoo import model_task

    if model_task(args.model) != "graph":
        raise ValueError(f"--model {args.model!r} is not a graph model; see `attnzoo list --task graph`")
    data = graph_for_dataset(args.dataset, root=args.root)
    num_classes = int(data.y.max()) + 1
    seed_everything(args.seed)
    model = attnzoo.create_model(args.model, in_channels=data.num_features, hidden_channels=args.hidden,
                                 num_layers=args.layers, out_channels=num_classes, **json_kwargs(args.model_kwargs))
    start = time.perf_counter()
    history = fit_node_classifier(model, data, args.epochs, args.lr, args.weight_decay, args.progress)
    args.out.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(history, args.out / "metrics.csv")
    plot_curves(history, args.out / "curves.png", title=f"{args.model} on {args.dataset}")
    metrics = {"accuracy": round(node_accuracy(model, data)["accuracy"], 2)}
    attnzoo.save_pretrained(model, args.out, metrics=metrics, dataset=args.dataset)
    print(f"{args.model} on {args.dataset}: test accuracy {metrics['accuracy']:.2f} after {args.epochs} epochs "
          f"({time.perf_counter() - start:.0f} s) -> {args.out}")
    return {"metrics": metrics, "model": model, "history": history}


if __name__ == "__main__":
    main()
