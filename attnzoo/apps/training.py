"""The one small training recipe shared by attnzoo's checkpoints, examples and demo, plus evaluation helpers.

Recipe (classification and segmentation alike): AdamW through timm's ``create_optimizer_v2`` (no weight decay
on norms and biases), linear warm-up over the first ``warmup`` fraction of steps then cosine decay to zero, per
step; batch augmentation by a random horizontal flip and a random integer shift of up to ``max_shift`` pixels
(edge-replicated, applied identically to segmentation masks); fixed seeds for the data order, the augmentation
and (through :func:`seed_everything`, called by the caller before the model is built) the initialisation.

Every run shows a tqdm progress bar, writes ``metrics.csv`` (train loss every ``log_every`` steps, validation
metrics after each epoch) and ``curves.png`` (matplotlib's Agg canvas, no global backend change) into
``out_dir``. Under ``torchrun`` (``torch.distributed`` initialised) the model is wrapped in
DistributedDataParallel, each rank reads its shard through a DistributedSampler, and rank 0 alone validates,
logs and plots, then shares the metrics with the other ranks.

Metrics are percentages: ``top1`` for classification; ``dice`` and ``iou`` for segmentation, computed per image
on the binarised prediction and averaged over images (an image whose prediction and target are both empty
scores 100).
"""

from __future__ import annotations

import csv
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

__all__ = [
    "TrainResult",
    "dice_iou",
    "evaluate_classifier",
    "evaluate_segmenter",
    "plot_curves",
    "random_flip_shift",
    "seed_everything",
    "top1_accuracy",
    "train_classifier",
    "train_segmenter",
    "write_metrics_csv",
]

METRIC_FIELDS = ("epoch", "step", "lr", "train_loss", "val_loss", "val_top1", "val_dice", "val_iou", "elapsed_s")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (call it before building the model)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}, expected a non-negative int")
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % 2**32)


def _distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _default_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    if param is not None and param.device.type != "cpu":
        return param.device
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------------
# metrics


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of rows whose top-scoring class is the label (``timm.utils.accuracy``).

    Shapes:
        logits: (N, num_classes); labels: (N,).
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)}: expected (N, C) and (N,)")
    if logits.shape[0] == 0:
        raise ValueError("top1_accuracy of an empty batch is undefined")
    from timm.utils import accuracy

    return accuracy(logits, labels, topk=(1,))[0].item()


def _binarise(logits: torch.Tensor) -> torch.Tensor:
    """Foreground mask from segmentation logits: sigmoid > 0.5 for one channel, arg-max != 0 otherwise."""
    if logits.shape[1] == 1:
        return logits[:, 0] > 0
    return logits.argmax(dim=1) != 0


def dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU (percent) of boolean masks; both empty scores 100 (``smp.metrics``, in float64).

    Shapes:
        pred, target: (N, H, W) bool (or (N, 1, H, W)). Returns two (N,) float tensors.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    from segmentation_models_pytorch import metrics

    # (N, 1) counts per image; zero_division=1 scores an image with no foreground in either mask 100
    stats = [t.double() for t in metrics.get_stats(pred.flatten(1).long().unsqueeze(1),
                                                   target.flatten(1).long().unsqueeze(1), mode="binary")]
    dice = metrics.f1_score(*stats, reduction=None, zero_division=1.0)[:, 0]
    iou = metrics.iou_score(*stats, reduction=None, zero_division=1.0)[:, 0]
    return 100.0 * dice, 100.0 * iou


