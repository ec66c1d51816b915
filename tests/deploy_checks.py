"""What users do to a timm model before they ship it, as one reusable check per step.

Every registered attnzoo model (and every layer, through a small wrapper model) must survive: ``torch.export``
with a dynamic batch, ``torch.onnx.export(dynamo=True)`` run by onnxruntime, autocast bf16/fp16 forward and
backward, ``.half()``, channels_last, ``torch.compile(fullgraph=True)``, construction on the meta device followed by
``load_state_dict``, and ``copy.deepcopy`` / ``pickle``. A :class:`Case` says how to build a model and how to make
its inputs at a given batch size; each ``check_*`` takes a case and raises an AssertionError naming the model and
the step when something goes wrong.

(``tests/conftest.py`` puts ``tests/`` on ``sys.path``, so the module is imported by name.)
"""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.export import Dim

Inputs = tuple[Any, ...]


@dataclass
class Case:
    """How to build one model and feed it.

    Args:
        name: shown in every failure message.
        build: ``build()`` -> a freshly initialised model (seeded by the checks).
        inputs: ``inputs(batch, variant)`` -> positional forward arguments; ``variant`` 1 changes the sizes the
            case declares dynamic (batch and, for ``dynamic_hw``, image height and width) so that a second call
            shows the exported program did not bake them in.
        dynamic: ``dynamic(inputs)`` -> ``dynamic_shapes`` for torch.export / torch.onnx.export.
        image_arg: index of the NCHW image argument for channels_last, None if the model takes no image.
        tolerance: max |difference| between two fp32 executions of the same model.
        fp16_tolerance: max |difference| of the fp16 output from the fp32 output, relative to the output's scale.
    """

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int, int], Inputs]
    dynamic: Callable[[Inputs], Any]
    image_arg: int | None = 0
    tolerance: float = 1e-4
    fp16_tolerance: float = 0.05
    notes: dict[str, str] = field(default_factory=dict)

    def model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.build().eval()

    def __repr__(self) -> str:
        return self.name


def batch_dynamic(hw: tuple[int, ...] = ()) -> Callable[[Inputs], Any]:
    """``dynamic_shapes`` with dim 0 of every tensor argument dynamic (the batch), and for the arguments in ``hw``
    the last two dims dynamic too (any image size).

    ``Dim.DYNAMIC`` rather than named ranges: torch.export then keeps what the model itself requires of a size
    (a UNet's multiple of 32, a ResNet's >= 2 px after the stem) as runtime checks instead of refusing the range,
    and fails if the model bakes a declared-dynamic size in.
    """

    def spec(inputs: Inputs) -> Any:
        shapes = []
        for i, arg in enumerate(inputs):
            if not isinstance(arg, torch.Tensor):
                shapes.append(None)
                continue
            dims = {0: Dim.DYNAMIC}
            if i in hw:
                dims.update({arg.dim() - 2: Dim.DYNAMIC, arg.dim() - 1: Dim.DYNAMIC})
            shapes.append(dims)
        return tuple(shapes)

    return spec


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, list | tuple):
        return [t for v in out for t in _flat(v)]
    return []


def _max_diff(case: Case, step: str, got: Any, want: Any, tol: float) -> float:
    got_t, want_t = _flat(got), _flat(want)
    assert len(got_t) == len(want_t), f"{case.name}: {step}: {len(got_t)} outputs, expected {len(want_t)}"
    worst = 0.0
    for g, w in zip(got_t, want_t, strict=True):
        g = torch.as_tensor(g)
        assert tuple(g.shape) == tuple(w.shape), f"{case.name}: {step}: output shape {tuple(g.shape)}, " \
                                                 f"expected {tuple(w.shape)}"
        if w.is_floating_point():
            worst = max(worst, (g.double() - w.double()).abs().max().item() if w.numel() else 0.0)
        else:
            assert torch.equal(g.to(w.dtype), w), f"{case.name}: {step}: integer outputs differ"
    assert worst <= tol, f"{case.name}: {step}: max |difference| {worst:.3g} > {tol:g}"
    return worst


def _to(inputs: Inputs, dtype: torch.dtype) -> Inputs:
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in inputs)


def eager(model: nn.Module, inputs: Inputs) -> Any:
    with torch.no_grad():
        return model(*inputs)


def check_export(case: Case) -> torch.export.ExportedProgram:
    """torch.export with the case's dynamic dims; the program matches eager at the example and at other sizes."""
    model = case.model()
    inputs = case.inputs(2, 0)
    try:
        program = torch.export.export(model, inputs, dynamic_shapes=case.dynamic(inputs))
    except Exception as err:
        raise AssertionError(f"{case.name}: torch.export failed: {type(err).__name__}: {err}") from err
    for variant_inputs in (inputs, case.inputs(3, 1)):
        _max_diff(case, "torch.export program vs eager", eager(program.module(), variant_inputs),
                  eager(model, variant_inputs), case.tolerance)
    return program


