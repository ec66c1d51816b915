"""attnzoo.apps.evaluation (`attnzoo eval`), viz (`attnzoo viz`) and demo (`attnzoo demo`), on tiny
checkpoints published into a temporary hub and fake Fashion-MNIST files (no network, no real dataset)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from fake_fmnist import write_fake_fmnist
from PIL import Image

import attnzoo
from attnzoo import hub
from attnzoo.apps import demo, evaluation, viz
from attnzoo.apps.training import evaluate_classifier, evaluate_segmenter
from attnzoo.data.fashion_mnist import fashion_mnist, fashion_mnist_segmentation, fmnist_cfg, fmnist_transform
from attnzoo.layers.ela import ELA
from attnzoo.layers.halo import HaloAttention

TINY_RESNET = dict(channels=(8, 16, 32, 64), stem_width=8, in_chans=1, num_classes=10)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_fake_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    """An empty hub that hides the embedded weights/ folder."""
    monkeypatch.setattr(hub, "embedded_dir", lambda: None)
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("ATTNZOO_HUB_DIR", str(folder))
    return folder


def publish(model: nn.Module, name: str, hub_dir: Path, metrics: dict, dataset: str) -> None:
    source = hub_dir.parent / f"src_{name}"
    attnzoo.save_pretrained(model, source, metrics=metrics, dataset=dataset)
    hub.publish(name, source, hub_dir)


def tiny_classifier(image_size: int = 28) -> nn.Module:
    torch.manual_seed(0)
    model = attnzoo.create_model("ela_resnet18", **TINY_RESNET)
    model.pretrained_cfg = {**model.pretrained_cfg, **fmnist_cfg(image_size, 1, 10)}
    return model


def test_evaluate_classification_reproduces_published_top1(root, hub_dir):
    model = tiny_classifier(image_size=32)
    # the direct computation, with the preprocessing the checkpoint was "trained" with
    direct = evaluate_classifier(model, fashion_mnist("test", root, fmnist_transform(32, 1)))["top1"]
    publish(model, "ela_resnet18.tiny", hub_dir, {"top1": round(direct, 2)}, "fashion-mnist")
    loaded = attnzoo.create_model("ela_resnet18.tiny", pretrained=True)
    assert evaluation.data_config(loaded) == {"image_size": 32, "in_chans": 1, "mean": (0.286,), "std": (0.353,)}
    metrics = evaluation.evaluate("ela_resnet18.tiny", root=root, progress=False)
    assert metrics == {"top1": round(direct, 2)}
    assert evaluation.compare_with_manifest("ela_resnet18.tiny", metrics) == []
    problems = evaluation.compare_with_manifest("ela_resnet18.tiny", {"top1": metrics["top1"] + 0.5})
    assert len(problems) == 1 and "tolerance 0.3" in problems[0]
    assert "not recomputed" in evaluation.compare_with_manifest("ela_resnet18.tiny", {})[0]


def test_evaluate_segmentation_reproduces_dice_iou(root, hub_dir):
    torch.manual_seed(0)
    model = attnzoo.create_model("mkunet_t", num_classes=1, in_chans=3)
    model.pretrained_cfg = fmnist_cfg(28, 3, 1)
    direct = evaluate_segmenter(model, fashion_mnist_segmentation("test", root, fmnist_transform(28, 3)))
    published = {"dice": round(direct["dice"], 2), "iou": round(direct["iou"], 2)}
    publish(model, "mkunet_t.tiny", hub_dir, published, "fashion-mnist")
    assert evaluation.evaluate("mkunet_t.tiny", root=root, progress=False) == published


def test_evaluate_karateclub_accuracy(hub_dir):
    from torch_geometric.datasets import KarateClub

    torch.manual_seed(0)
    model = attnzoo.create_model("tangnn", in_channels=34, hidden_channels=8, num_layers=2, out_channels=4).eval()
    data = KarateClub()[0]
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(-1)
    test = ~data.train_mask
    accuracy = round(100.0 * (pred[test] == data.y[test]).float().mean().item(), 2)
    publish(model, "tangnn.tiny", hub_dir, {"accuracy": accuracy}, "karateclub")
    assert evaluation.evaluate("tangnn.tiny", progress=False) == {"accuracy": accuracy}


def test_graph_for_dataset(root):
    data = evaluation.graph_for_dataset("fashion-mnist-knn:split=test,k=3,num_nodes=20,seed=1", root=root)
    assert data.x.shape == (20, 784) and data.edge_index.shape == (2, 60)
    assert int(data.train_mask.sum()) == 12 and int(data.test_mask.sum()) == 4
    assert evaluation.graph_for_dataset("karateclub").num_nodes == 34
    with pytest.raises(ValueError, match="unknown fashion-mnist-knn argument 'radius'"):
        evaluation.graph_for_dataset("fashion-mnist-knn:radius=2", root=root)
    with pytest.raises(ValueError, match="not a graph"):
        evaluation.graph_for_dataset("cora")


def test_evaluation_dataset_strings_and_errors(hub_dir):
    assert evaluation.parse_dataset("fashion-mnist-knn:split=test, k=5") == ("fashion-mnist-knn",
                                                                               {"split": "test", "k": "5"})
    with pytest.raises(ValueError, match="not key=value"):
        evaluation.parse_dataset("fashion-mnist-knn:k5")
    publish(tiny_classifier(), "ela_resnet18.elsewhere", hub_dir, {"top1": 1.0}, "my-private-set")
    with pytest.raises(ValueError, match="'my-private-set', which has no evaluator"):
        evaluation.evaluate("ela_resnet18.elsewhere")
    with pytest.raises(ValueError, match="already registered"):
        evaluation.register_evaluator("fashion-mnist")(lambda *a: {})


class ResidualBlock(nn.Module):
    """Adds to the attention output in place afterwards, as timm's ResNet blocks do (`x += shortcut`)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.se = ELA(8)

    def forward(self, x):
        x = self.conv(x)
        out = self.se(x)
        out += x
        return out