def _segmentation_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice for one output channel; cross-entropy over classes for several.

    The soft Dice is per image, ``(2·sum(p·t) + 1) / (sum p + sum t + 1)``, averaged over the images. It stays
    hand-written (BCE and cross-entropy are torch's): ``smp.losses.DiceLoss(mode='binary', from_logits=True)``
    computes one Dice over all pixels of the batch (max |difference| 1.1e-3 with its smooth=0, 1.0e-3 with the
    equivalent smooth=0.5, float64, 8 random 28x28 masks). Per image it only comes by passing the batch as
    channels (``mode='multilabel', smooth=0.5`` on ``(1, N, H, W)``: equal to 4e-16 in float64, 1.2e-7 in float32
    through its ``logsigmoid().exp()``), and then smp zeroes the Dice term of an image whose target is empty (ours
    still pushes its predictions to zero; difference 0.25 with 2 empty masks in 8) and takes ``min(p, t)`` as the
    intersection (equal to ``p·t`` for binary targets only).
    """
    if logits.shape[1] == 1:
        prob = logits.sigmoid()
        inter = (prob * mask).flatten(1).sum(1)
        soft_dice = (2 * inter + 1) / (prob.flatten(1).sum(1) + mask.flatten(1).sum(1) + 1)
        return F.binary_cross_entropy_with_logits(logits, mask) + (1 - soft_dice).mean()
    return F.cross_entropy(logits, mask[:, 0].long())


def _check_output(out: Any, what: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}; the {what} recipe needs a single logits tensor "
                        "(turn off auxiliary / deep-supervision outputs)")
    return out


def _eval_outputs(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device | str | None,
                  progress: bool, what: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """(outputs, targets, forward seconds) per batch of ``model`` in eval mode; the training flag is restored."""
    device = torch.device(device) if device is not None else _default_device(model)
    was_training = model.training
    model.eval().to(device)
    try:
        for inputs, targets in tqdm(DataLoader(dataset, batch_size=batch_size, shuffle=False), desc="eval",
                                    disable=not progress, leave=False):
            inputs, targets = inputs.to(device), targets.to(device)
            start = time.perf_counter()
            out = _check_output(model(inputs), what)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            yield out.float(), targets, time.perf_counter() - start
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset: Dataset, batch_size: int = 256, device: torch.device | str |
                        None = None, progress: bool = False) -> dict[str, float]:
    """Top-1 (percent), mean cross-entropy and images/s of ``model`` in eval mode over ``dataset``."""
    correct = seen = 0
    loss_sum = compute_s = 0.0
    for logits, labels, seconds in _eval_outputs(model, dataset, batch_size, device, progress, "classification"):
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += labels.numel()
        compute_s += seconds
    if seen == 0:
        raise ValueError("evaluate_classifier got an empty dataset")
    return {"top1": 100.0 * correct / seen, "loss": loss_sum / seen, "images_per_s": seen / max(compute_s, 1e-9)}


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, dataset: Dataset, batch_size: int = 128, device: torch.device | str |
                       None = None, progress: bool = False) -> dict[str, float]:
    """Mean per-image Dice and IoU (percent) and the mean training loss of ``model`` over ``dataset``."""
    dice_sum = iou_sum = loss_sum = 0.0
    seen = 0
    for logits, masks, _ in _eval_outputs(model, dataset, batch_size, device, progress, "segmentation"):
        dice, iou = dice_iou(_binarise(logits), masks[:, 0] > 0.5)
        dice_sum += dice.sum().item()
        iou_sum += iou.sum().item()
        loss_sum += _segmentation_loss(logits, masks).item() * masks.shape[0]
        seen += masks.shape[0]
    if seen == 0:
        raise ValueError("evaluate_segmenter got an empty dataset")
    return {"dice": dice_sum / seen, "iou": iou_sum / seen, "loss": loss_sum / seen}


# ---------------------------------------------------------------------------------------------------------------
# augmentation, schedule, logging


def random_flip_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and integer shift in [-max_shift, max_shift] per sample, edges replicated.

    Shapes:
        x: (B, C, H, W) -> (B, C, H, W). Stack masks as extra channels to move them with their images.
    """
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=generator) < 0.5
    shift = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator)
    x = torch.where(flip.view(b, 1, 1, 1).to(x.device), x.flip(-1), x)
    rows = (torch.arange(h).view(1, h) - shift[:, :1]).clamp(0, h - 1)  # (B, H) source row of each output row
    cols = (torch.arange(w).view(1, w) - shift[:, 1:]).clamp(0, w - 1)  # (B, W)
    rows, cols = rows.to(x.device), cols.to(x.device)
    x = x.gather(2, rows.view(b, 1, h, 1).expand(-1, x.shape[1], -1, w))
    return x.gather(3, cols.view(b, 1, 1, w).expand(-1, x.shape[1], h, -1))


