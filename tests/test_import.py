"""`import attnzoo` leaves PyG, smp and matplotlib unimported, and every front door still works (fresh processes).

The import time itself is measured by benchmarks/import_time.py, never asserted here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from attnzoo.zoo.host_models import AfterImport

HEAVY = ("torch_geometric", "segmentation_models_pytorch", "matplotlib")


def run_fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter with every warning shown; its stdout, or its stderr in the failure."""
    result = subprocess.run([sys.executable, "-W", "always", "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.jit.script" not in result.stderr  # PyG's import-time warning stays silenced where attnzoo imports it
    return result.stdout


def test_import_attnzoo_leaves_heavy_libraries_out_and_timm_layers_work():
    out = run_fresh(f"""
        import sys
        import attnzoo
        heavy = {HEAVY!r}
        assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]

        # every model is listed, those built on PyG and smp too
        assert {{"tangnn", "tangnn_lc", "tangnn_graph"}} <= set(attnzoo.list_models(task="graph"))
        assert {{"smp_unet_ela", "smp_unet_ulsam"}} <= set(attnzoo.list_models(task="segmentation"))

        import timm, torch
        model = timm.create_model("ela_resnet18", num_classes=3)
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)

        # timm's FX tracing keeps the top-m ops as leaves although TopMAttentionConv (and PyG) is not imported
        import attnzoo.kernels
        from timm.layers import _fx
        assert attnzoo.kernels.topm_attention in _fx._autowrap_functions
        assert attnzoo.kernels.topm_knn in _fx._autowrap_functions
        assert not [m for m in heavy if m in sys.modules], "timm.create_model imported " + str(heavy)

        import attnzoo.layers
        assert "TopMAttentionConv" in dir(attnzoo.layers) and "TopMAttentionConv" in attnzoo.layers.__all__
        assert "torch_geometric" not in sys.modules
        from attnzoo.layers import TopMAttentionConv
        from torch_geometric.nn import MessagePassing
        assert issubclass(TopMAttentionConv, MessagePassing) and attnzoo.layers.TopMAttentionConv is TopMAttentionConv
        for name in attnzoo.layers.__all__:
            getattr(attnzoo.layers, name)
        try:
            attnzoo.layers.NoSuchLayer
        except AttributeError as err:
            assert "NoSuchLayer" in str(err)
        else:
            raise AssertionError("attnzoo.layers.NoSuchLayer did not raise AttributeError")

        gnn = attnzoo.create_model("tangnn", in_channels=4, hidden_channels=8, out_channels=2, num_layers=2, m=3)
        x, edge_index = torch.randn(6, 4), torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
        assert gnn(x, edge_index).shape == (6, 2)
        assert "segmentation_models_pytorch" not in sys.modules and "matplotlib" not in sys.modules
        print("ok")
    """)
    assert out.strip().endswith("ok")


@pytest.mark.parametrize("order", ["attnzoo first", "smp first"])
def test_smp_sees_the_mkunet_encoders_in_both_import_orders(order):
    imports = ("import attnzoo\nimport segmentation_models_pytorch as smp" if order == "attnzoo first" else
               "import segmentation_models_pytorch as smp\nimport attnzoo")
    out = run_fresh(imports + """
import sys
import torch
from attnzoo.zoo.host_models import AfterImport
from attnzoo.zoo.smp_bridge import MKUNetEncoder
assert not [f for f in sys.meta_path if isinstance(f, AfterImport)], sys.meta_path  # the hook has done its work
model = smp.Unet("attnzoo-mkunet_t", encoder_weights=None, classes=2)
assert isinstance(model.encoder, MKUNetEncoder)
assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
assert {"attnzoo-mkunet", "attnzoo-mkunet_s", "attnzoo-mkunet_t"} <= set(smp.encoders.get_encoder_names())
print("ok")
""")
    assert out.strip().endswith("ok")


def test_building_an_smp_model_through_attnzoo_imports_smp_then():
    out = run_fresh("""
        import sys
        import attnzoo
        assert "segmentation_models_pytorch" not in sys.modules
        model = attnzoo.create_model("smp_unet_ela", encoder_name="attnzoo-mkunet_t", classes=1)
        assert type(model).__name__ == "AttentionUnet" and "segmentation_models_pytorch" in sys.modules
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_after_import_runs_once_after_a_successful_import(tmp_path, monkeypatch):
    # a module that fails on its first import and works on the second: the hook waits for the one that works
    flag = tmp_path / "fail_once"
    flag.touch()
    (tmp_path / "attnzoo_hooked_module.py").write_text(
        "from pathlib import Path\n"
        f"flag = Path({str(flag)!r})\n"
        "if flag.exists():\n"
        "    flag.unlink()\n"
        "    raise RuntimeError('first import fails')\n"
        "VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    hook = AfterImport("attnzoo_hooked_module", lambda module: seen.append(module.VALUE))
    monkeypatch.setattr(sys, "meta_path", [hook, *sys.meta_path])
    monkeypatch.delitem(sys.modules, "attnzoo_hooked_module", raising=False)
    with pytest.raises(RuntimeError, match="first import fails"):
        __import__("attnzoo_hooked_module")
    assert seen == [] and hook in sys.meta_path
    module = __import__("attnzoo_hooked_module")
    assert seen == [42] and hook not in sys.meta_path
    assert type(module.__loader__).__name__ == "SourceFileLoader"  # the module keeps its own loader
    monkeypatch.delitem(sys.modules, "attnzoo_hooked_module")
