"""Class 5, weights: publish refuses non-finite tensors; a load refuses dtypes that differ other than floating to
floating; a non-finite checkpoint loads only with allow_nonfinite=True."""

import json

import pytest
import torch
from safetensors.torch import save_file

import attnzoo
from attnzoo import hub


def _poison(folder, key="fc.weight", value=float("nan")):
    """Overwrite one tensor of a save_pretrained folder and re-hash it (the sha256 then matches: only the check on
    values can refuse it)."""
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    state[key].view(-1)[0] = value
    save_file(state, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["sha256"] = hub.sha256_of(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    return state


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_publish_refuses_non_finite_tensors(hub_dir, saved, value):
    _poison(saved[1], "stem.bias", value)
    with pytest.raises(ValueError, match=r"non-finite \(NaN/inf\) values in 1 tensor\(s\): stem.bias; "
                                         "aztest_tinynet.unit is not published"):
        hub.publish("aztest_tinynet.unit", saved[1], hub_dir)
    assert list(hub_dir.iterdir()) == []


def test_non_finite_checkpoint_loads_only_with_opt_in(hub_dir, saved, published):
    # the published file is made non-finite after publishing, and its record re-hashed: a matching sha256
    path = hub_dir / published.file
    state = _poison(path.parent, "fc.weight")
    manifest = json.loads((hub_dir / "manifest.json").read_text())
    manifest["checkpoints"]["aztest_tinynet.unit"].update(sha256=hub.sha256_of(path), size=path.stat().st_size)
    (hub_dir / "manifest.json").write_text(json.dumps(manifest))
    for load in (lambda **kw: attnzoo.create_model("aztest_tinynet.unit", pretrained=True, **kw),
                 lambda **kw: attnzoo.from_pretrained(path.parent, **kw)):
        with pytest.raises(ValueError, match="non-finite .* fc.weight; nothing was loaded. Pass allow_nonfinite=True"):
            load()
        model = load(allow_nonfinite=True)
        assert torch.isnan(model.fc.weight[0, 0]) and torch.equal(model.stem.weight, state["stem.weight"])


def test_non_finite_checkpoint_of_a_non_timm_model(tmp_path):
    state = attnzoo.create_model("aztest_tinygnn").state_dict()
    state["lin2.bias"][1] = float("inf")
    save_file(state, tmp_path / "gnn.safetensors")
    with pytest.raises(ValueError, match="non-finite .* lin2.bias"):
        attnzoo.create_model("aztest_tinygnn", pretrained=True, checkpoint_path=tmp_path / "gnn.safetensors")
    model = attnzoo.create_model("aztest_tinygnn", pretrained=True, checkpoint_path=tmp_path / "gnn.safetensors",
                                 allow_nonfinite=True)
    assert torch.isinf(model.lin2.bias[1])


def test_dtypes_may_differ_only_floating_to_floating(tmp_path):
    reference = attnzoo.create_model("aztest_tinygnn").state_dict()
    half = {k: v.half() for k, v in reference.items()}
    save_file(half, tmp_path / "half.safetensors")
    model = attnzoo.create_model("aztest_tinygnn", pretrained=True, checkpoint_path=tmp_path / "half.safetensors")
    assert model.lin1.weight.dtype == torch.float32
    torch.testing.assert_close(model.lin1.weight, half["lin1.weight"].float(), rtol=0, atol=0)
    ints = {**reference, "lin1.weight": reference["lin1.weight"].round().to(torch.int32)}
    save_file(ints, tmp_path / "int.safetensors")
    with pytest.raises(ValueError, match=r"dtype mismatches \(only floating -> floating may differ\) \(1\): "
                                         "lin1.weight: checkpoint torch.int32 vs model torch.float32"):
        attnzoo.create_model("aztest_tinygnn", pretrained=True, checkpoint_path=tmp_path / "int.safetensors")


def test_int_buffer_dtype_is_checked_through_timm_too(tmp_path, saved):
    # BatchNorm's num_batches_tracked is int64; an int32 one was silently cast by the timm path
    from safetensors.torch import load_file

    state = load_file(saved[1] / "model.safetensors")
    state["stage.0.num_batches_tracked"] = state["stage.0.num_batches_tracked"].to(torch.int32)
    save_file(state, tmp_path / "int32.safetensors")
    with pytest.raises(ValueError, match="stage.0.num_batches_tracked: checkpoint torch.int32 vs model torch.int64"):
        attnzoo.create_model("aztest_tinynet", pretrained=True, checkpoint_path=tmp_path / "int32.safetensors")
    with pytest.raises(ValueError, match="dtype mismatches"):
        hub.load_weights(attnzoo.create_model("aztest_tinynet"), tmp_path / "int32.safetensors")
