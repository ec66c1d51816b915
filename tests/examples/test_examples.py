"""Every example runs end to end with --smoke on tiny synthetic data written to tmp (no network, no dataset).

The chain mirrors a user's: train_fmnist.py trains and saves, the checkpoint is published into a temporary hub,
finetune_imagefolder.py fine-tunes it by name on a new number of classes, and the same under torchrun + DDP.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_fmnist import write_fake_fmnist
from PIL import Image
from safetensors.torch import load_file

import attnzoo
from attnzoo import hub

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NIN = json.dumps({"img_size": 16, "embed_dim": 16, "d_ffn": 32, "depth": 1})


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_fake_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """3 classes x 16 RGB images of odd sizes in ImageFolder layout."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("ant", "bee", "cow")):
        (root / name).mkdir()
        for i in range(16):
            pixels = rng.integers(0, 60, (18, 22, 3), dtype=np.uint8)
            pixels[:, :, c] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def published(fmnist_root, tmp_path_factory) -> tuple[str, Path, dict]:
    """train_fmnist.py --smoke, then `attnzoo publish` into a temporary hub folder."""
    out = tmp_path_factory.mktemp("ckpt")
    metrics = load_example("train_fmnist").main(
        ["--model", "ninformer_cifar", "--model-kwargs", NIN, "--image-size", "16", "--data-root", str(fmnist_root),
         "--out", str(out), "--smoke"])["metrics"]
    hub_dir = tmp_path_factory.mktemp("hub")
    hub.publish("ninformer_cifar.smoke", out, hub_dir)
    return "ninformer_cifar.smoke", hub_dir, metrics


def test_train_fmnist_saves_a_reloadable_checkpoint(published, fmnist_root):
    name, hub_dir, metrics = published
    manifest = json.loads((hub_dir / "manifest.json").read_text())["checkpoints"][name]
    assert manifest["metrics"] == metrics and set(metrics) == {"top1"} and manifest["dataset"] == "fashion-mnist"
    assert manifest["pretrained_cfg"]["input_size"] == [1, 16, 16]
    assert manifest["model_kwargs"]["img_size"] == 16 and manifest["model_kwargs"]["in_chans"] == 1
    model = attnzoo.from_pretrained(hub_dir / name)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_train_fmnist_segmentation(fmnist_root, tmp_path):
    metrics = load_example("train_fmnist").main(
        ["--model", "mkunet_t", "--in-chans", "3", "--data-root", str(fmnist_root), "--out", str(tmp_path), "--smoke",
         "--save-dtype", "float16"])["metrics"]
    assert set(metrics) == {"dice", "iou"} and 0 <= metrics["iou"] <= metrics["dice"] <= 100
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["task"] == "segmentation" and config["metrics"] == metrics
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 3  # header, one train row, one val row
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # stored in half precision; the metrics are those of the rounded weights, reproduced after loading
    stored = load_file(tmp_path / "model.safetensors")
    assert all(v.dtype == torch.float16 for k, v in stored.items() if v.is_floating_point())
    from attnzoo.apps.training import evaluate_segmenter
    from attnzoo.data.fashion_mnist import fashion_mnist_segmentation, fmnist_transform

    test = fashion_mnist_segmentation("test", fmnist_root, fmnist_transform(28, 3))
    subset = torch.utils.data.Subset(test, torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:16])
    again = evaluate_segmenter(attnzoo.from_pretrained(tmp_path), subset)
    assert round(again["dice"], 2) == metrics["dice"] and round(again["iou"], 2) == metrics["iou"]


