import csv
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from attnzoo.apps import training as tr


def quadrant_data(n: int, seed: int) -> TensorDataset:
    """4 classes: the bright 4x4 quadrant of an 8x8 image is the label (noise on top)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 8, 8, generator=g)
    for i, c in enumerate(labels.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 1.0
    return TensorDataset(x, labels)


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 4))


def test_top1_and_dice_iou_values():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    assert tr.top1_accuracy(logits, torch.tensor([0, 1, 1, 1])) == 75.0
    pred = torch.zeros(3, 2, 3, dtype=torch.bool)
    target = torch.zeros(3, 2, 3, dtype=torch.bool)
    pred[0, 0, :2] = True  # 2 pixels, both inside the 3-pixel target
    target[0, 0, :] = True
    target[2, 1, 1] = True  # image 1: both empty; image 2: prediction empty, target not
    dice, iou = tr.dice_iou(pred, target)
    torch.testing.assert_close(dice, torch.tensor([80.0, 100.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(iou, torch.tensor([200 / 3, 100.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="same shape"):
        tr.dice_iou(pred, target[:2])
    with pytest.raises(ValueError, match="expected"):
        tr.top1_accuracy(logits, torch.tensor([0, 1]))


def test_random_flip_shift_matches_loop_reference():
    x = torch.arange(2 * 5 * 2 * 6 * 7, dtype=torch.float32).view(10, 2, 6, 7)
    got = tr.random_flip_shift(x, torch.Generator().manual_seed(3), max_shift=2)
    g = torch.Generator().manual_seed(3)
    flip = torch.rand(10, generator=g) < 0.5
    shift = torch.randint(-2, 3, (10, 2), generator=g)
    for b in range(10):
        src = x[b].flip(-1) if flip[b] else x[b]
        dy, dx = shift[b].tolist()
        for i in range(6):
            for j in range(7):
                torch.testing.assert_close(got[b, :, i, j], src[:, min(max(i - dy, 0), 5), min(max(j - dx, 0), 6)])
    assert flip.any() and not flip.all() and shift.abs().max() == 2


def test_warmup_cosine_schedule():
    f = tr._warmup_cosine(100, 0.1)
    assert [f(0), f(9), f(10)] == [0.1, 1.0, 1.0]
    assert f(55) == pytest.approx(0.5) and f(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))


def _recipe_rates(total: int, warm: int, lr: float) -> list[float]:
    """The rate of each optimiser step under the recipe: (k+1)/W ramp, then cosine from the peak to zero."""
    return [lr * ((k + 1) / warm if k < warm else 0.5 * (1 + math.cos(math.pi * (k - warm) / (total - warm))))
            for k in range(total)]


def test_recipe_steps_the_optimizer_through_the_warmup_cosine_rates():
    tr.seed_everything(0)
    # 96 samples / batch 8 = 12 steps, warm-up round(0.25 * 12) = 3 steps
    result = tr.train_classifier(tiny_cnn(), quadrant_data(96, 0), None, epochs=1, lr=0.01, seed=0, batch_size=8,
                                 warmup=0.25, progress=False, log_every=1)
    # a row logged after step n holds the rate of step n (0-based), the one after the last step 0
    logged = [row["lr"] for row in result.history]
    expected = _recipe_rates(12, 3, 0.01)[1:] + [0.0]
    assert len(logged) == 12
    for got, want in zip(logged, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_timm_cosine_scheduler_cannot_reproduce_the_recipe():
    """Why the schedule is hand-written: the recipe holds the peak two steps, timm's warm-up + cosine one."""
    from timm.scheduler import CosineLRScheduler

    total, warm, lr = 40, 4, 1.0
    ref = _recipe_rates(total, warm, lr)
    assert ref[warm - 1] == ref[warm] == lr
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    # the closest timm arguments: the same ramp, then the cosine one step ahead
    sched = CosineLRScheduler(opt, t_initial=total - warm + 1, warmup_t=warm - 1, warmup_lr_init=lr / warm,
                              warmup_prefix=True, t_in_epochs=False)
    rates = []
    for k in range(total):
        rates.append(opt.param_groups[0]["lr"])
        sched.step_update(k + 1)
    assert rates[:warm] == pytest.approx(ref[:warm], rel=1e-12)
    gap = max(abs(a - b) for a, b in zip(rates, ref, strict=True))
    assert 0.01 < gap < math.pi / (total - warm)  # a one-step shift of the cosine
    assert sum(r == lr for r in rates) == 1


