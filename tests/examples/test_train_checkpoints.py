"""examples/train_checkpoints.py --smoke: every checkpoint it saves publishes, and `attnzoo eval` reproduces it."""

import importlib.util
import json
from pathlib import Path

import pytest
from fake_fmnist import write_fake_fmnist

from attnzoo import hub
from attnzoo.apps.evaluation import compare_with_manifest, evaluate

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_checkpoints.py"
EXPECTED = {
    "mkunet_t.fmnist_seg": ("segmentation", "fashion-mnist", {"dice", "iou"}),
    "mkunet_s.fmnist_seg": ("segmentation", "fashion-mnist", {"dice", "iou"}),
    "mkunet.fmnist_seg": ("segmentation", "fashion-mnist", {"dice", "iou"}),
    "tangnn.karate": ("graph", "karateclub", {"accuracy"}),
    "tangnn.fmnist_knn": ("graph", "fashion-mnist-knn:split=test,k=4,seed=0", {"accuracy"}),
    "dfa3d_bev_tiny.synth": ("bev", "synthetic-multiview:length=4,seed=3,bev_size=16", {"bev_iou"}),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[dict]]:
    spec = importlib.util.spec_from_file_location("example_train_checkpoints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = write_fake_fmnist(tmp_path_factory.mktemp("fmnist"))
    rows = module.main(["--smoke", "--out", str(tmp_path_factory.mktemp("ckpt")), "--data-root", str(root)])
    return root, rows


def test_saves_every_checkpoint_with_task_dataset_and_metrics(trained):
    _, rows = trained
    assert [r["name"] for r in rows] == list(EXPECTED)
    for row in rows:
        task, dataset, keys = EXPECTED[row["name"]]
        config = json.loads((row["folder"] / "config.json").read_text())
        assert (config["architecture"], config["task"], config["dataset"]) == (row["name"].split(".")[0], task,
                                                                               dataset)
        assert config["metrics"] == row["metrics"] and set(row["metrics"]) == keys
        assert all(0.0 <= v <= 100.0 for v in row["metrics"].values())
        assert row["size"] <= 4 * 2**20
    seg = json.loads((rows[0]["folder"] / "config.json").read_text())
    # 28 x 28 grey repeated to 3 channels with Fashion-MNIST statistics: how the evaluator preprocesses test images
    assert seg["model_args"]["in_chans"] == 3 and seg["pretrained_cfg"]["input_size"] == [3, 28, 28]


def test_published_checkpoints_evaluate_to_their_metrics(trained, tmp_path, monkeypatch):
    root, rows = trained
    monkeypatch.setattr(hub, "embedded_dir", lambda: None)
    monkeypatch.setenv("ATTNZOO_HUB_DIR", str(tmp_path))
    for row in rows:
        hub.publish(row["name"], row["folder"], tmp_path)
    for row in rows:
        metrics = evaluate(row["name"], root=root, batch_size=16, device="cpu", progress=False)
        assert compare_with_manifest(row["name"], metrics, tolerance=1e-6) == [], row["name"]