def test_train_fmnist_timm_baseline(fmnist_root, tmp_path):
    run = load_example("train_fmnist").main(
        ["--model", "timm:resnet10t", "--model-kwargs", json.dumps({"block_args": {"attn_layer": "se"}}),
         "--data-root", str(fmnist_root), "--out", str(tmp_path), "--smoke"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"] == run["metrics"] and saved["model_kwargs"] == {"block_args": {"attn_layer": "se"}}
    assert "layer1.0.se.fc1.weight" in load_file(tmp_path / "model.safetensors")


def test_finetune_imagefolder_from_published_checkpoint(published, image_folder, tmp_path, monkeypatch):
    name, hub_dir, _ = published
    monkeypatch.setenv("ATTNZOO_HUB_DIR", str(hub_dir))
    run = load_example("finetune_imagefolder").main(["--model", name, "--data", str(image_folder), "--out",
                                                     str(tmp_path), "--smoke"])
    assert run["classes"] == ["ant", "bee", "cow"] and run["result"].steps == 2
    # the backbone came from the checkpoint, the head is new (3 classes)
    trained = load_file(hub_dir / name / "model.safetensors")
    tuned = attnzoo.from_pretrained(tmp_path)
    assert tuned.get_classifier().out_features == 3
    assert tuned.patch_embed.proj.weight.shape == trained["patch_embed.proj.weight"].shape == (16, 1, 4, 4)
    assert json.loads((tmp_path / "config.json").read_text())["pretrained_cfg"]["num_classes"] == 3


def test_insert_attention_into_timm_backbones(image_folder, tmp_path):
    from attnzoo.layers.ela import ELA
    from attnzoo.layers.ulsam import ULSAM

    example = load_example("insert_attention_timm")
    run = example.main(["--backbone", "resnet10t", "--attention", "ela", "--data", str(image_folder),
                        "--image-size", "32", "--out", str(tmp_path / "ela"), "--smoke"])
    assert run["timm_weights"] is False  # offline in the tests
    assert run["blocks"] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert all(isinstance(run["model"].get_submodule(b).se, ELA) for b in run["blocks"])
    saved = load_file(tmp_path / "ela" / "model.safetensors")
    assert "layer4.0.se.conv.weight" in saved and saved["fc.weight"].shape[0] == 3

    import timm

    mobile = timm.create_model("mobilenetv2_050")
    names = example.insert_attention(mobile, lambda c: ULSAM(c, num_splits=4))
    assert len(names) == 17 and mobile.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    # the slot sits right before the pointwise projection, which consumes exactly the slot's channels
    blocks = [mobile.get_submodule(n) for n in names]
    assert all(b.se.channels == getattr(b, "conv_pwl", getattr(b, "conv_pw", None)).in_channels for b in blocks)
    with pytest.raises(ValueError, match="no timm block"):
        example.insert_attention(torch.nn.Linear(2, 2), ELA)


def test_finetune_mkunet_on_image_mask_pairs(tmp_path):
    rng = np.random.default_rng(1)
    for sub in ("images", "masks"):
        (tmp_path / "pairs" / sub).mkdir(parents=True)
    for i in range(12):
        image = rng.integers(0, 60, (30, 34, 3), dtype=np.uint8)
        mask = np.zeros((30, 34), np.uint8)
        y, x = rng.integers(0, 18, 2)
        image[y:y + 12, x:x + 12] += 150
        mask[y:y + 12, x:x + 12] = 255
        Image.fromarray(image).save(tmp_path / "pairs" / "images" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "pairs" / "masks" / f"{i}.png")
    run = load_example("finetune_mkunet").main(["--data", str(tmp_path / "pairs"), "--image-size", "36", "--out",
                                                 str(tmp_path / "out"), "--smoke"])
    assert run["result"].steps == 1  # 10 training pairs, batch 8, last partial batch dropped
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architecture"] == "mkunet_t" and set(config["metrics"]) == {"dice", "iou"}
    (tmp_path / "pairs" / "masks" / "3.png").unlink()
    with pytest.raises(ValueError, match="unpaired"):
        load_example("finetune_mkunet").main(["--data", str(tmp_path / "pairs"), "--out", str(tmp_path), "--smoke"])


def test_finetune_ddp_two_cpu_ranks_end_identical(published, image_folder, tmp_path):
    name, hub_dir, _ = published
    env = {**os.environ, "ATTNZOO_HUB_DIR": str(hub_dir), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # --standalone: a local rendezvous on a free port (a fixed --master_port could collide with a parallel run)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(EXAMPLES / "finetune_ddp.py"), "--model", name, "--data", str(image_folder),
           "--out", str(tmp_path / "out"), "--dump-params", str(tmp_path / "params"), "--smoke", "--max-steps", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / "params" / f"rank{r}.safetensors") for r in (0, 1))
    assert rank0.keys() == rank1.keys() and len(rank0) > 10
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    start = load_file(hub_dir / name / "model.safetensors")
    assert not torch.equal(rank0["patch_embed.proj.weight"], start["patch_embed.proj.weight"])  # it trained
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "metrics.csv").is_file()


