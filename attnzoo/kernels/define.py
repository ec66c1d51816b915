"""The one way to declare an attnzoo op: custom op, fake, autograd, autocast, export/ONNX lowering and FLOPs.

Every functional op in :mod:`attnzoo.kernels` is declared by one :func:`define_op` call, so that each of them, and
every future one, has all of the pieces that ``torch.compile``, ``torch.export``, ``torch.onnx.export``, autocast,
``opcheck`` and ``FlopCounterMode`` need::

    HALO = define_op(
        "halo_attention", "(Tensor q, Tensor k, ..., bool mask_padding) -> Tensor",
        reference=halo_attention_reference,          # the 'torch' backend (any device)
        triton=("halo_triton", "halo_attention_forward"),   # the 'triton' backend, imported on first use
        fake=lambda q, k, v, *rest: q.new_empty(...),       # output metadata for FakeTensor tracing
        backward=_halo_backward_torch, backward_triton=("halo_triton", "halo_attention_backward"),
        grads_for=("q", "k", "v", "height_rel", "width_rel"), backward_needs_output=True,
        lowering=halo_attention_lowering,              # standard aten ops only: what ONNX export sees
        autocast="lower", validate=_check_inputs, flops=_halo_flops)

    out = HALO(q, k, v, ..., backend=None)   # what the public ``halo_attention`` calls

What a definition registers, and why:

* ``attnzoo::<name>``: a ``torch.library.custom_op`` whose schema is the given one plus ``str backend``; the
  backend is resolved before the op (:func:`attnzoo.kernels._dispatch.resolve_backend`) and travels as a string,
  so compile, export and ``opcheck`` see one op whatever runs inside. Outputs are laid out by one rule, applied to
  the real and the fake outputs alike (contiguous; or, for ops declared ``keep_layout``, the first input's memory
  format), so the two always agree on strides.
* ``attnzoo::<name>_backward`` and the autograd formula: ``(grad_out[, out], *inputs, backend) -> grads`` of the
  inputs named in ``grads_for``; its fake allocates tensors like those inputs. The backward is a custom op too, so
  a compiled training step keeps the fast kernel.
* Autocast: with autocast on for the inputs' device, the floating tensor inputs are cast to the autocast dtype
  (``autocast='lower'``, the rule of matmul-like ops) or to float32 (``'fp32'``, for ops whose inputs are
  coordinates, as BEVFormer's ``MultiScaleDeformableAttnFunction_fp32`` does) and the op runs with autocast off:
  forward and backward then run in that one dtype, each kernel accumulating in float32 where the PyTorch path
  does. The same rule is registered at the dispatcher (``Autocast<device>`` keys), so ``torch.ops.attnzoo.*``
  called directly behaves like the Python front door.
* Export/ONNX lowering: a decomposition into standard aten ops, registered in ``torch._decomp``'s table, which
  ``torch.onnx.export(..., dynamo=True)`` applies to every op it cannot translate. ``torch.export`` keeps the
  custom op (so an exported program still runs the fast kernel); the ONNX exporter replaces it by the lowering,
  so a plain export needs no attnzoo-specific argument. Lowerings must trace with symbolic sizes: no Python
  loops over sizes, no data-dependent shapes, no views that ONNX cannot express (``as_strided``), and no padding,
  splitting or slicing of symbolic sizes that would add guards. The fake is also registered as the op's Python
  meta, because FakeTensor otherwise prefers a table decomposition to an op's own fake under symbolic shapes.
  ``torch.compile`` keeps the op too: Inductor is told to call it (an explicit fallback), not to decompose it.
* FLOPs: ``flops(*shapes)`` (tensor arguments as shapes, others as values, in schema order) is registered with
  ``torch.utils.flop_counter.register_flop_formula``, so ``FlopCounterMode`` counts the op; the backward op counts
  ``backward_flops`` (default: twice the forward, the convention FlopCounterMode uses for matmuls).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch._decomp
import torch._library.utils
from torch.utils.flop_counter import register_flop_formula

from attnzoo.kernels._dispatch import resolve_backend

__all__ = ["AUTOCAST_RULES", "OPS", "Op", "define_op"]

NAMESPACE = "attnzoo"
AUTOCAST_RULES = ("lower", "fp32")
_AUTOCAST_DEVICES = ("cpu", "cuda")

OPS: dict[str, Op] = {}  # every defined op by name, for tests that iterate over all of them


Launcher = tuple[str, str] | Callable[..., Any]


def _launcher(launcher: Launcher) -> Callable[..., Any]:
    """A Triton launcher: ``(module, name)`` names ``attnzoo.kernels.<module>.<name>``, imported on first use
    (Triton is optional); a callable (which imports its module itself) is used as it is."""
    if callable(launcher):
        return launcher
    module, name = launcher
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def _memory_format(args: Sequence[Any], keep_layout: bool) -> torch.memory_format:
    """channels_last when the op keeps its input's layout and the first tensor argument is a channels_last map,
    else contiguous. Only ``keep_layout`` ops look at strides: on the symbolic tensors of an export, every stride
    query is a guard."""
    if not keep_layout:
        return torch.contiguous_format
    first = next(a for a in args if isinstance(a, torch.Tensor))
    if first.dim() == 4 and not first.is_contiguous() and first.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _laid_out(result: Any, args: Sequence[Any], keep_layout: bool) -> Any:
    """The one layout rule for outputs, applied to the real kernels' outputs and to the fakes' alike, so that their
    strides always agree: contiguous, or (``keep_layout``) 4-D outputs in the first input's memory format."""
    fmt = _memory_format(args, keep_layout)

    def lay(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        return t.contiguous(memory_format=fmt if t.dim() == 4 else torch.contiguous_format)

    return lay(result) if isinstance(result, torch.Tensor) else [lay(t) for t in result]


def _with_backend(schema: str) -> str:
    """'(Tensor x, float s) -> Tensor' -> '(Tensor x, float s, str backend) -> Tensor'."""
    args, arrow, returns = schema.partition(") ->")
    if not arrow or not args.startswith("("):
        raise ValueError(f"schema {schema!r} is not of the form '(args) -> returns'")
    return f"{args}, str backend) ->{returns}"


def _backward_schema(schema: str, needs_output: bool) -> str:
    args = schema.partition(") ->")[0][1:]
    out = "Tensor out, " if needs_output else ""
    return f"(Tensor grad_out, {out}{args}, str backend) -> Tensor[]"


def _autocast_dtype(rule: str, device_type: str) -> torch.dtype:
    return torch.get_autocast_dtype(device_type) if rule == "lower" else torch.float32


def _cast(args: Sequence[Any], dtype: torch.dtype) -> list[Any]:
    return [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


@dataclass(eq=False)
class Op:
    """A defined op: call it like the custom op without ``backend=`` positionally (see :func:`define_op`)."""

    name: str
    schema: str
    arg_names: tuple[str, ...]
    tensor_args: tuple[int, ...]
    reference: Callable[..., Any]
    lowering: Callable[..., Any]
    autocast: str
    validate: Callable[..., None] | None
    flops: Callable[..., int] | None
    grads_for: tuple[str, ...] = ()
    backward: Callable[..., Any] | None = None

    @property
    def qualname(self) -> str:
        return f"{NAMESPACE}::{self.name}"

    @property
    def overload(self) -> torch._ops.OpOverload:
        """``torch.ops.attnzoo.<name>.default``: what ``opcheck``, export graphs and the FLOP counter see."""
        return getattr(torch.ops.attnzoo, self.name).default

    @property
    def backward_overload(self) -> torch._ops.OpOverload | None:
        return getattr(torch.ops.attnzoo, f"{self.name}_backward").default if self.backward is not None else None

    def autocast_inputs(self, args: Sequence[Any]) -> tuple[list[Any], str | None]:
        """``args`` cast by the op's autocast rule when autocast is on for their device, and that device type
        (None when autocast is off: nothing was cast)."""
        first = args[self.tensor_args[0]]
        device_type = first.device.type if isinstance(first, torch.Tensor) else None
        if device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type):
            return _cast(args, _autocast_dtype(self.autocast, device_type)), device_type
        return list(args), None

    def __call__(self, *args: Any, backend: str | None = None) -> Any:
        args, autocast_device = self.autocast_inputs(args)
        if self.validate is not None:
            self.validate(*args)
        backend = resolve_backend(backend, args[self.tensor_args[0]])
        if autocast_device is None:
            return self.overload(*args, backend)
        with torch.autocast(autocast_device, enabled=False):
            return self.overload(*args, backend)


def _tensor_positions(parsed: torch._C.FunctionSchema) -> tuple[int, ...]:
    return tuple(i for i, a in enumerate(parsed.arguments) if isinstance(a.type, torch._C.TensorType))


def _register_autocast_kernels(op: Op, lib: torch.library.Library) -> None:
    """The autocast rule at the dispatcher, for ``torch.ops.attnzoo.<name>`` called directly."""
    for device_type in _AUTOCAST_DEVICES:
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        exclude = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(_keyset, *args, _exclude=exclude, _device_type=device_type):
            with torch._C._ExcludeDispatchKeyGuard(_exclude):
                return op.overload(*_cast(args, _autocast_dtype(op.autocast, _device_type)))

        lib.impl(op.name, kernel, key, with_keyset=True)


_LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")  # noqa: TOR901 (kept alive for the process)


def define_op(name: str, schema: str, *, reference: Callable[..., Any], fake: Callable[..., Any],
              lowering: Callable[..., Any] | None = None, triton: Launcher | None = None,
              backward: Callable[..., Sequence[torch.Tensor]] | None = None,
              backward_triton: Launcher | None = None, grads_for: Sequence[str] = (),
              backward_needs_output: bool = False, autocast: str = "lower", keep_layout: bool = False,
              validate: Callable[..., None] | None = None, flops: Callable[..., int] | None = None,
              backward_flops: Callable[..., int] | None = None) -> Op:
    """Declare ``attnzoo::<name>`` with everything it needs (see the module docstring).

    Args:
        name: op name in the ``attnzoo`` namespace.
        schema: ``'(args) -> returns'`` without the backend argument, e.g. ``'(Tensor x, int k) -> Tensor'``.
        reference: the PyTorch implementation, ``reference(*args)``; the 'torch' backend on every device.
        fake: ``fake(*args)`` -> outputs with the right shapes and dtypes (contiguous), for FakeTensor tracing.
        lowering: ``lowering(*args)`` in standard, export-friendly aten ops; defaults to ``reference``.
        triton: the 'triton' forward launcher: ``(module, function)`` in :mod:`attnzoo.kernels`, or a callable
            taking the op's arguments.
        backward: ``backward(grad_out[, out], *args)`` -> gradients of the ``grads_for`` inputs, in that order;
            None declares an op without autograd (an index-valued op).
        backward_triton: the 'triton' backward launcher, given like ``triton``, same arguments as ``backward``.
        grads_for: names (from the schema) of the tensor inputs that receive gradients.
        backward_needs_output: pass the forward output to ``backward`` (and keep it saved for it).
        autocast: 'lower' (cast floating inputs to the autocast dtype) or 'fp32' (cast them to float32).
        keep_layout: 4-D outputs (and gradients) take the first input's memory format, channels_last included,
            as an elementwise gate should; otherwise every output is contiguous.
        validate: ``validate(*args)``, called on the (cast) inputs before the op; raises on bad input.
        flops: ``flops(*args)`` with tensors given as their shapes: FLOPs of one forward call.
        backward_flops: same arguments: FLOPs of one backward call (default ``2 * flops``).

    Returns:
        the :class:`Op`, callable as ``op(*args, backend=None)``.
    """
    if name in OPS:
        raise ValueError(f"op {name!r} is already defined")
    if autocast not in AUTOCAST_RULES:
        raise ValueError(f"autocast={autocast!r} is not one of {AUTOCAST_RULES}")
    full_schema = _with_backend(schema)
    parsed = torch._C.parse_schema(f"{NAMESPACE}::{name}{schema}")
    arg_names = tuple(a.name for a in parsed.arguments)
    unknown = [g for g in grads_for if g not in arg_names]
    if unknown:
        raise ValueError(f"grads_for names {unknown} that are not arguments of {schema!r}")
    if (backward is None) != (not grads_for):
        raise ValueError("backward and grads_for go together: give both or neither")
    tensor_args = _tensor_positions(parsed)
    op = Op(name, schema, arg_names, tensor_args, reference, lowering or reference, autocast, validate, flops,
            tuple(grads_for), backward)

    def forward_impl(*args):
        *inputs, backend = args
        fn = _launcher(triton) if backend == "triton" and triton is not None else reference
        return _laid_out(fn(*inputs), inputs, keep_layout)

    custom = torch.library.custom_op(op.qualname, forward_impl, mutates_args=(), schema=full_schema)
    def traced(*args):
        _declare_inductor_fallback(op)
        return _laid_out(fake(*args[:-1]), args[:-1], keep_layout)

    custom.register_fake(traced)
    _register_autocast_kernels(op, _LIBRARY)
    torch._decomp.register_decomposition(op.overload)(lambda *args: op.lowering(*args[:-1]))
    # FakeTensor prefers a decomposition over an op's fake under symbolic shapes, unless the op has a Python meta:
    # registering the fake as that meta keeps it the one shape rule (the lowering is for ONNX, not for tracing)
    torch._decomp.register_decomposition(op.overload, type="meta")(traced)
    if flops is not None:
        register_flop_formula(getattr(torch.ops.attnzoo, name))(
            lambda *args, out_shape=None, **_: flops(*args[:-1]))

    if backward is not None:
        _define_backward(op, custom, backward, backward_triton, backward_needs_output, keep_layout,
                         backward_flops or (None if flops is None else lambda *a: 2 * flops(*a)))
    OPS[name] = op
    return op


def _declare_inductor_fallback(op: Op) -> None:
    """Tell Inductor, once it is loaded, to call the op (its fast kernel) rather than look for a lowering.

    Inductor makes an implicit fallback for a custom op it has no lowering for, but when the environment variable
    ``CI`` is set (as GitHub Actions and most CI services set it) it refuses an op that also has a decomposition
    in ``torch._decomp``'s table, which ours have for ONNX. An explicit fallback with the layout constraint the
    implicit one would take is what Inductor does for its own allow-listed ops (``torchvision::roi_align``).
    Called from the fake, which runs while AOTAutograd traces for Inductor, i.e. after Inductor's lowering module
    is imported and before it lowers the graph; importing that module here instead would cost ~2 s per import.
    """
    lowering = sys.modules.get("torch._inductor.lowering")
    if lowering is None or op.overload in lowering.lowerings:
        return
    tag = torch._library.utils.get_layout_constraint_tag(op.overload, with_default=True)
    lowering.make_fallback(op.overload, layout_constraint=lowering.tag_to_layout_constraint(tag), warn=False)


def _define_backward(op: Op, custom: Any, backward: Callable[..., Sequence[torch.Tensor]],
                     backward_triton: Launcher | None, needs_output: bool, keep_layout: bool,
                     backward_flops: Callable[..., int] | None) -> None:
    grad_positions = [op.arg_names.index(g) for g in op.grads_for]
    num_args = len(op.arg_names)
    first = 2 if needs_output else 1  # where the forward's arguments start in the backward's

    def backward_impl(*args):
        *inputs, backend = args
        fn = _launcher(backward_triton) if backend == "triton" and backward_triton is not None else backward
        return _laid_out(list(fn(*inputs)), inputs[first:], keep_layout)

    def backward_fake(*args):
        inputs = args[first:first + num_args]
        return _laid_out([torch.empty_like(inputs[i]) for i in grad_positions], inputs, keep_layout)

    backward_op = torch.library.custom_op(f"{op.qualname}_backward", backward_impl, mutates_args=(),
                                          schema=_backward_schema(op.schema, needs_output))
    backward_op.register_fake(backward_fake)
    if backward_flops is not None:
        register_flop_formula(getattr(torch.ops.attnzoo, f"{op.name}_backward"))(
            lambda *args, out_shape=None, **_: backward_flops(*args[first:first + num_args]))

    def setup_context(ctx, inputs, output):
        *args, ctx.backend = inputs
        ctx.tensor_positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        ctx.others = {i: a for i, a in enumerate(args) if not isinstance(a, torch.Tensor)}
        ctx.save_for_backward(*(args[i] for i in ctx.tensor_positions), *((output,) if needs_output else ()))

    def autograd_backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        args: list[Any] = [None] * num_args
        for i in ctx.tensor_positions:
            args[i] = saved.pop(0)
        for i, value in ctx.others.items():
            args[i] = value
        grads = backward_op(grad_out.contiguous(), *saved, *args, ctx.backend)
        result: list[torch.Tensor | None] = [None] * (num_args + 1)
        for position, grad in zip(grad_positions, grads, strict=True):
            result[position] = grad
        return tuple(result)

    custom.register_autograd(autograd_backward, setup_context=setup_context)

