"""timm's per-model test matrix (``tests/test_models.py`` in pytorch-image-models), as one reusable check.

Every attnzoo image classifier is a timm model, so it must pass what timm asks of its own models
(host-libraries spec §1.6-§1.7). Call from a test, once per registered classifier::

    from timm_model_checks import check_timm_classifier

    def test_ela_resnet18_is_a_timm_model():
        check_timm_classifier("ela_resnet18", input_size=(3, 64, 64))

(``tests/conftest.py`` puts ``tests/`` on ``sys.path``, so the module is imported by name.) Keyword arguments
other than the flags go to ``create_model`` for every build (e.g. ``img_size=64`` for models whose token count
is fixed at construction). Flags switch off what does not apply to a model, and
should be explained at the call site:

- ``spatial=False``: ``forward_features`` returns tokens ``(B, N, C)`` instead of a map ``(B, C, H, W)``
  (ViT, MLP-Mixer and NiNformer-like models); the unpooled outputs are then 3-D.
- ``features=False``: the model does not support ``features_only=True``.
- ``grad_checkpointing=False``: the model has no ``set_grad_checkpointing``.

FX (``forward_fx``/``backward_fx``) traces the way timm's tests do, with timm's registered leaf modules and functions;
TorchScript must either script or be declared unscriptable (``_is_torch_scriptable = False`` on a module, as smp reads
it) with ``torch.jit.script`` failing on a message that names the alternatives.

The single checks (``check_forward``, ``check_backward``, ...) take a ``factory(**kwargs) -> model`` and are
public so that a test can show one of them catching a broken model.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any

import timm
import torch
import torch.nn as nn

Factory = Callable[..., nn.Module]

# Same tolerances as timm's test_model_forward for the grad-checkpointing comparison.
_RTOL, _ATOL = 1e-4, 1e-5


def _input(input_size: tuple[int, ...], batch_size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch_size, *input_size), generator=generator)


def _build(factory: Factory, seed: int = 0, **kwargs: Any) -> nn.Module:
    torch.manual_seed(seed)
    return factory(**kwargs)


def _assert_finite(name: str, tensor: torch.Tensor) -> None:
    assert torch.isfinite(tensor).all(), f"{name}: output has NaN/inf values"


def _assert_stride(name: str, what: str, out: torch.Tensor, input_size: tuple[int, ...], reduction: int) -> None:
    # Odd input sides may round either way through strided layers.
    for side, got in zip(input_size[1:], out.shape[2:], strict=True):
        assert got in (side // reduction, math.ceil(side / reduction)), (
            f"{name}: {what} spatial size {tuple(out.shape[2:])} does not match input {input_size[1:]} "
            f"/ reduction {reduction}")


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture", type(model).__name__)


def check_forward(factory: Factory, input_size: tuple[int, ...]) -> None:
    """bs=1 eval forward: one row of ``num_classes`` finite logits (timm ``test_model_forward``)."""
    model = _build(factory).eval()
    name = _model_name(model)
    with torch.no_grad():
        out = model(_input(input_size, 1))
    assert out.shape == (1, model.num_classes), f"{name}: output shape {tuple(out.shape)}, expected (1, num_classes)"
    _assert_finite(name, out)


def check_backward(factory: Factory, input_size: tuple[int, ...], num_classes: int = 42) -> None:
    """bs=2 train forward+backward with a new head size: every trainable parameter receives a gradient."""
    model = _build(factory, num_classes=num_classes).train()
    name = _model_name(model)
    out = model(_input(input_size, 2))
    assert out.shape == (2, num_classes), f"{name}: output shape {tuple(out.shape)}, expected (2, {num_classes})"
    _assert_finite(name, out)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: {len(missing)} parameters got no gradient: {missing[:8]}"


def _check_unpooled(name: str, out: torch.Tensor, model: nn.Module, input_size: tuple[int, ...], spatial: bool,
                    what: str) -> None:
    """``out`` is an unpooled feature output: (B, C, H, W) with C == num_features, or (B, N, C) tokens."""
    if not spatial:
        assert out.ndim == 3 and out.shape[-1] == model.num_features, (
            f"{name}: {what} gave {tuple(out.shape)}, expected tokens (B, N, num_features={model.num_features})")
        return
    assert out.ndim == 4 and out.shape[1] == model.num_features, (
        f"{name}: {what} gave {tuple(out.shape)}, expected a map (B, num_features={model.num_features}, H, W)")
    feature_info = getattr(model, "feature_info", None)
    if feature_info:
        # The model's own total stride predicts the map size.
        _assert_stride(name, what, out, input_size, feature_info[-1]["reduction"])


def check_default_cfg(factory: Factory, input_size: tuple[int, ...], spatial: bool = True) -> None:
    """Default cfg and head API consistency (timm ``test_model_default_cfgs`` / ``_non_std``)."""
    model = _build(factory).eval()
    name = _model_name(model)
    cfg = model.pretrained_cfg
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0, (
        f"{name}: num_classes={model.num_classes}, num_features={model.num_features}, "
        f"head_hidden_size={model.head_hidden_size}")
    state_dict = model.state_dict()
    for key in ("first_conv", "classifier"):
        assert cfg.get(key), f"{name}: pretrained_cfg has no {key!r}"
        layers = (cfg[key],) if isinstance(cfg[key], str) else tuple(cfg[key])
        for layer in layers:
            assert f"{layer}.weight" in state_dict, f"{name}: cfg[{key!r}]={layer!r} but no '{layer}.weight' weight"
    x = _input(input_size, 2)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        _check_unpooled(name, feats, model, input_size, spatial, "forward_features")
        head_logits = model.forward_head(feats)
        pre_logits = model.forward_head(feats, pre_logits=True)
        assert torch.allclose(head_logits, logits, rtol=_RTOL, atol=_ATOL), (
            f"{name}: forward_head(forward_features(x)) differs from forward(x)")
        assert pre_logits.shape == (2, model.head_hidden_size), (
            f"{name}: forward_head(pre_logits=True) gave {tuple(pre_logits.shape)}, expected (2, head_hidden_size="
            f"{model.head_hidden_size})")

        model.reset_classifier(0)
        assert model.num_classes == 0, f"{name}: reset_classifier(0) left num_classes={model.num_classes}"
        pooled = model(x)
        assert pooled.shape == pre_logits.shape and torch.allclose(pooled, pre_logits, rtol=_RTOL, atol=_ATOL), (
            f"{name}: after reset_classifier(0) forward gave {tuple(pooled.shape)}, expected the pre-logits")
        model.reset_classifier(0, "")
        _check_unpooled(name, model(x), model, input_size, spatial, "reset_classifier(0, '')")

    headless = _build(factory, num_classes=0, global_pool="").eval()
    with torch.no_grad():
        _check_unpooled(name, headless(x), headless, input_size, spatial, "create_model(num_classes=0, global_pool='')")


def check_features_only(factory: Factory, input_size: tuple[int, ...]) -> None:
    """``features_only=True``: one NCHW map per ``feature_info`` level, channels and strides as declared."""
    model = _build(factory, features_only=True).eval()
    name = _model_name(model)
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert channels, f"{name}: features_only model declares no feature levels"
    with torch.no_grad():
        outs = model(_input(input_size, 1))
    assert len(outs) == len(channels), f"{name}: {len(outs)} feature maps for {len(channels)} feature_info levels"
    for level, (out, ch, red) in enumerate(zip(outs, channels, reductions, strict=True)):
        assert out.ndim == 4 and out.shape[1] == ch, (
            f"{name}: level {level} has shape {tuple(out.shape)}, expected {ch} channels")
        _assert_stride(name, f"level {level}", out, input_size, red)
        _assert_finite(name, out)


def check_grad_checkpointing(factory: Factory, input_size: tuple[int, ...]) -> None:
    """``set_grad_checkpointing()`` changes neither the output nor the parameter gradients."""
    model = _build(factory).eval()
    name = _model_name(model)
    x = _input(input_size, 2)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().mean().backward()
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
        return out.detach(), grads

    out_plain, grads_plain = run()
    model.set_grad_checkpointing(True)
    assert getattr(model, "grad_checkpointing", True), f"{name}: set_grad_checkpointing(True) did not enable it"
    out_ckpt, grads_ckpt = run()
    assert torch.allclose(out_ckpt, out_plain, rtol=_RTOL, atol=_ATOL), f"{name}: grad checkpointing changes outputs"
    for (pname, _), g_ckpt, g_plain in zip(model.named_parameters(), grads_ckpt, grads_plain, strict=True):
        assert torch.allclose(g_ckpt, g_plain, rtol=_RTOL, atol=_ATOL), (
            f"{name}: grad checkpointing changes the gradient of {pname}")


def _fx_model(model: nn.Module, train: bool = False) -> nn.Module:
    """timm's ``_create_fx_model``: trace with timm's leaf modules and autowrapped functions, return the last node
    (in train mode, the nodes feeding the graph's output)."""
    from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    train_return_nodes = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        graph_nodes = list(reversed(graph.nodes))
        output_names = [n.name for n in graph_nodes[0]._input_nodes]
        names = [n.name for n in graph_nodes]
        train_return_nodes = [train_nodes[-names.index(n)] for n in output_names]
    return create_feature_extractor(model, train_return_nodes=train_return_nodes,
                                    eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)


def check_forward_fx(factory: Factory, input_size: tuple[int, ...]) -> None:
    """timm ``test_model_forward_fx``: the symbolically traced feature extractor gives exactly the eager output."""
    model = _build(factory).eval()
    name = _model_name(model)
    x = _input(input_size, 1)
    with torch.inference_mode():
        out = model(x)
        try:
            fx_model = _fx_model(model)
        except Exception as err:
            raise AssertionError(f"{name}: FX tracing failed: {type(err).__name__}: {err}") from err
        fx_out = torch.cat(tuple(fx_model(x).values()))
    assert torch.equal(fx_out, out), f"{name}: FX-traced output differs from eager"


def check_backward_fx(factory: Factory, input_size: tuple[int, ...], num_classes: int = 42) -> None:
    """timm ``test_model_backward_fx``: a train-mode traced model back-propagates into every parameter."""
    model = _build(factory, num_classes=num_classes).train()
    name = _model_name(model)
    try:
        fx_model = _fx_model(model, train=True)
    except Exception as err:
        raise AssertionError(f"{name}: FX tracing (train) failed: {type(err).__name__}: {err}") from err
    out = torch.cat(tuple(fx_model(_input(input_size, 2)).values()))
    out.mean().backward()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: FX-traced model: {len(missing)} parameters got no gradient: {missing[:8]}"
    assert out.shape[-1] == num_classes and torch.isfinite(out).all(), f"{name}: FX-traced output {tuple(out.shape)}"


def check_torchscript(factory: Factory, input_size: tuple[int, ...]) -> None:
    """timm ``test_model_forward_torchscript``: the model scripts under ``set_scriptable(True)`` and runs, or it
    declares itself unscriptable and ``torch.jit.script`` says so in a RuntimeError naming the alternatives."""
    from timm.layers import set_scriptable

    with set_scriptable(True):
        model = _build(factory).eval()
    name = _model_name(model)
    if any(getattr(m, "_is_torch_scriptable", True) is False for m in model.modules()):
        try:
            torch.jit.script(model)
        except Exception as err:
            assert isinstance(err, RuntimeError) and re.search("not TorchScript-scriptable.*torch.export", str(err)), (
                f"{name}: declared unscriptable, but torch.jit.script fails with {type(err).__name__}: {err}")
            return
        raise AssertionError(f"{name}: declared unscriptable (_is_torch_scriptable = False), yet it scripts")
    scripted = torch.jit.script(model)
    with torch.no_grad():
        out = scripted(_input(input_size, 1))
    assert out.shape[0] == 1 and torch.isfinite(out).all(), f"{name}: scripted output {tuple(out.shape)}"


def check_classifier(factory: Factory, input_size: tuple[int, ...] = (3, 64, 64), *, spatial: bool = True,
                     features: bool = True, grad_checkpointing: bool = True) -> None:
    """Every check above on the models that ``factory(**kwargs)`` builds."""
    check_forward(factory, input_size)
    check_backward(factory, input_size)
    check_forward_fx(factory, input_size)
    check_backward_fx(factory, input_size)
    check_torchscript(factory, input_size)
    check_default_cfg(factory, input_size, spatial=spatial)
    if features:
        check_features_only(factory, input_size)
    if grad_checkpointing:
        check_grad_checkpointing(factory, input_size)


def check_timm_classifier(name: str, input_size: tuple[int, ...] = (3, 64, 64), *, spatial: bool = True,
                          features: bool = True, grad_checkpointing: bool = True, **kwargs: Any) -> None:
    """timm's model checks for the registered attnzoo classifier ``name``, built through both front doors.

    ``attnzoo.zoo.create_model(name)`` and ``timm.create_model(name)`` must give the same class and the
    same weights under the same seed; then :func:`check_classifier` runs on the attnzoo-built model.

    Args:
        name: registered architecture, ``'arch'`` or ``'arch.tag'``.
        input_size: ``(C, H, W)`` of the test inputs; keep it small.
        spatial: ``forward_features`` returns ``(B, C, H, W)``; False for token models ``(B, N, C)``.
        features: check ``features_only=True``.
        grad_checkpointing: check ``set_grad_checkpointing``.
        **kwargs: passed to every ``create_model`` call (e.g. ``img_size=64``).
    """
    import attnzoo.zoo  # noqa: F401  (importing the zoo registers every architecture)
    from attnzoo.zoo import create_model, model_task

    assert model_task(name) == "classification", f"{name} is registered for task {model_task(name)!r}"
    assert timm.is_model(name.partition(".")[0]), f"{name} is not in timm's registry"
    ours, theirs = _build(functools.partial(create_model, name, **kwargs)), _build(
        functools.partial(timm.create_model, name, **kwargs))
    assert type(ours) is type(theirs), f"{name}: attnzoo builds {type(ours)}, timm builds {type(theirs)}"
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert ours_sd.keys() == theirs_sd.keys(), f"{name}: state_dict keys differ between attnzoo and timm builds"
    for key, value in ours_sd.items():
        assert torch.equal(value, theirs_sd[key]), f"{name}: {key} differs between attnzoo and timm builds"
    check_classifier(functools.partial(create_model, name, **kwargs), input_size, spatial=spatial, features=features,
                     grad_checkpointing=grad_checkpointing)