def test_train_tangnn_on_karateclub_reproduced_by_eval(tmp_path, monkeypatch):
    from attnzoo.apps.evaluation import evaluate

    run = load_example("train_tangnn").main(["--out", str(tmp_path / "ckpt"), "--smoke", "--hidden", "8"])
    assert [r["epoch"] for r in run["history"]] == [1, 2, 3, 4, 5]
    assert (tmp_path / "ckpt" / "curves.png").is_file() and (tmp_path / "ckpt" / "metrics.csv").is_file()
    monkeypatch.setattr(hub, "embedded_dir", lambda: None)
    monkeypatch.setenv("ATTNZOO_HUB_DIR", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    hub.publish("tangnn.karate", tmp_path / "ckpt", tmp_path / "hub")
    assert evaluate("tangnn.karate", progress=False) == run["metrics"]


def test_train_tangnn_graph_on_superpixels_reproduced_by_eval(fmnist_root, tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    from attnzoo.apps.evaluation import evaluate

    monkeypatch.setenv("ATTNZOO_CACHE", str(tmp_path / "cache"))  # the superpixel graphs of the fake images
    run = load_example("train_tangnn_graph").main(["--out", str(tmp_path / "ckpt"), "--smoke", "--fmnist-root",
                                                   str(fmnist_root)])
    assert [r["epoch"] for r in run["history"]] == [1, 2]
    assert run["dataset"] == "fashion-mnist-superpixels:split=test,num_images=8"
    assert (tmp_path / "ckpt" / "curves.png").is_file() and (tmp_path / "ckpt" / "metrics.csv").is_file()
    monkeypatch.setattr(hub, "embedded_dir", lambda: None)
    monkeypatch.setenv("ATTNZOO_HUB_DIR", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    hub.publish("tangnn_graph.smoke", tmp_path / "ckpt", tmp_path / "hub")
    assert evaluate("tangnn_graph.smoke", root=fmnist_root, progress=False) == run["metrics"]


def test_tangnn_hetero_example_trains_to_hetero_on_images_and_superpixels(fmnist_root, tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    monkeypatch.setenv("ATTNZOO_CACHE", str(tmp_path / "cache"))
    run = load_example("tangnn_hetero").main(["--out", str(tmp_path / "out"), "--smoke", "--fmnist-root",
                                              str(fmnist_root)])
    data = run["data"]
    assert set(data.node_types) == {"image", "superpixel"} and len(data.edge_types) == 4
    assert data["image"].x.shape == (20, 49) and data["superpixel"].x.size(1) == 3
    # one bipartite TopMAttentionConv per relation, with that relation's source and destination widths
    conv = run["model"].convs[0]["superpixel__part_of__image"]
    assert conv.lin_key.in_channels == 3 and conv.lin_query.in_channels == 49
    assert [r["epoch"] for r in run["history"]] == [1, 2] and 0 <= run["metrics"]["accuracy"] <= 100
    assert (tmp_path / "out" / "model.pt").is_file() and (tmp_path / "out" / "curves.png").is_file()
