"""Mini-batch TANGNN training with neighbour sampling, for graphs that do not fit in one batch.

Node classification on the k-NN graph of Fashion-MNIST images (``--graph fmnist``, real features) or on a
stochastic block model (``--graph sbm``, no download). Every step samples ``--num-neighbors`` in-neighbours per
hop around ``--batch-size`` training vertices with PyG's ``NeighborLoader`` (which needs ``pyg-lib`` or
``torch-sparse``); without either, the same batches -- seed vertices first, ``batch_size`` and ``n_id`` set -- come
from a small vectorised sampler in this file. Validation and test use the same sampling around their vertices.

In a mini-batch, a vertex's top-m attention candidates come from the sampled subgraph (the batch), not from the
whole graph: that is what makes the method fit in memory here, and it is an approximation of full-graph top-m.

Writes ``metrics.csv`` (one row per epoch), ``curves.png`` and ``model.pt`` under ``--out``.

    python examples/tangnn_neighborloader.py --graph fmnist --num-nodes 20000 --epochs 10
    python examples/tangnn_neighborloader.py --smoke --out runs/tangnn_smoke
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch_geometric.typing  # noqa: E402
from torch_geometric.data import Data  # noqa: E402
from tqdm import tqdm  # noqa: E402

from attnzoo.data.graphs import fashion_mnist_knn_graph, sbm_graph  # noqa: E402
from attnzoo.kernels.topm import sample_neighbor_mask  # noqa: E402
from attnzoo.zoo import create_model  # noqa: E402

SMOKE = dict(graph="sbm", num_nodes=240, epochs=2, batch_size=32, hidden=16, m=4)


class SampledNeighborBatches:
    """NeighborLoader-shaped batches without compiled extensions: per hop, at most k random in-edges per vertex.

    Args:
        data: the whole graph (``x``, ``y``, ``edge_index``).
        num_neighbors: neighbours sampled per vertex at each hop.
        batch_size: seed vertices per batch.
        input_nodes: boolean mask of the seed vertices.
        shuffle: reshuffle the seeds every epoch.
        seed: seed of the shuffles and samples.
    """

    def __init__(self, data: Data, num_neighbors: list[int], batch_size: int, input_nodes: torch.Tensor,
                 shuffle: bool = False, seed: int = 0) -> None:
        self.data, self.num_neighbors, self.batch_size, self.shuffle = data, num_neighbors, batch_size, shuffle
        self.seeds = input_nodes.nonzero().flatten()
        self.gen = torch.Generator().manual_seed(seed)
        src, dst = data.edge_index
        order = torch.argsort(dst, stable=True)
        self.src_by_dst = src[order]  # in-neighbours grouped by target (CSR columns)
        degree = torch.bincount(dst, minlength=data.num_nodes)
        self.rowptr = torch.cat([degree.new_zeros(1), torch.cumsum(degree, 0)])

    def __len__(self) -> int:
        return math.ceil(self.seeds.numel() / self.batch_size)

    def __iter__(self) -> Iterator[Data]:
        seeds = self.seeds[torch.randperm(self.seeds.numel(), generator=self.gen)] if self.shuffle else self.seeds
        for chunk in seeds.split(self.batch_size):
            yield self._sample(chunk)

    def _sample(self, seeds: torch.Tensor) -> Data:
        num_nodes = self.data.num_nodes
        nodes, frontier, srcs, dsts = seeds, seeds, [], []
        for k in self.num_neighbors:
            start, degree = self.rowptr[frontier], self.rowptr[frontier + 1] - self.rowptr[frontier]
            # Position of every in-edge of the frontier in the CSR arrays: start of its row + offset in the row.
            offset = torch.arange(int(degree.sum())) - torch.repeat_interleave(torch.cumsum(degree, 0) - degree,
                                                                               degree)
            dst = torch.repeat_interleave(frontier, degree)
            src = self.src_by_dst[torch.repeat_interleave(start, degree) + offset]
            keep = sample_neighbor_mask(dst, num_nodes, k, generator=self.gen)
            srcs.append(src[keep])
            dsts.append(dst[keep])
            seen = torch.zeros(num_nodes, dtype=torch.bool)
            seen[nodes] = True
            frontier = torch.unique(src[keep][~seen[src[keep]]])
            nodes = torch.cat([nodes, frontier])
        local = torch.full((num_nodes,), -1, dtype=torch.long)
        local[nodes] = torch.arange(nodes.numel())
        edge_index = torch.stack([local[torch.cat(srcs)], local[torch.cat(dsts)]])
        return Data(x=self.data.x[nodes], y=self.data.y[nodes], edge_index=edge_index, n_id=nodes,
                    batch_size=seeds.numel())


def make_loader(data: Data, num_neighbors: list[int], batch_size: int, mask: torch.Tensor, shuffle: bool,
                seed: int):
    if torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE:
        from torch_geometric.loader import NeighborLoader

        return NeighborLoader(data, num_neighbors=num_neighbors, batch_size=batch_size, input_nodes=mask,
                              shuffle=shuffle)
    return SampledNeighborBatches(data, num_neighbors, batch_size, mask, shuffle=shuffle, seed=seed)


def run_epoch(model, loader, device: torch.device, optimizer=None, progress: bool = True,
              desc: str = "") -> tuple[float, float]:
    """One pass over the loader's seed vertices; trains when an optimizer is given. Returns (loss, accuracy)."""
    model.train(optimizer is not None)
    total_loss, correct, count = 0.0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            batch = batch.to(device)
            out = model(batch.x, batch.edge_index)[:batch.batch_size]  # seed vertices come first
            y = batch.y[:batch.batch_size]
            loss = F.cross_entropy(out, y)
            if optimizer is not None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            total_loss += loss.item() * y.numel()
            correct += int((out.argmax(-1) == y).sum())
            count += y.numel()
    return total_loss / max(count, 1), correct / max(count, 1)