def _warmup_cosine(total_steps: int, warmup: float) -> Callable[[int], float]:
    """LambdaLR factor of optimiser step ``k`` (0-based): ``(k + 1) / W`` for ``k < W = max(1, round(warmup·T))``,
    then ``(1 + cos(pi·(k - W) / (T - W))) / 2``.

    Kept hand-written: timm's ``CosineLRScheduler`` (``t_in_epochs=False``, ``step_update``) cannot give these
    per-step rates, and every published classification and segmentation checkpoint was trained with them. This
    schedule holds the peak for two steps (``k = W - 1`` ends the ramp at 1, ``k = W`` starts the cosine at 1);
    timm's ramp ``warmup_lr_init + t·(lr - warmup_lr_init) / warmup_t`` stays below the peak until ``t = warmup_t``,
    where its cosine starts, so no choice of its arguments (or of a constant offset in ``step_update``) matches for
    ``W > 1``. The closest (``warmup_t=W-1, warmup_lr_init=lr/W, warmup_prefix=True, t_initial=T-W+1``) matches the
    ramp and then runs one step ahead: max |delta lr| / lr = 3.4e-4 for the 2,808-step ela_resnet18.fmnist recipe,
    1.0e-3 at 936 steps; the plain ``warmup_t=W, t_initial=T-W`` is off by lr/W (7.1e-3 at 2,808 steps).
    """
    warm = max(1, int(round(warmup * total_steps)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def write_metrics_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write a run's history (dicts with keys from METRIC_FIELDS; missing ones stay empty) as CSV."""
    with Path(path).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path | None = None, axes: Sequence[Any] | None = None,
                title: str = "") -> Any:
    """Training curves from a run's history: train/val loss and the validation metrics against the step.

    Draws on two given matplotlib ``axes``, or on a new Agg figure saved to ``path``; returns the figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if axes is None:
        fig = Figure(figsize=(9, 3.4), constrained_layout=True)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2)
    fig = axes[0].figure
    train = [r for r in history if r.get("train_loss") is not None]
    val = [r for r in history if r.get("val_loss") is not None]
    axes[0].plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train loss", lw=1)
    axes[0].plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    for key in ("val_top1", "val_dice", "val_iou"):
        points = [r for r in val if r.get(key) is not None]
        if points:
            axes[1].plot([r["step"] for r in points], [r[key] for r in points], "o-", label=key.removeprefix("val_"))
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("validation metric (%)")
    if points_drawn := axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(handles=points_drawn)
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# the recipe


@dataclass
class TrainResult:
    """What a run returns: the final validation metrics, the logged history and where the logs went."""

    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    csv_path: Path | None = None
    png_path: Path | None = None


@dataclass(frozen=True)
class _Objective:
    task: str
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[..., dict[str, float]]
    masks: bool


_CLASSIFICATION = _Objective("classification", F.cross_entropy, evaluate_classifier, masks=False)
_SEGMENTATION = _Objective("segmentation", _segmentation_loss, evaluate_segmenter, masks=True)


def _check_args(epochs: int, lr: float, batch_size: int, warmup: float, max_shift: int, max_steps: int | None,
                train_ds: Dataset) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r}, expected an int >= 1")
    if not lr > 0:
        raise ValueError(f"lr={lr!r}, expected > 0")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}, expected an int >= 1")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup={warmup!r}, expected a fraction of the steps in [0, 1)")
    if max_shift < 0:
        raise ValueError(f"max_shift={max_shift!r}, expected >= 0")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps={max_steps!r}, expected None or >= 1")
    if len(train_ds) == 0:
        raise ValueError("train_ds is empty")


def _fit(objective: _Objective, model: nn.Module, train_ds: Dataset, val_ds: Dataset | None, epochs: int, lr: float,
         seed: int, batch_size: int, weight_decay: float, warmup: float, augment: bool, max_shift: int,
         device: torch.device | str | None, out_dir: str | Path | None, max_steps: int | None, progress: bool,
         log_every: int, num_workers: int) -> TrainResult:
    from timm.optim import create_optimizer_v2
    from torch.utils.data.distributed import DistributedSampler

    _check_args(epochs, lr, batch_size, warmup, max_shift, max_steps, train_ds)
    rank, world = _distributed()
    device = torch.device(device) if device is not None else _default_device(model)
    model.to(device)
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=seed) if world > 1 \
        else None
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
                        num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
    if len(loader) == 0:
        raise ValueError(f"train_ds has {len(train_ds)} samples per rank < batch_size={batch_size}; lower batch_size")
    steps_per_epoch = len(loader) if max_steps is None else min(len(loader), math.ceil(max_steps / epochs))
    total = steps_per_epoch * epochs if max_steps is None else min(steps_per_epoch * epochs, max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(total, warmup))
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    aug_gen = torch.Generator().manual_seed(seed * 1000 + rank)
    out = Path(out_dir) if out_dir is not None and rank == 0 else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    metrics: dict[str, float] = {}
    step = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        running, count = 0.0, 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress or rank != 0)
        for i, (inputs, targets) in enumerate(loader):
            if i == steps_per_epoch or step == total:
                break
            inputs, targets = inputs.to(device), targets.to(device)
            if augment:
                if objective.masks:
                    both = random_flip_shift(torch.cat([inputs, targets], 1), aug_gen, max_shift)
                    inputs, targets = both[:, :inputs.shape[1]], both[:, inputs.shape[1]:]
                else:
                    inputs = random_flip_shift(inputs, aug_gen, max_shift)
            loss = objective.loss(_check_output(net(inputs), objective.task).float(), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}; lower lr={lr}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            running += loss.item()
            count += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if step % log_every == 0 or i + 1 == steps_per_epoch:
                history.append({"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                                "train_loss": running / count, "elapsed_s": time.perf_counter() - start})
                running, count = 0.0, 0
        bar.close()
        if val_ds is not None:
            metrics = _validate(objective, model, val_ds, batch_size, device, rank, world)
            history.append({"epoch": epoch + 1, "step": step, "val_loss": metrics["loss"],
                            **{f"val_{k}": v for k, v in metrics.items() if k in ("top1", "dice", "iou")},
                            "elapsed_s": time.perf_counter() - start})
            if progress and rank == 0:
                shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k != "images_per_s")
                tqdm.write(f"epoch {epoch + 1}/{epochs}: {shown}")
        if out is not None:
            write_metrics_csv(history, out / "metrics.csv")
    result = TrainResult(metrics=metrics, history=history, steps=step, seconds=time.perf_counter() - start)
    if out is not None:
        result.csv_path = out / "metrics.csv"
        result.png_path = out / "curves.png"
        plot_curves(history, result.png_path, title=f"{type(model).__name__} ({objective.task})")
    return result


def _validate(objective: _Objective, model: nn.Module, val_ds: Dataset, batch_size: int, device: torch.device,
              rank: int, world: int) -> dict[str, float]:
    """Rank 0 evaluates the plain module (no collectives inside); the metrics are then broadcast."""
    metrics = objective.evaluate(model, val_ds, batch_size=batch_size, device=device) if rank == 0 else {}
    if world > 1:
        shared = [metrics]
        dist.broadcast_object_list(shared, src=0)
        metrics = shared[0]
    return metrics


def train_classifier(model: nn.Module, train_ds: Dataset, val_ds: Dataset | None = None, epochs: int = 1,
                     lr: float = 2e-3, seed: int = 0, *, batch_size: int = 128, weight_decay: float = 0.05,
                     warmup: float = 0.05, augment: bool = True, max_shift: int = 2,
                     device: torch.device | str | None = None, out_dir: str | Path | None = None,
                     max_steps: int | None = None, progress: bool = True, log_every: int = 10,
                     num_workers: int = 0) -> TrainResult:
    """Train an image classifier with the shared recipe (see the module docstring) and validate each epoch.

    Args:
        model: returns (B, num_classes) logits; trained in place.
        train_ds: yields ``(image (C, H, W) float, label int)``.
        val_ds: same format, evaluated after every epoch (top-1, loss) on rank 0; None skips validation.
        epochs: passes over ``train_ds`` (cut short by ``max_steps``).
        lr: peak AdamW learning rate.
        seed: seeds the data order and the augmentation (call :func:`seed_everything` before building the model).
        batch_size: per-rank batch size; the last incomplete batch of an epoch is dropped.
        weight_decay: AdamW weight decay (not applied to norms and biases).
        warmup: fraction of the steps with a linear warm-up.
        augment: random flip + shift.
        max_shift: the largest shift in pixels.
        device: defaults to the model's device, else CUDA when available.
        out_dir: where metrics.csv and curves.png go (rank 0); None writes nothing.
        max_steps: cap on the total optimiser steps (smoke runs).
        progress: show tqdm bars.
        log_every: steps between train-loss rows in the log.
        num_workers: DataLoader workers.
    """
    return _fit(_CLASSIFICATION, model, train_ds, val_ds, epochs, lr, seed, batch_size, weight_decay, warmup,
                augment, max_shift, device, out_dir, max_steps, progress, log_every, num_workers)


def train_segmenter(model: nn.Module, train_ds: Dataset, val_ds: Dataset | None = None, epochs: int = 1,
                    lr: float = 2e-3, seed: int = 0, *, batch_size: int = 64, weight_decay: float = 0.01,
                    warmup: float = 0.05, augment: bool = True, max_shift: int = 2,
                    device: torch.device | str | None = None, out_dir: str | Path | None = None,
                    max_steps: int | None = None, progress: bool = True, log_every: int = 10,
                    num_workers: int = 0) -> TrainResult:
    """Train a segmentation model with the shared recipe; BCE + soft Dice for one output channel.

    Args are those of :func:`train_classifier`; the datasets yield ``(image (C, H, W), mask (1, H, W))`` with
    the mask in {0, 1} (binary, model with one output channel) or class ids (model with several channels).
    Validation reports Dice and IoU (percent).
    """
    return _fit(_SEGMENTATION, model, train_ds, val_ds, epochs, lr, seed, batch_size, weight_decay, warmup,
                augment, max_shift, device, out_dir, max_steps, progress, log_every, num_workers)
