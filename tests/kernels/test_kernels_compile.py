"""Every Triton kernel compiles for sm_90 (no GPU needed) when its launcher is driven at small shapes, fp32 and bf16.

The interpreter tests check what the kernels compute; this checks that the compiler accepts them, which the
interpreter never asks. It runs benchmarks/kernels_compile.py in a fresh process without TRITON_INTERPRET.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import attnzoo.kernels.dfa3d_triton as dfa3d_triton
import attnzoo.kernels.ela_triton as ela_triton
import attnzoo.kernels.halo_triton as halo_triton
import attnzoo.kernels.topm_triton as topm_triton

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels_compile.py"


def kernel_names() -> set[str]:
    modules = (dfa3d_triton, ela_triton, halo_triton, topm_triton)
    return {name for module in modules for name in vars(module) if name.endswith("_kernel")}


def test_every_kernel_compiles_for_sm90(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from another run's cache
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny"], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in result.stdout.splitlines()
            if line.startswith("| ") and "_kernel" in line]  # | case | kernel | dtype | ...
    compiled = {(row[1], row[2]) for row in rows}
    assert {name for name, _ in compiled} == kernel_names()
    # bf16 inputs reach every kernel that reads them (the strip kernels of ELA and the knn/attention ones)
    assert {"_halo_fwd_kernel", "_halo_bwd_kernel", "_topm_knn_kernel"} <= {n for n, d in compiled if d == "bf16"}


def test_refuses_to_run_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny"], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "unset TRITON_INTERPRET" in result.stderr
