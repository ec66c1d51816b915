"""The shared timm model checker passes real timm models and catches each kind of broken model."""

from __future__ import annotations

import functools
import types

import pytest
import timm
import torch
import torch.nn as nn
from timm_model_checks import (
    check_backward,
    check_backward_fx,
    check_classifier,
    check_default_cfg,
    check_features_only,
    check_forward,
    check_forward_fx,
    check_grad_checkpointing,
    check_timm_classifier,
    check_torchscript,
)

INPUT = (3, 64, 64)
resnet = functools.partial(timm.create_model, "resnet10t")


def _broken(patch):
    """A resnet10t factory whose models get ``patch(model)`` applied after construction."""

    def factory(**kwargs):
        model = resnet(**kwargs)
        patch(model)
        return model

    return factory


def test_real_timm_cnn_passes_every_check():
    check_classifier(resnet, INPUT)


def test_real_timm_vit_passes_with_token_layout():
    vit = functools.partial(timm.create_model, "vit_tiny_patch16_224", img_size=32, depth=3)
    check_classifier(vit, (3, 32, 32), spatial=False)


def test_unused_parameter_fails_backward():
    factory = _broken(lambda m: m.register_parameter("unused", nn.Parameter(torch.zeros(3))))
    check_forward(factory, INPUT)  # the forward alone cannot see it
    with pytest.raises(AssertionError, match="1 parameters got no gradient: \\['unused'\\]"):
        check_backward(factory, INPUT)


def test_nan_output_fails_forward():
    factory = _broken(lambda m: m.fc.register_forward_hook(lambda mod, args, out: out * float("nan")))
    with pytest.raises(AssertionError, match="NaN"):
        check_forward(factory, INPUT)


def test_reset_classifier_that_keeps_num_classes_fails_cfg_check():
    def patch(model):
        def reset_classifier(self, num_classes, global_pool="avg"):
            self.fc = nn.Identity()

        model.reset_classifier = types.MethodType(reset_classifier, model)

    with pytest.raises(AssertionError, match=r"reset_classifier\(0\) left num_classes=1000"):
        check_default_cfg(_broken(patch), INPUT)


def test_wrong_classifier_key_fails_cfg_check():
    factory = _broken(lambda m: setattr(m, "pretrained_cfg", {**m.pretrained_cfg, "classifier": "head"}))
    with pytest.raises(AssertionError, match="cfg\\['classifier'\\]='head'"):
        check_default_cfg(factory, INPUT)


def test_token_model_declared_spatial_fails_cfg_check():
    vit = functools.partial(timm.create_model, "vit_tiny_patch16_224", img_size=32, depth=1)
    with pytest.raises(AssertionError, match="expected a map"):
        check_default_cfg(vit, (3, 32, 32), spatial=True)


def test_wrong_feature_info_fails_features_check():
    def factory(**kwargs):
        model = resnet(**kwargs)
        model.feature_info.info[-1]["num_chs"] = 7
        return model

    with pytest.raises(AssertionError, match="level 4 has shape"):
        check_features_only(factory, INPUT)


def test_checkpointing_that_changes_outputs_fails():
    def patch(model):
        def set_grad_checkpointing(self, enable=True):
            self.grad_checkpointing = enable
            self.fc.register_forward_hook(lambda mod, args, out: out + 1.0)

        model.set_grad_checkpointing = types.MethodType(set_grad_checkpointing, model)

    with pytest.raises(AssertionError, match="grad checkpointing changes outputs"):
        check_grad_checkpointing(_broken(patch), INPUT)


def test_unregistered_name_is_rejected():
    with pytest.raises(ValueError, match="unknown model 'resnet10t'"):
        check_timm_classifier("resnet10t")


class _DataDependent(nn.Module):
    """A classifier whose forward branches on a value: FX cannot trace it."""

    def __init__(self, num_classes=10, **_):
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x):
        if x.mean() > 10:  # control flow on a traced value
            x = x * 2
        return self.fc(x.mean((2, 3)))


def test_untraceable_forward_fails_fx_checks():
    with pytest.raises(AssertionError, match="FX tracing failed"):
        check_forward_fx(_DataDependent, INPUT)
    with pytest.raises(AssertionError, match="FX tracing \\(train\\) failed"):
        check_backward_fx(_DataDependent, INPUT)


def test_scriptable_model_scripts_and_a_declared_one_must_say_so():
    check_torchscript(resnet, INPUT)

    class Declared(_DataDependent):
        _is_torch_scriptable = False  # declared, but torch.jit.script's own error names no alternative

        def forward(self, x, *extra):  # varargs do not script
            return self.fc(x.mean((2, 3)))

    with pytest.raises(AssertionError, match="declared unscriptable, but torch.jit.script fails with NotSupported"):
        check_torchscript(Declared, INPUT)
