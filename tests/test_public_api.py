"""The stable public names of DESIGN.md exist, and every op takes the backend switch."""

import inspect
import subprocess
import sys

import attnzoo
import attnzoo.kernels
import attnzoo.layers


def test_top_level_names():
    for name in ("create_model", "list_models", "list_pretrained", "save_pretrained", "from_pretrained", "model_task",
                 "register_model"):
        assert callable(getattr(attnzoo, name)), name
        assert name in attnzoo.__all__ and getattr(attnzoo.zoo, name) is getattr(attnzoo, name), name
    assert attnzoo.model_task("ela_resnet18") == "classification" and attnzoo.model_task("tangnn.karate") == "graph"
    assert inspect.signature(attnzoo.create_model).parameters["pretrained"].default is False
    assert set(inspect.signature(attnzoo.list_models).parameters) == {"pattern", "pretrained", "task"}


def test_layer_names():
    for name in ("ELA", "ULSAM", "MKDC", "MKIR", "NiNBlock", "HaloAttention", "DeformableAttention3D",
                 "TopMAttentionConv"):
        layer = getattr(attnzoo.layers, name)
        assert hasattr(layer, "reset_parameters") and hasattr(layer, "extra_repr"), name


def test_nothing_outside_the_zoo_imports_its_private_registry():
    from pathlib import Path

    root = Path(attnzoo.__file__).resolve().parents[1]
    files = [p for part in ("attnzoo", "tests", "examples", "benchmarks") for p in (root / part).rglob("*.py")
             if (root / "attnzoo" / "zoo") not in p.parents and p != Path(__file__).resolve()]
    assert files
    wrong = [str(p.relative_to(root)) for p in files if "zoo._registry" in p.read_text() or
             "from attnzoo.zoo import _registry" in p.read_text()]
    assert not wrong, f"import the registry's public names from attnzoo or attnzoo.zoo instead: {wrong}"


def test_ops_take_backend():
    for name in ("halo_attention", "deform_attn_3d", "ms_deform_attn", "topm_attention", "ela_gate"):
        op = getattr(attnzoo.kernels, name)
        assert inspect.signature(op).parameters["backend"].default in ("auto", None), name
    assert callable(attnzoo.kernels.set_backend)


def test_every_task_has_models():
    for task in ("classification", "segmentation", "graph", "bev"):
        assert attnzoo.list_models(task=task), task


def test_publishing_a_checkpoint_does_not_change_the_default_architecture():
    import timm

    from attnzoo import hub

    published = {r.arch: r.name for r in hub.all_records() if r.task == "classification"}
    assert published, "the embedded hub has classification checkpoints"
    for arch, name in published.items():
        assert name in timm.list_pretrained(f"{arch}.*")
        default = attnzoo.create_model(arch)
        assert default.pretrained_cfg["tag"] == "untrained"
        base = timm.models.get_pretrained_cfg(f"{arch}.untrained")
        assert default.num_classes == base.num_classes  # the base cfg's head, not the checkpoint's
        assert default.pretrained_cfg["input_size"] == base.input_size


def test_import_prints_no_third_party_deprecation_noise():
    # PyG's import-time torch.jit.script warning is silenced for attnzoo's import only
    result = subprocess.run([sys.executable, "-W", "always", "-c", "import attnzoo"], capture_output=True, text=True,
                            check=True)
    assert "torch.jit.script" not in result.stderr
