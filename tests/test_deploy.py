"""Every registered model, published checkpoint and layer survives what users do to a model before shipping it.

The matrix (cases in ``deploy_cases.py``, checks in ``deploy_checks.py``): torch.export with dynamic sizes,
torch.onnx.export(dynamo=True) run by onnxruntime, autocast bf16 forward and backward, fp16 autocast, ``.half()``,
channels_last, meta-device init + load, deepcopy/pickle, torch.compile(fullgraph=True).

``make test`` runs the cheap checks on everything (fp16 autocast on every model but the base-size ones), and the
heavy ones (export, ONNX, compile) on every layer and on one model per custom op; ``make test-deploy`` runs the
rest too (marker ``deploy_full``).
"""

from __future__ import annotations

import pytest
import torch
from deploy_cases import all_cases, zoo_names
from deploy_checks import (
    check_autocast,
    check_channels_last,
    check_compile,
    check_copy_pickle,
    check_export,
    check_half,
    check_meta_init,
    check_onnx,
)

import attnzoo

CASES = all_cases()

# One model per custom op (and the layers, which are small) carry the heavy checks in `make test`.
CORE = {"azhalonet_h0", "ela_resnet18", "tangnn", "dfa3d_bev_tiny", "mkunet_t", "ninformer_cifar"}


def _cases(heavy: bool) -> list:
    params = []
    for case in CASES:
        core = case.name.startswith("layer:") or case.name in CORE
        marks = [pytest.mark.deploy_full] if heavy and not core else []
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


def test_every_registered_model_and_checkpoint_has_a_case():
    names = {c.name for c in CASES}
    assert set(zoo_names(attnzoo.list_models())) <= names
    assert set(zoo_names(attnzoo.list_pretrained())) <= names
    assert len(names) > 30  # the filter keeps attnzoo's own models


@pytest.mark.parametrize("case", _cases(heavy=True))
def test_torch_export_with_dynamic_sizes(case):
    check_export(case)


@pytest.mark.parametrize("case", _cases(heavy=True))
def test_onnx_export_runs_in_onnxruntime(case, tmp_path):
    check_onnx(case, tmp_path)


@pytest.mark.parametrize("case", _cases(heavy=True))
def test_torch_compile_fullgraph(case):
    check_compile(case, variants=(0, 1))


def _autocast_cases() -> list:
    """Every case in bf16 and fp16. A CPU has no fp16 matmul kernels, so fp16 costs a base-size model about a
    minute: those (``*_base*``) run it in ``make test-deploy``, and their smaller siblings, the same code at another
    width, in ``make test``."""
    params = []
    for case in CASES:
        for dtype, label in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
            marks = [pytest.mark.deploy_full] if dtype is torch.float16 and "_base" in case.name else []
            params.append(pytest.param(case, dtype, id=f"{case.name}-{label}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "dtype"), _autocast_cases())
def test_autocast_forward_and_backward(case, dtype):
    check_autocast(case, dtype)


@pytest.mark.parametrize("case", _cases(heavy=False))
def test_half_is_finite(case):
    check_half(case)


@pytest.mark.parametrize("case", _cases(heavy=False))
def test_channels_last(case):
    check_channels_last(case)


@pytest.mark.parametrize("case", _cases(heavy=False))
def test_meta_device_init_then_load(case):
    check_meta_init(case)


@pytest.mark.parametrize("case", _cases(heavy=False))
def test_deepcopy_and_pickle(case):
    check_copy_pickle(case)