def test_segmentation_loss_is_bce_plus_per_image_soft_dice():
    from segmentation_models_pytorch.losses import DiceLoss

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(6, 1, 7, 7, generator=g, dtype=torch.float64)
    mask = (torch.rand(6, 1, 7, 7, generator=g, dtype=torch.float64) < 0.3).double()
    mask[0] = 0  # an image with an empty target
    dice_terms = []
    for p, t in zip(logits.sigmoid(), mask, strict=True):
        dice_terms.append(1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1))
    bce = F.binary_cross_entropy(logits.sigmoid(), mask)
    loss = tr._segmentation_loss(logits, mask)
    torch.testing.assert_close(loss, bce + torch.stack(dice_terms).mean(), rtol=1e-12, atol=1e-12)
    assert dice_terms[0] > 0.5  # the empty target still pulls confident foreground down

    # smp's DiceLoss equals the Dice term only per image (batch as channels, smooth=0.5) and non-empty targets
    def ours(lg, mk):
        return tr._segmentation_loss(lg, mk) - F.binary_cross_entropy_with_logits(lg, mk)

    per_image = DiceLoss("multilabel", from_logits=True, smooth=0.5)
    full = (slice(1, None),)
    torch.testing.assert_close(per_image(logits[full].transpose(0, 1), mask[full].transpose(0, 1)),
                               ours(logits[full], mask[full]), rtol=1e-12, atol=1e-12)
    assert (per_image(logits.transpose(0, 1), mask.transpose(0, 1)) - ours(logits, mask)).abs() > 0.05
    per_batch = DiceLoss("binary", from_logits=True, smooth=0.5)(logits[full], mask[full])
    assert (per_batch - ours(logits[full], mask[full])).abs() > 1e-4


def test_train_classifier_fits_and_logs(tmp_path):
    tr.seed_everything(0)
    model = tiny_cnn()
    # no augmentation: a flip moves the bright quadrant and so changes the label of this toy task
    result = tr.train_classifier(model, quadrant_data(256, 0), quadrant_data(64, 1), epochs=3, lr=2e-2, seed=0,
                                 batch_size=32, augment=False, out_dir=tmp_path, progress=False, log_every=4)
    assert result.metrics["top1"] == 100.0 and result.metrics["loss"] < 0.3
    assert result.steps == 3 * 8
    with open(tmp_path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(tr.METRIC_FIELDS)
    train_rows = [r for r in rows if r["train_loss"]]
    val_rows = [r for r in rows if r["val_top1"]]
    assert [int(r["step"]) for r in train_rows] == [4, 8, 12, 16, 20, 24]
    assert [int(r["step"]) for r in val_rows] == [8, 16, 24] and float(val_rows[-1]["val_top1"]) == 100.0
    assert float(train_rows[-1]["train_loss"]) < float(train_rows[0]["train_loss"])
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_training_is_reproducible_with_a_seed():
    def run(seed: int) -> list[torch.Tensor]:
        tr.seed_everything(seed)
        model = tiny_cnn()
        tr.train_classifier(model, quadrant_data(128, 0), None, epochs=1, lr=1e-2, seed=seed, batch_size=32,
                            progress=False)
        return [p.detach().clone() for p in model.state_dict().values()]

    first, again, other = run(1), run(1), run(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("max_steps", [6, 3])
def test_max_steps_caps_the_run(max_steps):
    # 3 steps over 2 epochs: 2 in the first, 1 in the second (a per-epoch cap alone would give 4)
    tr.seed_everything(0)
    result = tr.train_classifier(tiny_cnn(), quadrant_data(256, 0), None, epochs=2, seed=0, batch_size=16,
                                 max_steps=max_steps, progress=False)
    assert result.steps == max_steps and result.metrics == {}


def test_evaluate_classifier_matches_direct_computation():
    tr.seed_everything(0)
    model = tiny_cnn().eval()
    data = quadrant_data(50, 2)
    metrics = tr.evaluate_classifier(model, data, batch_size=16)
    with torch.no_grad():
        logits = model(data.tensors[0])
    assert metrics["top1"] == pytest.approx(tr.top1_accuracy(logits, data.tensors[1]))
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, data.tensors[1]).item(), rel=1e-5)
    assert metrics["images_per_s"] > 0


def test_train_segmenter_learns_threshold_masks(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 10, 10, generator=g)
    data = TensorDataset(x, (x > 0.6).float())
    tr.seed_everything(0)
    model = nn.Conv2d(1, 1, 1)
    # a 1x1 conv must learn a steep step at 0.6: a large lr, no decay (measured: dice 98.8, iou 97.6)
    result = tr.train_segmenter(model, data, data, epochs=15, lr=0.5, seed=0, batch_size=16, weight_decay=0.0,
                                out_dir=tmp_path, progress=False)
    assert result.metrics["dice"] > 98 and result.metrics["iou"] > 96.5
    direct = tr.dice_iou(model(x).detach()[:, 0] > 0, x[:, 0] > 0.6)
    assert result.metrics["dice"] == pytest.approx(direct[0].mean().item())
    assert (tmp_path / "curves.png").is_file()


def test_bad_arguments_and_outputs():
    data = quadrant_data(16, 0)
    with pytest.raises(ValueError, match="epochs=0"):
        tr.train_classifier(tiny_cnn(), data, epochs=0)
    with pytest.raises(ValueError, match="lr=-1"):
        tr.train_classifier(tiny_cnn(), data, lr=-1)
    with pytest.raises(ValueError, match="lower batch_size"):
        tr.train_classifier(tiny_cnn(), data, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="seed"):
        tr.seed_everything(-1)

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = tiny_cnn()

        def forward(self, x):
            return self.body(x), self.body(x)

    with pytest.raises(TypeError, match="single logits tensor"):
        tr.train_classifier(TwoHeads(), data, batch_size=8, progress=False)