def test_gate_map_is_the_modulation_ratio():
    torch.manual_seed(0)
    model = ResidualBlock()
    x = torch.randn(1, 1, 12, 10)
    maps = viz.attention_maps(model, x)
    assert [(m.module, m.kind, m.feature_size) for m in maps] == [("se", "gate", (12, 10))]
    with torch.no_grad():
        feats = model.conv(x)
        expected = model.se(feats).abs().mean(1)[0] / feats.abs().mean(1)[0]
    torch.testing.assert_close(maps[0].values, expected)


def test_halo_map_marks_the_peak_block_and_its_window():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 2, stride=2), HaloAttention(16, block_size=4, halo_size=1, num_heads=2))
    x = torch.randn(1, 1, 16, 16)
    (m,) = viz.attention_maps(model, x)
    assert m.kind == "halo" and m.feature_size == (8, 8)
    with torch.no_grad():
        energy = model(x).abs().mean(1)[0]  # (8, 8)
    py, px = divmod(int(energy.argmax()), 8)
    top, left = 4 * (py // 4) * 2, 4 * (px // 4) * 2  # block of 4 feature pixels = 8 image pixels
    assert m.block == (top, left, 8, 8) and m.window == (top - 2, left - 2, 12, 12)
    with pytest.raises(ValueError, match="no module of the classes"):
        viz.attention_maps(nn.Conv2d(1, 1, 1), x)
    with pytest.raises(ValueError, match="one image"):
        viz.attention_maps(model, torch.randn(2, 1, 16, 16))
    assert viz.attention_maps(model, torch.randn(1, 1, 2, 2)) == []  # a 1x1 feature map has nothing to show
    strided = nn.Sequential(nn.Conv2d(1, 16, 2, stride=2),
                            HaloAttention(16, stride=2, block_size=4, halo_size=1, num_heads=2))
    assert viz.attention_maps(strided, torch.randn(1, 1, 4, 4)) == []  # 2x2 in, 1x1 out: nothing to show either


def test_viz_main_writes_png_for_fmnist_index_and_file(root, hub_dir, tmp_path):
    out = viz.main("ulsam_mobilenetv2_100", "fmnist:3", tmp_path / "a.png", image_size=32, root=root)
    assert out.read_bytes()[:4] == b"\x89PNG"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8) + 90).save(tmp_path / "in.png")
    assert viz.main("ela_resnet18", tmp_path / "in.png", tmp_path / "b.png", max_maps=2, image_size=32).is_file()
    with pytest.raises(FileNotFoundError, match="fmnist:INDEX"):
        viz.main("ela_resnet18", tmp_path / "missing.png", tmp_path / "c.png")


