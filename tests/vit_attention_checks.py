"""Deployment checks for an attention layer inside a tiny timm ViT (the ways users ship a timm model).

Each check takes a ``factory() -> model`` (a fresh tiny ViT with the layer under test, see :func:`tiny_vit`) and
asserts numbers, not only that the call returns: exported and compiled programs must reproduce the eager output,
low-precision runs must stay finite and close to fp32, and the FX feature extractor must return the block's
actual output. Kept small (embed 32, depth 2, 32x32 input: 17 tokens) so that each check takes about a second.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

Factory = Callable[[], nn.Module]
IMG = 32


def tiny_vit(**kwargs: Any) -> nn.Module:
    """ViT with embed 32, 4 heads, depth 2, 8x8 patches on 32x32 images (16 patches + class token), 10 classes."""
    args = dict(img_size=IMG, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10)
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", **{**args, **kwargs}).eval()


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def check_export_dynamic_batch(factory: Factory) -> None:
    """torch.export with a symbolic batch: the program runs at another batch size and matches eager."""
    model = factory()
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(model, (images(2),), dynamic_shapes={"x": {0: batch}})
    x = images(5, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


def check_onnx(factory: Factory, tmp_path: Path) -> None:
    """torch.onnx.export(dynamo=True) then onnxruntime: logits within 1e-4 of eager."""
    import onnxruntime as ort

    model = factory()
    x = images(2)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4)


def check_autocast_bf16(factory: Factory) -> None:
    """CPU autocast to bfloat16: finite forward and gradients, logits close to fp32 (bf16 has 8 mantissa bits)."""
    model = factory().train()
    x = images(2)
    with torch.no_grad():
        reference = model.eval()(x)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no or non-finite gradient"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.eval()(x)
    assert (low.float() - reference).abs().max() < 0.1 * reference.abs().max() + 0.05


def check_half(factory: Factory) -> None:
    """``.half()`` weights and input: finite fp16 logits close to fp32."""
    model = factory()
    x = images(2)
    with torch.no_grad():
        reference = model(x)
        out = model.half()(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() < 0.05 * reference.abs().max() + 0.02


def check_compile(factory: Factory) -> None:
    """torch.compile(fullgraph=True) (AOT-autograd graph, eager kernels): same logits and gradients as eager."""
    model = factory().train()
    x = images(2)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    eager = model(x)
    eager.square().mean().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend="aot_eager", fullgraph=True)(x), model(x))


def check_fx_features(factory: Factory) -> None:
    """timm's FX feature extractor returns the last block's tokens, equal to the block's output in eager mode."""
    from timm.models import create_feature_extractor

    model = factory()
    with warnings.catch_warnings():  # MoH's training-only loss makes train and eval graphs differ; eval is traced
        warnings.filterwarnings("ignore", message="The nodes obtained by tracing the model in train mode")
        extractor = create_feature_extractor(model, return_nodes={"blocks.1": "tokens"})
    captured: list[torch.Tensor] = []
    handle = model.blocks[1].register_forward_hook(lambda m, i, o: captured.append(o))
    x = images(2)
    with torch.no_grad():
        tokens = extractor(x)["tokens"]
        model(x)
    handle.remove()
    assert tokens.shape == (2, (IMG // 8) ** 2 + 1, model.embed_dim)
    torch.testing.assert_close(tokens, captured[0])


def check_meta_init(factory: Factory) -> None:
    """Build on the meta device, then ``load_state_dict(assign=True)``: same outputs as the model the weights came
    from, and no parameter left on meta."""
    source = factory()
    with torch.device("meta"):
        model = factory()
    assert all(p.is_meta for p in model.parameters())
    model.load_state_dict(source.state_dict(), assign=True)
    assert not any(p.is_meta for p in model.parameters())
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source(x), rtol=0, atol=0)


FAST_CHECKS = (check_export_dynamic_batch, check_autocast_bf16, check_half, check_fx_features, check_meta_init)