def load_graph(args: argparse.Namespace) -> Data:
    if args.graph == "fmnist":
        return fashion_mnist_knn_graph("train", k=args.k, num_nodes=args.num_nodes, seed=args.seed)
    classes = 5
    sizes = [args.num_nodes // classes] * classes
    # Sparse inter-block edges and weak features: the graph, not the features alone, carries the classes.
    return sbm_graph(sizes, p_in=min(1.0, 8 / sizes[0]), p_out=1 / args.num_nodes, num_channels=16,
                     feature_shift=0.3, seed=args.seed)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy")
    for key in ("train_acc", "val_acc", "test_acc"):
        ax_acc.plot(epochs, [r[key] for r in rows], label=key.replace("_acc", ""))
    ax_acc.set(xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", choices=["fmnist", "sbm"], default="fmnist")
    parser.add_argument("--num-nodes", type=int, default=20_000, help="vertices (fmnist: a seeded image subset)")
    parser.add_argument("--k", type=int, default=10, help="k of the Fashion-MNIST k-NN graph")
    parser.add_argument("--num-neighbors", type=int, nargs="+", default=[10, 10], help="sampled per hop")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--m", type=int, default=16, help="top-m attention candidates per vertex")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--mode", choices=["aux", "knn"], default="aux")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--out", type=Path, default=Path("runs/tangnn_neighborloader"))
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    parser.add_argument("--smoke", action="store_true", help="a tiny SBM graph, two epochs (used by the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
        args.progress = False
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)

    data = load_graph(args)
    num_classes = int(data.y.max()) + 1
    loaders = {split: make_loader(data, args.num_neighbors, args.batch_size, data[f"{split}_mask"],
                                  shuffle=split == "train", seed=args.seed) for split in ("train", "val", "test")}
    model = create_model("tangnn", in_channels=data.num_features, hidden_channels=args.hidden,
                         out_channels=num_classes, num_layers=len(args.num_neighbors), m=args.m, heads=args.heads,
                         mode=args.mode, dropout=args.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{data} | {num_classes} classes | {sum(p.numel() for p in model.parameters())} parameters | "
          f"{len(loaders['train'])} train batches | {type(loaders['train']).__name__}")

    rows = []
    with open(args.out / "metrics.csv", "w", newline="") as handle:
        writer = None
        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            train_loss, train_acc = run_epoch(model, loaders["train"], device, optimizer, args.progress,
                                              f"epoch {epoch}")
            val_loss, val_acc = run_epoch(model, loaders["val"], device, progress=args.progress, desc="val")
            _, test_acc = run_epoch(model, loaders["test"], device, progress=args.progress, desc="test")
            rows.append(dict(epoch=epoch, train_loss=round(train_loss, 5), train_acc=round(train_acc, 4),
                             val_loss=round(val_loss, 5), val_acc=round(val_acc, 4), test_acc=round(test_acc, 4),
                             seconds=round(time.perf_counter() - start, 2)))
            if writer is None:
                writer = csv.DictWriter(handle, fieldnames=list(rows[-1]))
                writer.writeheader()
            writer.writerow(rows[-1])
            handle.flush()
            print(rows[-1], flush=True)
    plot(rows, args.out / "curves.png")
    torch.save(model.state_dict(), args.out / "model.pt")
    return rows


if __name__ == "__main__":
    main()
