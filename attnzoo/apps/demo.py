"""`attnzoo demo` (`make demo`): the published classifiers on Fashion-MNIST, one fine-tuned, and a picture.

1. Every published classification checkpoint is loaded from the hub and evaluated on the 10,000 Fashion-MNIST
   test images; a table gives the model, the attnzoo attention layers it has (``ELA``, ``HaloAttention``, ...), its
   parameters, its top-1 (and the published one) and the images/s this machine reaches in the evaluation
   (forward only, batch 256).
2. One of them (the best with ELA/ULSAM gates, else the best) is fine-tuned for one epoch on a seeded
   5,000-image subset of the training split with the shared recipe (progress bar, CSV log), and re-evaluated.
3. ``demo.png`` shows the fine-tuning curves and the model's attention maps over a test image; the table is also
   written as markdown to ``demo_table.md`` (both in ``out_dir``).

Until checkpoints are published, the demo builds every registered model instead, runs one forward pass on a
small random input of its task (image, graph or multi-view scene) and prints a table (model, task,
parameters, input, output shape, milliseconds of the second call). Both fit in a few minutes on two CPU cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ["evaluate_checkpoints", "fine_tune", "format_table", "forward_every_model", "run_demo"]

# a small graph model for the forward-pass table: the graph models have no default feature widths
GRAPH_KWARGS = dict(in_channels=16, hidden_channels=16, num_layers=2, out_channels=4)
IMAGE_SIDE = 64


def format_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """Rows of dicts as an aligned table (floats with 2 decimals, ints with thousands separators).

    Plain text for the terminal, or a markdown table (``markdown=True``) for the README.
    """
    if not rows:
        return "(no rows)"

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return "" if value is None else str(value)

    keys = list(rows[0])
    cells = [[cell(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    sep, edge = (" | ", "| ") if markdown else ("  ", "")

    def line(values: Sequence[str]) -> str:
        text = edge + sep.join(v.ljust(w) for v, w in zip(values, widths, strict=True))
        return text + " |" if markdown else text

    rule = [("-" * w) for w in widths]
    return "\n".join([line(keys), line(rule), *(line(row) for row in cells)])


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# without checkpoints: one forward pass of every registered model


def _forward_inputs(task: str, model: nn.Module) -> tuple[tuple[Any, ...], str]:
    """A small random input of the model's task and its description."""
    gen = torch.Generator().manual_seed(0)
    if task in ("classification", "segmentation"):
        cfg = getattr(model, "pretrained_cfg", None) or {}
        chans = int(cfg.get("input_size", (3,))[0])
        side = IMAGE_SIDE
        # models with a fixed token grid (NiNformer, ViT-style) only take their configured size
        fixed = getattr(model, "img_size", None) or getattr(getattr(model, "patch_embed", None), "img_size", None)
        if fixed is not None:
            side = int(fixed[0] if isinstance(fixed, (tuple, list)) else fixed)
        return (torch.randn(1, chans, side, side, generator=gen),), f"1x{chans}x{side}x{side}"
    if task == "graph":
        from attnzoo.data.graphs import random_graph

        data = random_graph(64, edges_per_node=4, num_channels=GRAPH_KWARGS["in_channels"])
        return (data.x, data.edge_index), f"graph 64 nodes, {data.edge_index.shape[1]} edges"
    if task == "bev":
        from attnzoo.data.multiview import SyntheticMultiViewScenes

        scene = SyntheticMultiViewScenes(length=1)[0]
        n, _, h, w = scene["images"].shape
        return (scene["images"][None], scene["lidar2img"][None], scene["depth"][None]), f"{n} views {h}x{w}"
    raise ValueError(f"no demo input for task {task!r}")


