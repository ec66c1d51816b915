"""Compile every attnzoo Triton kernel for an H100 (sm_90) on a machine without a GPU, at the benchmark shapes.

The Triton interpreter (the suite's correctness check) never runs the compiler, so a kernel that the interpreter
accepts can still fail to build for a GPU (dot shapes below 16, a dtype the hardware op lacks, a constexpr the
compiler needs), or build with register spills. This script drives the real launchers - the ops with
``backend='triton'`` on CPU tensors, forward and backward, at the shapes ``benchmarks/kernels_*.py`` time - and
replaces every kernel launch by ``triton.compile`` for ``GPUTarget('cuda', 90, 32)`` (ptxas ships with Triton).
Nothing runs, so the outputs are garbage and only shapes and dtypes matter. It prints one row per distinct
compilation: kernel, dtype of its first tensor argument, warps, registers and stack bytes per thread (a stack
means register spills or local arrays: slow) and shared memory.

Without specialisation hints (Triton's divisibility-by-16 attributes of the real launch) the code differs in
details such as vector widths from what the GPU compiles; build errors and spills carry over.

    python benchmarks/kernels_compile.py --tiny          # small shapes, seconds per kernel (the suite runs this)
    python benchmarks/kernels_compile.py                 # the GPU benchmarks' shapes
"""

from __future__ import annotations

import argparse
import functools
import inspect
import itertools
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("kernels_compile.py compiles kernels; unset TRITON_INTERPRET (the interpreter never compiles)")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from _harness import markdown_table, write_result  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import attnzoo.kernels._dispatch as dispatch  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
NOTES = ("Compiled on a machine without a GPU (the Device line is where it ran); registers and stack bytes are per "
         "thread, from cuobjdump -res-usage; shared bytes from Triton's metadata. A stack means spilled registers "
         "(or local arrays): every access goes to local memory. Without the launch's divisibility hints, vector "
         "widths can differ from what the GPU compiles.")
_POINTEE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64",
            torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
            torch.bool: "i1"}
_CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def _arg_type(name: str, value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _POINTEE[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"kernel argument {name}: cannot type a {type(value).__name__} for compilation")


def _resources(cubin: bytes) -> dict[str, int]:
    """Registers and stack bytes per thread (register spills land there) of ``cubin``, from ``cuobjdump -res-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(_CUOBJDUMP), "-res-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    found = {key: int(value) for key, value in re.findall(r"\b(REG|STACK):(\d+)", text)}
    return {"registers": found["REG"], "stack bytes": found["STACK"]}


class CompileRecorder:
    """Replaces ``JITFunction.run`` while active: each launch is compiled for :data:`TARGET` once, never run."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.case = ""  # the shape being launched, for the rows
        self._seen: set[tuple] = set()
        self._saved: Callable | None = None

    def __enter__(self) -> CompileRecorder:
        self._saved = JITFunction.run
        recorder = self

        def run(fn: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
            recorder.compile(fn, args, kwargs)

        JITFunction.run = run
        return self

    def __exit__(self, *exc: object) -> None:
        JITFunction.run = self._saved

    def compile(self, fn: JITFunction, args: tuple, kwargs: dict[str, Any]) -> None:
        options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages") if key in kwargs}
        bound = inspect.signature(fn.fn).bind(*args, **kwargs)
        bound.apply_defaults()
        signature, constexprs = {}, {}
        for param, (name, value) in zip(fn.params, bound.arguments.items(), strict=True):
            if param.is_constexpr:
                signature[name], constexprs[name] = "constexpr", value
            else:
                signature[name] = _arg_type(name, value)
        key = (fn.fn.__name__, tuple(signature.items()), tuple((k, str(v)) for k, v in constexprs.items()),
               tuple(sorted(options.items())))
        if key in self._seen:
            return
        self._seen.add(key)
        kernel = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=TARGET, options=options)
        first_tensor = next((t for t in signature.values() if t.startswith("*")), "-")
        self.rows.append({"case": self.case, "kernel": fn.fn.__name__, "dtype": first_tensor.lstrip("*"),
                          "warps": options.get("num_warps", 4), **_resources(kernel.asm["cubin"]),
                          "shared bytes": kernel.metadata.shared})


Case = tuple[str, Callable[[], object]]  # (shape label, forward + backward through backend='triton')


def ela_cases(tiny: bool, dtype: torch.dtype) -> Iterator[Case]:
    from kernels_ela import STAGES, TINY_STAGES, make_inputs, outputs_and_grads

    from attnzoo.kernels import ela_gate

    for batch, channels, side in TINY_STAGES if tiny else STAGES:
        tensors, grad_out, groups, norm_groups = make_inputs(batch, channels, side, torch.float32, "cpu")
        op = functools.partial(ela_gate, groups=groups, norm_groups=norm_groups, backend="triton")
        yield (f"ela {batch}x{channels}x{side}x{side}",
               functools.partial(outputs_and_grads, op, tensors, grad_out, dtype))


def halo_cases(tiny: bool, dtype: torch.dtype) -> Iterator[Case]:
    from kernels_halo import CHECK_SHAPES, TINY_CHECK_SHAPES, _op_call, check_options, fwd_bwd, op_inputs

    for name, batch, dim, side, heads, block, halo, stride in TINY_CHECK_SHAPES if tiny else CHECK_SHAPES:
        inputs = op_inputs(batch, dim, side, heads, block, halo, stride, "cpu", dtype)
        op = functools.partial(_op_call, options=check_options(dim, heads, block, halo, stride), backend="triton")
        yield f"halo {name}", functools.partial(fwd_bwd, op, inputs)


def dfa3d_cases(tiny: bool, dtype: torch.dtype) -> Iterator[Case]:
    from kernels_dfa3d import configs, forward_backward, make_inputs

    for cfg in configs(tiny):
        grad_out = torch.ones(cfg.bs, cfg.num_queries, cfg.num_heads * cfg.head_dim, dtype=dtype)
        yield cfg.name, functools.partial(forward_backward, cfg, make_inputs(cfg, "cpu", dtype), "triton", grad_out)


def topm_cases(tiny: bool, dtype: torch.dtype) -> Iterator[Case]:
    from kernels_topm import FULL, TINY, M, attention_fwd_bwd, attention_inputs, knn_inputs

    from attnzoo.kernels.topm import topm_knn

    sizes = TINY if tiny else FULL
    for kind in ("aux", "random"):
        qkv, index = attention_inputs(sizes["op"], kind, "cpu")
        low = [t.to(dtype) for t in qkv]
        yield (f"topm attention N={sizes['op']} ({kind})",
               functools.partial(attention_fwd_bwd, low, index, "triton", torch.ones_like(low[2])))
    features, batch = knn_inputs(sizes["knn_check"], 2, "cpu")
    yield (f"topm knn N={sizes['knn_check']}",
           functools.partial(topm_knn, features.to(dtype), features.flip(1).to(dtype), M, batch, backend="triton"))


CASES: dict[str, Callable[[bool, torch.dtype], Iterator[Case]]] = {
    "ela": ela_cases, "halo": halo_cases, "dfa3d": dfa3d_cases, "topm": topm_cases}


def compile_all(ops: list[str], tiny: bool, dtypes: list[torch.dtype]) -> list[dict[str, Any]]:
    """Rows of every distinct compilation the launchers of ``ops`` ask for (see the module docstring)."""
    # backend='triton' refuses CPU tensors unless the interpreter runs; here the launches only compile
    saved = dispatch.triton_accepts
    dispatch.triton_accepts = lambda tensor: True
    try:
        with CompileRecorder() as recorder:
            for op, dtype in itertools.product(ops, dtypes):
                for label, run in CASES[op](tiny, dtype):
                    recorder.case = f"{label}, {str(dtype).removeprefix('torch.')}"
                    run()
    finally:
        dispatch.triton_accepts = saved
    return recorder.rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    parser.add_argument("--tiny", action="store_true", help="the benchmarks' tiny shapes (seconds, not minutes)")
    args = parser.parse_args(argv)
    rows = compile_all(args.ops, args.tiny, [getattr(torch, name) for name in args.dtypes])
    stacked = sum(row["stack bytes"] > 0 for row in rows)
    summary = f"{len(rows)} compilations for sm_90, {stacked} using a stack (register spills)."
    if args.tiny:
        print(markdown_table(rows), summary, sep="\n")
    else:
        write_result(f"kernels_compile-sm90-triton{triton.__version__}",
                     f"Triton kernels compiled for sm_90 (triton {triton.__version__})",
                     [("Compilations at the GPU benchmarks' shapes", rows)], summary + " " + NOTES)
    return rows


if __name__ == "__main__":
    main()
