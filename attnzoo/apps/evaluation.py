"""`attnzoo eval NAME`: rebuild a published checkpoint and recompute the metrics its manifest records.

The evaluation is chosen by the checkpoint's ``dataset`` field (written by ``save_pretrained(..., dataset=)``
and copied into the manifest by ``attnzoo publish``); each returns metrics under the manifest's keys, in
percent, rounded to two decimals:

- ``fashion-mnist``: classification top-1 (``top1``) or silhouette segmentation (``dice``, ``iou``, see
  :func:`attnzoo.data.fashion_mnist.fashion_mnist_segmentation`) on the 10,000 test images, preprocessed as
  the checkpoint's pretrained cfg says (input size, channels, mean, std);
- ``karateclub``: node-classification ``accuracy`` on the test vertices of PyG's KarateClub;
- ``fashion-mnist-knn[:key=value,...]``: node-classification ``accuracy`` on the test vertices of
  :func:`attnzoo.data.graphs.fashion_mnist_knn_graph`, built with the given arguments
  (``split``, ``k``, ``num_nodes``, ``seed``), e.g. ``fashion-mnist-knn:split=test,k=10,num_nodes=10000``.
- ``fashion-mnist-superpixels[:key=value,...]``: graph-classification ``accuracy`` (:func:`graph_accuracy`) on the
  superpixel graphs of :class:`attnzoo.data.superpixels.FashionMNISTSuperpixels` built with the given arguments,
  e.g. ``fashion-mnist-superpixels:split=test,num_images=2000``.
- ``synthetic-multiview[:key=value,...]``: BEV occupancy ``bev_iou`` on the scenes of
  :class:`attnzoo.data.multiview.SyntheticMultiViewScenes` built with the given arguments (see :func:`bev_iou`).

Other datasets can be added with :func:`register_evaluator`. :func:`compare_with_manifest` lists the metrics
that differ from the published ones by more than the tolerance (0.3 points by default).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

__all__ = ["bev_iou", "compare_with_manifest", "data_config", "evaluate", "graph_accuracy", "graph_for_dataset",
           "model_in_chans", "node_accuracy", "parse_dataset", "register_evaluator"]

Evaluator = Callable[[nn.Module, Any, dict[str, str], dict[str, Any]], dict[str, float]]
_EVALUATORS: dict[str, Evaluator] = {}


def register_evaluator(dataset: str) -> Callable[[Evaluator], Evaluator]:
    """Register ``fn(model, record, dataset_args, options) -> metrics`` for checkpoints of ``dataset``."""

    def decorator(fn: Evaluator) -> Evaluator:
        if dataset in _EVALUATORS:
            raise ValueError(f"an evaluator for dataset {dataset!r} is already registered")
        _EVALUATORS[dataset] = fn
        return fn

    return decorator


def model_in_chans(model: nn.Module) -> int:
    """Input channels of a timm-style model: its ``first_conv``'s, else the pretrained cfg's input size."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    if isinstance(first, (list, tuple)):
        first = first[0]
    if first:
        try:
            return int(model.get_submodule(first).in_channels)
        except AttributeError:
            pass
    return int(cfg.get("input_size", (3,))[0])