def _shape(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return "x".join(map(str, output.shape))
    if isinstance(output, (list, tuple)):
        return "[" + ", ".join(_shape(o) for o in output) + "]"
    return type(output).__name__


@torch.no_grad()
def forward_every_model(names: Sequence[str] | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Build each registered model (untrained) and time one forward pass on a small random input of its task."""
    from tqdm.auto import tqdm

    from attnzoo.zoo import create_model, list_models, model_task

    rows = []
    for name in tqdm(list(names or list_models()), desc="models", disable=not progress):
        task = model_task(name)
        model = create_model(name, **(GRAPH_KWARGS if task == "graph" else {})).eval()
        inputs, described = _forward_inputs(task, model)
        model(*inputs)  # warm-up: first calls pay for lazy initialisation and op registration
        start = time.perf_counter()
        output = model(*inputs)
        ms = 1e3 * (time.perf_counter() - start)
        rows.append({"model": name, "task": task, "params": _params(model), "input": described,
                     "output": _shape(output), "ms": ms})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# with checkpoints: evaluate, fine-tune, draw


def _fmnist_split(model: nn.Module, split: str, root: str | os.PathLike | None) -> Any:
    from attnzoo.apps.evaluation import data_config
    from attnzoo.data.fashion_mnist import fashion_mnist, fmnist_transform

    cfg = data_config(model)
    return fashion_mnist(split, root=root, transform=fmnist_transform(cfg["image_size"], cfg["in_chans"],
                                                                        cfg["mean"], cfg["std"]))


def evaluate_checkpoints(names: Sequence[str], root: str | os.PathLike | None = None, progress: bool = True
                         ) -> list[dict[str, Any]]:
    """Top-1 on the Fashion-MNIST test split and evaluation images/s of each published classifier."""
    from attnzoo import hub
    from attnzoo.apps.training import evaluate_classifier
    from attnzoo.zoo import create_model, split_name

    rows = []
    for name in names:
        model = create_model(name, pretrained=True)
        metrics = evaluate_classifier(model, _fmnist_split(model, "test", root), progress=progress)
        published = hub.find_record(*split_name(name)).metrics.get("top1")
        rows.append({"model": name, "attention": "+".join(sorted(_attention_layers(model))) or "-",
                     "params": _params(model), "top1": metrics["top1"], "published top1": published,
                     "images/s": metrics["images_per_s"]})
        if progress:
            print(f"{name}: top-1 {metrics['top1']:.2f} ({metrics['images_per_s']:.0f} images/s)", flush=True)
    return rows


def _attention_layers(model: nn.Module) -> set[str]:
    """The attnzoo layers in ``model`` by class name; a subclass counts as its attnzoo base (ResidualELA: ELA)."""
    import attnzoo.layers

    public = tuple(c for c in map(attnzoo.layers.__dict__.get, attnzoo.layers.__all__) if isinstance(c, type))
    return {next(c.__name__ for c in type(m).__mro__ if c in public) for m in model.modules()
            if isinstance(m, public)}


def _attention_kinds(model: nn.Module) -> set[str]:
    """'gate' / 'halo' for the attention modules attnzoo.apps.viz can draw in ``model``."""
    from attnzoo.apps.viz import attention_kind

    return {k for k in map(attention_kind, model.modules()) if k is not None}


def fine_tune(name: str, out_dir: str | os.PathLike, root: str | os.PathLike | None = None, subset: int = 5000,
              lr: float = 1e-4, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """One epoch of the shared recipe on a seeded ``subset`` of the training split; writes ``demo.png``.

    ``lr`` is a fine-tuning rate, 1/20 of the recipe's 2e-3: the published classifiers were already trained on
    this data, and larger rates undo part of that (the 2-epoch ``ela_resnet18.fmnist``: test top-1 87.07 ->
    86.70 at 5e-4, -> 87.14 at 1e-4; the 6-epoch one: 89.63 -> 89.54 at 1e-4; the 12-epoch
    one: 91.02 -> 90.86 at 1e-4).

    Returns the fine-tuning result, the test top-1 before and after, and the PNG path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from torch.utils.data import Subset

    from attnzoo.apps.evaluation import data_config
    from attnzoo.apps.training import evaluate_classifier, plot_curves, seed_everything, train_classifier
    from attnzoo.apps.viz import attention_maps, draw_maps, load_image
    from attnzoo.zoo import create_model

    out_dir = Path(out_dir)
    seed_everything(seed)
    model = create_model(name, pretrained=True)
    train = _fmnist_split(model, "train", root)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:subset]
    test = _fmnist_split(model, "test", root)
    before = evaluate_classifier(model, test)["top1"]
    result = train_classifier(model, Subset(train, pick.tolist()), test, epochs=1, lr=lr, seed=seed,
                              batch_size=min(64, len(pick)), out_dir=out_dir / "finetune", progress=progress)
    x, display = load_image("fmnist:0", data_config(model), root)
    maps = attention_maps(model, x, max_maps=2) if _attention_kinds(model) else []
    fig = Figure(figsize=(4 * (2 + len(maps)), 3.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 + len(maps), squeeze=False)[0]
    plot_curves(result.history, axes=axes[:2])
    axes[1].plot(0, before, "s", color="grey", label="top1 before fine-tuning")
    axes[1].legend()
    axes[0].set_title(f"{name}: 1 epoch on {len(pick):,} images")
    axes[1].set_title(f"test top-1 {before:.2f} -> {result.metrics['top1']:.2f}")
    draw_maps(axes[2:], display, maps)
    png = out_dir / "demo.png"
    fig.savefig(png, dpi=110)
    return {"model": name, "before": before, "after": result.metrics["top1"], "result": result, "png": png}


def _write_table(out_dir: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    path = Path(out_dir) / "demo_table.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_table(rows, markdown=True) + "\n")
    return path


def run_demo(out_dir: str | os.PathLike = "demo_out", root: str | os.PathLike | None = None, subset: int = 5000,
             progress: bool = True) -> dict[str, Any]:
    """The demo (see the module docstring); returns the tables and the fine-tuning summary it printed."""
    from attnzoo.zoo import list_models

    names = list_models(pretrained=True, task="classification")
    if not names:
        print("No published classification checkpoints yet: building every registered model and running one "
              "forward pass on random input instead.")
        rows = forward_every_model(progress=progress)
        print(format_table(rows))
        _write_table(out_dir, rows)
        return {"forward": rows}
    print(f"Evaluating {len(names)} published classifiers on the Fashion-MNIST test split (10,000 images)")
    rows = evaluate_checkpoints(names, root, progress)
    print(format_table(rows))
    _write_table(out_dir, rows)
    ranked = sorted(rows, key=lambda r: -r["top1"])
    gated = [r["model"] for r in ranked if {"ELA", "ULSAM"} & set(r["attention"].split("+"))]
    choice = (gated or [ranked[0]["model"]])[0]
    print(f"Fine-tuning {choice} for one epoch on {subset:,} training images")
    tuned = fine_tune(choice, out_dir, root, subset, progress=progress)
    print(f"{choice}: test top-1 {tuned['before']:.2f} -> {tuned['after']:.2f}; curves and attention maps in "
          f"{tuned['png']}")
    return {"evaluated": rows, "fine_tuned": tuned}
