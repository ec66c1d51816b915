"""TANGNN beside PyG's GraphSAGE, GAT, TransformerConv and GPS (GPSConv) on two Fashion-MNIST graph tasks, 3 seeds.

(a) node classification on the k-NN graph of Fashion-MNIST test images (:func:`attnzoo.data.graphs.
fashion_mnist_knn_graph`: pixels as features, k=10, seeded 60/20/20 masks), trained full-batch with
examples/train_tangnn.py's recipe (:func:`fit_node_classifier`: AdamW lr 1e-2, weight decay 5e-4);
(b) graph classification on Fashion-MNIST superpixel graphs (:class:`attnzoo.data.superpixels.
FashionMNISTSuperpixels`: ~75 SLIC superpixels, mean intensity + centroid, region adjacency), trained with
examples/train_tangnn_graph.py's recipe (:func:`fit_graph_classifier`: AdamW lr 3e-3, cosine, batches of 64 graphs).

Every model has the same depth and width; a graph model is its node encoder, ReLU, PyG's ``global_mean_pool`` and
the same two-layer MLP head as ``tangnn_graph``. The rows:

- TANGNN (ours): ``tangnn`` / ``tangnn_graph``, 'aux' top-m (m=8, 2 heads, 10 sampled neighbours in training);
- GraphSAGE: PyG's ``GraphSAGE`` (mean aggregation);
- GAT: PyG's ``GAT`` (2 heads, concatenated);
- TransformerConv: PyG's ``BasicGNN`` machinery around ``TransformerConv`` (2 heads, concatenated);
- GPS: ``GPSConv`` layers (GINConv local MPNN + multi-head attention over every vertex of a graph, batch norm), as
  PyG's examples/graph_gps.py builds them, after a linear input embedding.

Per row: parameters, test accuracy mean ± sd over seeds 0-2 (the metric after the last epoch, no early stopping),
training seconds per epoch (mean over epochs and seeds), and the peak memory one training step adds (full graph
for (a), one batch of 64 graphs for (b); ``_harness.peak_memory_mb``, seed 0, before training).

    python benchmarks/tangnn_baselines.py                       # both tasks, the sizes of the results file
    python benchmarks/tangnn_baselines.py --task node --nodes 2000 --node-epochs 50
    python benchmarks/tangnn_baselines.py --task node --node-graph karateclub --layers 3 --name tangnn_baselines_karate
    # the checkpoints' settings (tangnn.fmnist_knn: 5,000 images, 60 epochs; tangnn.karate: 3 layers, 100 epochs)
    python benchmarks/tangnn_baselines.py --task node --nodes 5000 --node-epochs 60 --tangnn-m 16 --tangnn-heads 1 \
        --name tangnn_baselines_knn5000
    python benchmarks/tangnn_baselines.py --task node --node-graph karateclub --layers 3 --tangnn-m 16 \
        --tangnn-heads 1 --name tangnn_baselines_karate_ckpt
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _harness import peak_memory_mb, threads_from_env, write_result  # noqa: E402
from torch import nn  # noqa: E402
from torch_geometric.nn import GAT, MLP, GINConv, GPSConv, GraphSAGE, TransformerConv, global_mean_pool  # noqa: E402
from torch_geometric.nn.models.basic_gnn import BasicGNN  # noqa: E402

import attnzoo  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SEEDS = (0, 1, 2)
HEADS = 2


def _example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXAMPLES))
    spec.loader.exec_module(module)
    return module


class TransformerNet(BasicGNN):
    """PyG's BasicGNN stack around TransformerConv (heads concatenated; one head where they do not divide)."""

    supports_edge_weight = False
    supports_edge_attr = False
    supports_norm_batch = False

    def init_conv(self, in_channels: int, out_channels: int, **kwargs) -> TransformerConv:
        heads = kwargs.pop("heads", 1)
        heads = heads if out_channels % heads == 0 else 1
        return TransformerConv(in_channels, out_channels // heads, heads=heads, **kwargs)


class GPS(nn.Module):
    """Linear embedding, ``num_layers`` GPSConv(GINConv) layers, optional linear output (PyG's graph_gps.py)."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, out_channels: int | None = None,
                 heads: int = HEADS) -> None:
        super().__init__()
        self.embed = nn.Linear(in_channels, hidden_channels)
        self.convs = nn.ModuleList(
            GPSConv(hidden_channels, GINConv(MLP([hidden_channels, hidden_channels, hidden_channels])), heads=heads)
            for _ in range(num_layers))
        self.lin = nn.Linear(hidden_channels, out_channels) if out_channels is not None else None

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor | None = None,
                batch_size: int | None = None) -> torch.Tensor:
        x = self.embed(x)
        for conv in self.convs:
            x = conv(x, edge_index, batch)
        return self.lin(x) if self.lin is not None else x


class GraphLevel(nn.Module):
    """A node encoder, ReLU, global mean pool and tangnn_graph's MLP head: one output row per graph."""

    def __init__(self, encoder: nn.Module, hidden_channels: int, out_channels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = MLP([hidden_channels, hidden_channels, out_channels], norm=None)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor | None = None,
                batch_size: int | None = None) -> torch.Tensor:
        h = self.encoder(x, edge_index, batch=batch, batch_size=batch_size).relu()
        return self.head(global_mean_pool(h, batch, batch_size))


def _encoders(hidden: int, layers: int) -> dict[str, Callable[[int, int | None], nn.Module]]:
    """Node models by row name: ``build(in_channels, out_channels or None for an encoder)``."""
    return {
        "GraphSAGE": lambda i, o: GraphSAGE(i, hidden, layers, out_channels=o),
        "GAT": lambda i, o: GAT(i, hidden, layers, out_channels=o, heads=HEADS),
        "TransformerConv": lambda i, o: TransformerNet(i, hidden, layers, out_channels=o, heads=HEADS),
        "GPS (GPSConv)": lambda i, o: GPS(i, hidden, layers, out_channels=o),
    }


def node_models(hidden: int, layers: int, m: int, heads: int) -> dict[str, Callable[[int, int], nn.Module]]:
    models = {"TANGNN (ours)": lambda i, o: attnzoo.create_model("tangnn", in_channels=i, hidden_channels=hidden,
                                                                 num_layers=layers, out_channels=o, m=m,
                                                                 heads=heads)}
    models.update(_encoders(hidden, layers))
    return models


def graph_models(hidden: int, layers: int, m: int, heads: int) -> dict[str, Callable[[int, int], nn.Module]]:
    models: dict[str, Callable[[int, int], nn.Module]] = {
        "TANGNN (ours)": lambda i, o: attnzoo.create_model("tangnn_graph", in_channels=i, hidden_channels=hidden,
                                                           num_layers=layers, out_channels=o, m=m, heads=heads)}
    for name, build in _encoders(hidden, layers).items():
        models[name] = lambda i, o, build=build: GraphLevel(build(i, None), hidden, o)
    return models


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _row(name: str, model: nn.Module, accuracies: list[float], epoch_s: list[float], peak: float) -> dict[str, Any]:
    sd = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    return {"model": name, "params": f"{_params(model):,}",
            "test accuracy (%)": f"{statistics.mean(accuracies):.2f} ± {sd:.2f}",
            "per seed": " / ".join(f"{a:.1f}" for a in accuracies), "s / epoch": statistics.mean(epoch_s),
            "peak MiB (1 step)": peak}


def _train_step(model: nn.Module, step: Callable[[nn.Module], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        step(model).backward()
        model.zero_grad(set_to_none=True)

    return run


def run_node(args: argparse.Namespace) -> list[dict[str, Any]]:
    from attnzoo.apps.training import seed_everything
    from attnzoo.data.graphs import fashion_mnist_knn_graph, karate_club

    fit = _example("train_tangnn").fit_node_classifier
    data = karate_club() if args.node_graph == "karateclub" else fashion_mnist_knn_graph("test", k=10,
                                                                                        num_nodes=args.nodes, seed=0)
    num_classes = int(data.y.max()) + 1

    def step(model: nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(data.x, data.edge_index)[data.train_mask], data.y[data.train_mask])

    rows = []
    for name, build in node_models(args.hidden, args.layers, args.tangnn_m, args.tangnn_heads).items():
        seed_everything(0)
        peak = peak_memory_mb(_train_step(build(data.num_features, num_classes).train(), step))
        accuracies, epoch_s = [], []
        for seed in SEEDS:
            seed_everything(seed)
            model = build(data.num_features, num_classes)
            history = fit(model, data, args.node_epochs)
            model.eval()
            with torch.no_grad():
                pred = model(data.x, data.edge_index).argmax(-1)
            accuracies.append(100.0 * (pred[data.test_mask] == data.y[data.test_mask]).float().mean().item())
            epoch_s += [r["epoch_s"] for r in history]
            print(f"node {name} seed {seed}: {accuracies[-1]:.2f}", flush=True)
        rows.append(_row(name, model, accuracies, epoch_s, peak))
    return rows


def run_graph(args: argparse.Namespace) -> list[dict[str, Any]]:
    from torch_geometric.loader import DataLoader

    from attnzoo.apps.evaluation import graph_accuracy
    from attnzoo.apps.training import seed_everything

    example = _example("train_tangnn_graph")
    train, val, test = example.load_superpixels(args.train_images, args.test_images, seed=0)
    batch = next(iter(DataLoader(train, batch_size=64)))

    def step(model: nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(batch.x, batch.edge_index, batch.batch, batch_size=batch.num_graphs), batch.y)

    rows = []
    for name, build in graph_models(args.hidden, args.layers, args.tangnn_m, args.tangnn_heads).items():
        seed_everything(0)
        peak = peak_memory_mb(_train_step(build(train.num_features, 10).train(), step))
        accuracies, epoch_s = [], []
        for seed in SEEDS:
            seed_everything(seed)
            model = build(train.num_features, 10)
            history = example.fit_graph_classifier(model, train, val, args.graph_epochs, seed=seed)
            accuracies.append(graph_accuracy(model, test, device="cpu")["accuracy"])
            epoch_s += [r["epoch_s"] for r in history]
            print(f"graph {name} seed {seed}: {accuracies[-1]:.2f} ({sum(r['epoch_s'] for r in history):.0f} s)",
                  flush=True)
        rows.append(_row(name, model, accuracies, epoch_s, peak))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["node", "graph", "both"], default="both")
    parser.add_argument("--node-graph", choices=["fmnist-knn", "karateclub"], default="fmnist-knn",
                        help="task a's graph: the Fashion-MNIST k-NN graph or PyG's KarateClub (4 labelled vertices)")
    parser.add_argument("--nodes", type=int, default=3000, help="images in the k-NN graph (task a)")
    parser.add_argument("--node-epochs", type=int, default=100)
    parser.add_argument("--train-images", type=int, default=4000, help="training-split images (task b; 90%% train)")
    parser.add_argument("--test-images", type=int, default=1000, help="test-split images (task b)")
    parser.add_argument("--graph-epochs", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tangnn-m", type=int, default=8, help="TANGNN's top-m candidates (the checkpoints: 16)")
    parser.add_argument("--tangnn-heads", type=int, default=HEADS, help="TANGNN's heads (the checkpoints: 1)")
    parser.add_argument("--name", default="tangnn_baselines")
    args = parser.parse_args()
    threads_from_env()
    start = time.perf_counter()
    sections = []
    if args.task in ("node", "both"):
        graph = ("KarateClub (1 labelled vertex per class, the other 30 are tested)" if args.node_graph == "karateclub"
                 else f"k-NN graph of {args.nodes:,} Fashion-MNIST test images (k=10, 60/20/20 split)")
        sections.append((f"(a) node classification: {graph}, {args.node_epochs} full-batch epochs", run_node(args)))
    if args.task in ("graph", "both"):
        sections.append((f"(b) graph classification: superpixel graphs of {args.train_images:,} training images "
                         f"(90% train, 10% val) and {args.test_images:,} test images, {args.graph_epochs} epochs",
                         run_graph(args)))
    notes = (f"Every model: {args.layers} layers, {args.hidden} hidden channels, {HEADS} heads where it has heads; "
             f"TANGNN m={args.tangnn_m} 'aux' candidates, {args.tangnn_heads} head(s). "
             f"Seeds {', '.join(map(str, SEEDS))} (model init and shuffling; the data "
             "subsets are seed 0). Accuracy after the last epoch on the test vertices / test graphs, no early "
             "stopping. s / epoch: training only (mean over epochs and seeds), on the same shared 2-core CPU for "
             "every row, measured while other jobs ran, so compare ratios rather than absolute times. Peak MiB: what "
             "one training step (forward + backward) adds, _harness.peak_memory_mb (CPU RSS high-water mark). "
             f"Total wall time of this run: {(time.perf_counter() - start) / 60:.1f} min.")
    write_result(args.name, "TANGNN vs PyG GraphSAGE / GAT / TransformerConv / GPS on Fashion-MNIST graphs", sections,
                 notes)


if __name__ == "__main__":
    main()