def data_config(model: nn.Module, image_size: int | None = None, cfg: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """``image_size``, ``in_chans``, ``mean`` and ``std`` a model expects.

    Taken from ``cfg`` or the model's timm ``pretrained_cfg`` (ImageNet statistics when it has none); statistics
    with a different number of channels than the model (RGB ones for a grey model) are averaged and repeated.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    if cfg is not None and "input_size" in cfg:
        in_chans = int(cfg["input_size"][0])
    else:
        cfg = cfg if cfg is not None else (getattr(model, "pretrained_cfg", None) or {})
        in_chans = model_in_chans(model)

    def per_channel(values: Sequence[float]) -> tuple[float, ...]:
        values = tuple(float(v) for v in values)
        return values if len(values) == in_chans else (sum(values) / len(values),) * in_chans

    return {"image_size": image_size or int(cfg.get("input_size", (3, 224, 224))[-1]), "in_chans": in_chans,
            "mean": per_channel(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
            "std": per_channel(cfg.get("std", IMAGENET_DEFAULT_STD))}


def parse_dataset(dataset: str) -> tuple[str, dict[str, str]]:
    """'fashion-mnist-knn:k=10,split=test' -> ('fashion-mnist-knn', {'k': '10', 'split': 'test'})."""
    base, _, rest = dataset.partition(":")
    args = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"dataset {dataset!r}: {item!r} is not key=value")
        args[key.strip()] = value.strip()
    return base, args


@register_evaluator("fashion-mnist")
def _fashion_mnist(model: nn.Module, record: Any, args: dict[str, str], options: dict[str, Any]) -> dict[str, float]:
    from attnzoo.apps.training import evaluate_classifier, evaluate_segmenter
    from attnzoo.data.fashion_mnist import fashion_mnist, fashion_mnist_segmentation, fmnist_transform

    cfg = data_config(model, cfg=None if record.task == "classification" else record.pretrained_cfg)
    transform = fmnist_transform(cfg["image_size"], cfg["in_chans"], cfg["mean"], cfg["std"])
    kw = dict(device=options["device"], progress=options["progress"])
    if record.task == "classification":
        ds = fashion_mnist("test", root=options["root"], transform=transform)
        return {"top1": evaluate_classifier(model, ds, options["batch_size"], **kw)["top1"]}
    if record.task == "segmentation":
        ds = fashion_mnist_segmentation("test", root=options["root"], transform=transform)
        metrics = evaluate_segmenter(model, ds, options["batch_size"], **kw)
        return {"dice": metrics["dice"], "iou": metrics["iou"]}
    raise ValueError(f"{record.name}: no Fashion-MNIST evaluation for task {record.task!r}")


@torch.no_grad()
def node_accuracy(model: nn.Module, data: Any, device: torch.device | str | None = None) -> dict[str, float]:
    """Node-classification accuracy (percent) of ``model(data.x, data.edge_index)`` on ``data.test_mask``."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval().to(device)
    data = data.to(device)
    pred = model(data.x, data.edge_index).argmax(-1)
    mask = data.test_mask
    return {"accuracy": 100.0 * (pred[mask] == data.y[mask]).float().mean().item()}


def graph_for_dataset(dataset: str, root: str | os.PathLike | None = None) -> Any:
    """The PyG graph a graph checkpoint's ``dataset`` string names (see the module docstring)."""
    base, args = parse_dataset(dataset)
    if base == "karateclub" and not args:
        from attnzoo.data.graphs import karate_club

        return karate_club()
    if base == "fashion-mnist-knn":
        from attnzoo.data.graphs import fashion_mnist_knn_graph

        kwargs: dict[str, Any] = {"root": root}
        for key, value in args.items():
            if key not in ("split", "k", "num_nodes", "seed"):
                raise ValueError(f"dataset {dataset!r}: unknown fashion-mnist-knn argument {key!r} "
                                 "(expected split, k, num_nodes, seed)")
            kwargs[key] = value if key == "split" else int(value)
        return fashion_mnist_knn_graph(**kwargs)
    raise ValueError(f"dataset {dataset!r} is not a graph this module builds: 'karateclub' or "
                     "'fashion-mnist-knn[:split=...,k=...,num_nodes=...,seed=...]'")


@register_evaluator("karateclub")
@register_evaluator("fashion-mnist-knn")
def _graph(model: nn.Module, record: Any, args: dict[str, str], options: dict[str, Any]) -> dict[str, float]:
    return node_accuracy(model, graph_for_dataset(record.dataset, options["root"]), options["device"])


@torch.no_grad()
def graph_accuracy(model: nn.Module, dataset: Any, batch_size: int = 256, device: torch.device | str | None = None
                   ) -> dict[str, float]:
    """Graph-classification accuracy (percent) of ``model(x, edge_index, batch, batch_size=B)`` over ``dataset``.

    The graphs are batched in order (PyG ``DataLoader``, no shuffling), so a given ``batch_size`` always evaluates
    the same mini-batches.
    """
    from torch_geometric.loader import DataLoader

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval().to(device)
    correct = total = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        batch = batch.to(device)
        pred = model(batch.x, batch.edge_index, batch.batch, batch_size=batch.num_graphs).argmax(-1)
        correct += int((pred == batch.y).sum())
        total += batch.num_graphs
    return {"accuracy": 100.0 * correct / max(total, 1)}


@register_evaluator("fashion-mnist-superpixels")
def _superpixels(model: nn.Module, record: Any, args: dict[str, str], options: dict[str, Any]) -> dict[str, float]:
    from attnzoo.data.superpixels import superpixels_from_spec

    dataset = superpixels_from_spec(record.dataset, fmnist_root=options["root"])
    return graph_accuracy(model, dataset, options["batch_size"], options["device"])


@torch.no_grad()
def bev_iou(model: nn.Module, dataset: str, batch_size: int = 32, device: torch.device | str | None = None
            ) -> dict[str, float]:
    """BEV occupancy IoU (percent) of ``model(images, lidar2img, depth)`` on the synthetic scenes ``dataset`` names.

    ``synthetic-multiview[:length=...,seed=...,num_cameras=...,bev_size=...,max_boxes=...,depth=true|none]``
    builds :class:`~attnzoo.data.multiview.SyntheticMultiViewScenes` with those arguments (its defaults
    otherwise) and feeds the true depth maps (``depth=true``, the default) or none. A cell is predicted occupied
    where its logit is positive; intersection and union are summed over all scenes before dividing.
    """
    from torch.utils.data import DataLoader

    from attnzoo.data.multiview import SyntheticMultiViewScenes

    base, args = parse_dataset(dataset)
    ints = ("length", "seed", "num_cameras", "bev_size", "max_boxes")
    depth = args.pop("depth", "true")
    if base != "synthetic-multiview" or not set(args) <= set(ints) or depth not in ("true", "none"):
        raise ValueError(f"dataset {dataset!r}: expected 'synthetic-multiview[:key=value,...]' with keys from "
                         f"{ints} and depth=true|none")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval().to(device)
    inter = union = 0
    for batch in DataLoader(SyntheticMultiViewScenes(**{k: int(v) for k, v in args.items()}), batch_size):
        logits = model(batch["images"].to(device), batch["lidar2img"].to(device),
                       batch["depth"].to(device) if depth == "true" else None)
        pred, truth = logits > 0, batch["occupancy"].to(device) > 0.5
        inter += int((pred & truth).sum())
        union += int((pred | truth).sum())
    return {"bev_iou": 100.0 * inter / max(union, 1)}


@register_evaluator("synthetic-multiview")
def _synthetic_multiview(model: nn.Module, record: Any, args: dict[str, str], options: dict[str, Any]
                         ) -> dict[str, float]:
    return bev_iou(model, record.dataset, options["batch_size"], options["device"])


def evaluate(name: str, root: str | os.PathLike | None = None, batch_size: int = 256,
             device: torch.device | str | None = None, progress: bool = True) -> dict[str, float]:
    """Load ``create_model(name, pretrained=True)`` and recompute its manifest metrics (percent, 2 decimals).

    Args:
        name: 'arch.tag' (or 'arch' for its first published tag).
        root: where to look for the dataset first (Fashion-MNIST: see :func:`attnzoo.data.fashion_mnist`).
        batch_size: evaluation batch size.
        device: defaults to CUDA when available.
        progress: show a progress bar.
    """
    from attnzoo import hub
    from attnzoo.zoo import create_model, split_name

    arch, tag = split_name(name)
    record = hub.find_record(arch, tag)
    base, args = parse_dataset(record.dataset)
    if base not in _EVALUATORS:
        raise ValueError(f"{record.name} was trained on {record.dataset!r}, which has no evaluator; registered: "
                         f"{sorted(_EVALUATORS)} (attnzoo.apps.evaluation.register_evaluator adds one)")
    model = create_model(record.name, pretrained=True)
    options = {"root": root, "batch_size": batch_size, "device": device, "progress": progress}
    metrics = _EVALUATORS[base](model, record, args, options)
    return {k: round(float(v), 2) for k, v in metrics.items()}


def compare_with_manifest(name: str, metrics: dict[str, float], tolerance: float = 0.3) -> list[str]:
    """The published metrics of ``name`` that ``metrics`` misses or differs from by more than ``tolerance``."""
    from attnzoo import hub
    from attnzoo.zoo import split_name

    record = hub.find_record(*split_name(name))
    problems = []
    for key, published in record.metrics.items():
        if key not in metrics:
            problems.append(f"{key}: published {published}, not recomputed")
        elif abs(metrics[key] - published) > tolerance:
            problems.append(f"{key}: published {published}, recomputed {metrics[key]} (tolerance {tolerance})")
    return problems