def check_onnx(case: Case, tmp_path) -> float:
    """torch.onnx.export(dynamo=True) with dynamic dims, run by onnxruntime at the example and other sizes."""
    import onnxruntime as ort

    model = case.model()
    inputs = case.inputs(2, 0)
    path = tmp_path / f"{case.name}.onnx"
    try:
        torch.onnx.export(model, inputs, str(path), dynamo=True, dynamic_shapes=case.dynamic(inputs),
                          verbose=False)
    except Exception as err:
        raise AssertionError(f"{case.name}: torch.onnx.export(dynamo=True) failed: {type(err).__name__}: "
                             f"{str(err)[-2000:]}") from err
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    for variant_inputs in (inputs, case.inputs(3, 1)):
        tensors = [a for a in variant_inputs if isinstance(a, torch.Tensor)]
        assert len(tensors) == len(names), f"{case.name}: ONNX graph takes {names}, the model {len(tensors)} tensors"
        feed = {n: t.numpy() for n, t in zip(names, tensors, strict=True)}
        outs = [torch.from_numpy(o) for o in session.run(None, feed)]
        want = _flat(eager(model, variant_inputs))
        worst = max(worst, _max_diff(case, "onnxruntime vs eager", outs, want, case.tolerance))
    return worst


def check_autocast(case: Case, dtype: torch.dtype = torch.bfloat16) -> None:
    """Forward and backward under CPU autocast: finite outputs in the autocast dtype, finite gradients."""
    model = case.model().train()
    inputs = case.inputs(2, 0)
    with torch.autocast("cpu", dtype=dtype):
        out = model(*inputs)
    outs = [t for t in _flat(out) if t.is_floating_point()]
    for t in outs:
        assert torch.isfinite(t).all(), f"{case.name}: autocast {dtype}: non-finite output"
    sum(t.float().square().mean() for t in outs).backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), f"{case.name}: autocast {dtype}: non-finite grad of {name}"
            assert param.grad.dtype == param.dtype, f"{case.name}: autocast {dtype}: grad of {name} is " \
                                                    f"{param.grad.dtype}, parameter {param.dtype}"
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing or len(missing) < len(list(model.parameters())), f"{case.name}: autocast: no gradients"


def check_half(case: Case) -> None:
    """``.half()`` on the CPU: finite outputs close to fp32 (relative to the output's scale)."""
    model = case.model()
    inputs = case.inputs(2, 0)
    want = _flat(eager(model, inputs))
    got = _flat(eager(model.half(), _to(inputs, torch.float16)))
    for g, w in zip(got, want, strict=True):
        if not w.is_floating_point():
            continue
        assert torch.isfinite(g).all(), f"{case.name}: .half(): {int((~torch.isfinite(g)).sum())} non-finite values"
        scale = w.abs().max().clamp(min=1.0).item()
        err = (g.double() - w.double()).abs().max().item() / scale
        assert err <= case.fp16_tolerance, f"{case.name}: .half(): relative error {err:.3g} > {case.fp16_tolerance}"


def check_channels_last(case: Case) -> None:
    """channels_last model and input give the contiguous result."""
    model = case.model()
    inputs = case.inputs(2, 0)
    want = eager(model, inputs)
    args = list(inputs)
    if case.image_arg is not None and args[case.image_arg].dim() == 4:
        args[case.image_arg] = args[case.image_arg].contiguous(memory_format=torch.channels_last)
    _max_diff(case, "channels_last", eager(model.to(memory_format=torch.channels_last), tuple(args)), want,
              case.tolerance)


def check_meta_init(case: Case) -> None:
    """Build on the meta device, ``load_state_dict(assign=True)``: every parameter and buffer is real and equal."""
    reference = case.model()
    with torch.device("meta"):
        model = case.build()
    model.load_state_dict(reference.state_dict(), assign=True)
    model.eval()
    ref_tensors = {**dict(reference.named_parameters()), **dict(reference.named_buffers())}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert not tensor.is_meta, f"{case.name}: meta init + load_state_dict left {name} on the meta device"
        assert torch.equal(tensor, ref_tensors[name]), f"{case.name}: meta init + load_state_dict: {name} differs"
    inputs = case.inputs(2, 0)
    _max_diff(case, "meta init + load_state_dict", eager(model, inputs), eager(reference, inputs), 0.0)


def check_copy_pickle(case: Case) -> None:
    """``copy.deepcopy`` and a pickle round trip give the same outputs."""
    model = case.model()
    inputs = case.inputs(2, 0)
    want = eager(model, inputs)
    _max_diff(case, "deepcopy", eager(copy.deepcopy(model), inputs), want, 0.0)
    buffer = io.BytesIO()
    pickle.dump(model, buffer)
    buffer.seek(0)
    _max_diff(case, "pickle", eager(pickle.load(buffer), inputs), want, 0.0)  # noqa: S301 (our own bytes)


def check_compile(case: Case, batches: tuple[int, ...] = (2,), variants: tuple[int, ...] = (0,)) -> None:
    """torch.compile(fullgraph=True) forward matches eager at every given batch size and size variant."""
    torch._dynamo.reset()
    model = case.model()
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    for batch in batches:
        for variant in variants:
            inputs = case.inputs(batch, variant)
            try:
                got = eager(compiled, inputs)
            except Exception as err:
                raise AssertionError(f"{case.name}: torch.compile(fullgraph=True) failed at batch {batch}, "
                                     f"variant {variant}: {type(err).__name__}: {str(err)[-1500:]}") from err
            _max_diff(case, f"torch.compile at batch {batch}, variant {variant}", got, eager(model, inputs),
                      case.tolerance)