def test_format_table_and_forward_every_model():
    assert demo.format_table([{"model": "a", "params": 1234, "ms": 1.5}, {"model": "bb", "params": 5, "ms": None}]) \
        == "model  params  ms  \n-----  ------  ----\na      1,234   1.50\nbb     5           "
    assert demo.format_table([{"a": 1.0, "bb": "x"}], markdown=True) == "| a    | bb |\n| ---- | -- |\n| 1.00 | x  |"
    rows = demo.forward_every_model(["mkunet_t", "tangnn", "ninformer_cifar"], progress=False)
    assert [(r["task"], r["output"]) for r in rows] == [("segmentation", "1x1x64x64"), ("graph", "64x4"),
                                                         ("classification", "1x10")]
    assert rows[0]["params"] == 27_384 and rows[2]["input"] == "1x3x32x32"


def test_run_demo_evaluates_fine_tunes_and_draws(root, hub_dir, tmp_path):
    model = tiny_classifier()
    top1 = evaluate_classifier(model, fashion_mnist("test", root, fmnist_transform(28, 1)))["top1"]
    publish(model, "ela_resnet18.tiny", hub_dir, {"top1": round(top1, 2)}, "fashion-mnist")
    result = demo.run_demo(tmp_path / "demo", root=root, subset=64, progress=False)
    (row,) = result["evaluated"]
    assert row["model"] == "ela_resnet18.tiny" and row["top1"] == pytest.approx(top1)
    assert row["published top1"] == round(top1, 2) and row["params"] == sum(p.numel() for p in model.parameters())
    assert row["attention"] == "ELA"  # the attnzoo layer in the model, by its public name
    tuned = result["fine_tuned"]
    assert tuned["before"] == pytest.approx(top1) and tuned["result"].steps == 1
    assert tuned["png"].read_bytes()[:4] == b"\x89PNG" and (tmp_path / "demo" / "finetune" / "metrics.csv").is_file()
    assert (tmp_path / "demo" / "demo_table.md").read_text().startswith("| model ")


@pytest.mark.parametrize("name, layers", [("ela_resnet18", "ELA"), ("nat_mini", "NeighborhoodAttention2D"),
                                          ("minimal_vit_small_patch16_224", "MinimalAttention+MinimalBlock"),
                                          ("moh_vit_small_patch16_224_75", "MoHAttention")])
def test_demo_names_the_attention_layers_of_every_kind_of_model(name, layers):
    model = attnzoo.create_model(name, num_classes=10)
    assert "+".join(sorted(demo._attention_layers(model))) == layers


def test_run_demo_without_checkpoints_falls_back_to_forward_passes(hub_dir, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(demo, "forward_every_model", lambda progress: calls.append(progress) or [{"model": "x"}])
    out = Path(hub_dir.parent / "demo")
    assert demo.run_demo(out, progress=False) == {"forward": [{"model": "x"}]} and calls == [False]
    assert (out / "demo_table.md").read_text() == "| model |\n| ----- |\n| x     |\n"
    assert "No published classification checkpoints" in capsys.readouterr().out
