"""The op definition contract, for every op declared with ``define_op``.

One sample per op (edge shapes included: a single-block halo map, a candidate row with empty slots, coordinates
outside the map), then for each: the export lowering computes the reference's function, the autocast rule casts
and runs in one dtype forward and backward, the FLOP formula is what FlopCounterMode reports and equals the
analytic count, opcheck passes, and the definition registered every piece.
"""

from __future__ import annotations

import pytest
import torch
from dfa3d_cases import make_inputs as dfa3d_inputs
from torch.utils.flop_counter import FlopCounterMode

from attnzoo.kernels.define import OPS, define_op


def _halo(h=8, w=8, block=8, halo=2, stride=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    win = block + 2 * halo
    q = torch.randn(3, 4, -(-h // stride), -(-w // stride), generator=gen, dtype=dtype)
    k, v = torch.randn(3, 4, h, w, generator=gen, dtype=dtype), torch.randn(3, 5, h, w, generator=gen, dtype=dtype)
    tables = [torch.randn(2 * win - 1, 4, generator=gen, dtype=dtype) for _ in range(2)]
    return (q, k, v, *tables, block, halo, stride, 0.5, False, False)


def _ela(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(2, 8, 5, 7, generator=gen, dtype=dtype), torch.randn(8, 1, 5, generator=gen, dtype=dtype),
            torch.randn(8, generator=gen, dtype=dtype), torch.randn(8, generator=gen, dtype=dtype), 8, 2, 1e-5)


def _topm(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(7, 2, 3, generator=gen, dtype=dtype) for _ in range(3))
    index = torch.randint(0, 7, (7, 4), generator=gen)
    index[2, 1:] = -1  # empty slots
    return q, k, v, index, 0.5


def _knn(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2])
    return torch.randn(8, 5, generator=gen, dtype=dtype), torch.randn(8, 5, generator=gen, dtype=dtype), 3, batch, \
        batch, 1024


def _scores(dtype=torch.float64):
    score = torch.tensor([0.5, 0.0, 0.0, 0.9, 0.0, 0.5, 0.0, 0.2], dtype=dtype)  # ties on purpose
    return score, 3, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def _dfa3d(dtype=torch.float64):
    return dfa3d_inputs(dtype=dtype)


def _msda(dtype=torch.float64):
    value, _, shapes, starts, locations, weights = dfa3d_inputs(dtype=dtype)
    return value, shapes, starts, locations[..., :2].contiguous(), weights


def _neighborhood(dtype=torch.float64, causal=False):
    gen = torch.Generator().manual_seed(0)
    if causal:  # 1-D, causal, even kernel, dilation and stride, no bias (an empty rpb)
        q, k, v = (torch.randn(2, 9, 2, 3, generator=gen, dtype=dtype) for _ in range(3))
        return q, k, v, [4], [2], [2], [True], torch.zeros(0, dtype=dtype), 0.5, "gather"
    q, k = (torch.randn(2, 5, 6, 2, 3, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(2, 5, 6, 2, 4, generator=gen, dtype=dtype)
    rpb = torch.randn(2, 5, 5, generator=gen, dtype=dtype)
    return q, k, v, [3, 3], [1, 2], [1, 2], [False, False], rpb, 0.5, "gather"


SAMPLES = {
    "halo_attention": [_halo, lambda dtype=torch.float64: _halo(h=5, w=7, block=4, halo=1, stride=2, dtype=dtype)],
    "ela_gate": [_ela],
    "topm_attention": [_topm],
    "topm_knn": [_knn],
    "score_candidates": [_scores],
    "deform_attn_3d": [_dfa3d],
    "ms_deform_attn": [_msda],
    "neighborhood_attention": [_neighborhood, lambda dtype=torch.float64: _neighborhood(dtype, causal=True)],
}

# What each forward costs in 2 * multiply-adds, written from the shapes of the samples above.
ANALYTIC_FLOPS = {
    "halo_attention": lambda q, k, v, *_: 2 * 3 * 64 * 144 * (4 + 5) + 4 * 3 * 64 * 12 * 4,  # 1 block of 8x8
    "ela_gate": lambda x, *_: 2 * 2 * 8 * (5 + 7) * 1 * 5,
    "topm_attention": lambda *_: 2 * 7 * 4 * 2 * (3 + 3),
    "topm_knn": lambda *_: 2 * 8 * 8 * 5,
    "deform_attn_3d": lambda *_: 2 * (2 * 6 * 2 * 2 * 3 * 4) * (3 + 2),
    "ms_deform_attn": lambda *_: 2 * (2 * 6 * 2 * 2 * 3 * 4) * 3,
    "neighborhood_attention": lambda *_: 2 * (2 * 5 * 6 * 2) * 9 * (3 + 4),  # 3x3 keys per query and head
}


def _op_samples():
    return [pytest.param(name, make, id=f"{name}-{i}") for name, makers in SAMPLES.items()
            for i, make in enumerate(makers)]


def test_every_defined_op_has_samples():
    assert set(OPS) == set(SAMPLES)


@pytest.mark.parametrize("name, make", _op_samples())
def test_lowering_computes_the_reference(name, make):
    op, args = OPS[name], make()
    want, got = op.reference(*args), op.lowering(*args)
    assert torch.equal(got, want) if not want.is_floating_point() else torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("name, make", _op_samples())
def test_lowering_is_registered_for_onnx_and_the_fake_for_fake_tensors(name, make):
    op = OPS[name]
    assert op.overload in torch._decomp.decomposition_table
    assert op.overload in torch._decomp.meta_table  # so FakeTensor keeps the op's fake under symbolic shapes


@pytest.mark.parametrize("name, make", _op_samples())
def test_opcheck(name, make):
    op, args = OPS[name], make()
    torch.library.opcheck(op.overload, (*args, "torch"))


@pytest.mark.parametrize("name", [n for n in SAMPLES if OPS[n].backward is not None])
def test_gradcheck_float64(name):
    op = OPS[name]
    differentiable = [op.arg_names.index(g) for g in op.grads_for]
    for make in SAMPLES[name]:
        args = list(make())

        def fn(*tensors, args=args):
            full = list(args)
            for i, t in zip(differentiable, tensors, strict=True):
                full[i] = t
            return op(*full, backend="torch")

        inputs = [args[i].clone().requires_grad_() for i in differentiable]
        assert torch.autograd.gradcheck(fn, inputs, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name, make", _op_samples())
def test_autocast_rule_runs_the_op_in_one_dtype_forward_and_backward(name, make, dtype):
    op = OPS[name]
    args = list(make(dtype=torch.float32))
    floats = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    if len(floats) > 1:
        args[floats[-1]] = args[floats[-1]].to(dtype)  # mixed inputs, as autocast leaves them before a custom op
    leaves = [a.requires_grad_() if op.backward is not None and i in floats else a for i, a in enumerate(args)]
    want = torch.float32 if op.autocast == "fp32" else dtype
    with torch.autocast("cpu", dtype=dtype):
        out = op(*leaves, backend="torch")
        direct = op.overload(*leaves, "torch")  # the same rule at the dispatcher
    if out.is_floating_point():
        assert out.dtype == direct.dtype == want
        assert torch.isfinite(out).all()
    else:
        assert torch.equal(out, direct)
    if op.backward is not None:
        out.float().square().sum().backward()
        for i in floats:
            assert leaves[i].grad is not None and leaves[i].grad.dtype == leaves[i].dtype
            assert torch.isfinite(leaves[i].grad).all()


@pytest.mark.parametrize("name", sorted(ANALYTIC_FLOPS))
def test_flop_counter_counts_the_op_and_its_backward(name):
    op, args = OPS[name], SAMPLES[name][0]()
    expected = ANALYTIC_FLOPS[name](*args)
    leaves = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() and
              op.backward is not None else a for a in args]
    with FlopCounterMode(display=False) as counter:
        out = op(*leaves, backend="torch")
    assert counter.get_total_flops() == expected
    if op.backward is not None:
        with FlopCounterMode(display=False) as counter:
            out.float().sum().backward()
        assert counter.get_total_flops() == 2 * expected


def test_single_block_halo_map_compiles_with_matching_strides():
    """A map that is one block (the case whose fake strides once differed from the real op's)."""
    args = _halo(h=8, w=8, block=8, halo=3, dtype=torch.float32)
    op = OPS["halo_attention"]
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: op(*a, backend="torch"), fullgraph=True)
    torch.testing.assert_close(compiled(*args), op(*args, backend="torch"))


def test_candidate_ties_break_to_the_lower_vertex_id_with_or_without_a_batch():
    score = torch.tensor([0.2, 0.0, 0.7, 0.0, 0.0, 0.7])
    from attnzoo.kernels.topm import score_candidates

    single = score_candidates(score, 4)
    batched = score_candidates(score, 4, torch.zeros(6, dtype=torch.long))
    assert torch.equal(single, batched)
    assert single[0].tolist() == [2, 5, 0, 1]


def test_onnx_lowering_of_candidates_breaks_ties_like_eager(tmp_path):
    """ONNX has no stable sort; its TopK breaks ties by the lower index, the order the eager op guarantees."""
    import onnxruntime as ort

    from attnzoo.kernels.topm import score_candidates

    class Candidates(torch.nn.Module):
        def forward(self, score, batch):
            return score_candidates(score, 3, batch)

    score, _, batch = _scores(torch.float32)
    path = tmp_path / "candidates.onnx"
    torch.onnx.export(Candidates().eval(), (score, batch), str(path), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim.DYNAMIC}, {0: torch.export.Dim.DYNAMIC}))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for s, b in ((score, batch), (torch.zeros(9), torch.tensor([0, 0, 1, 1, 1, 1, 2, 2, 2]))):
        feed = dict(zip([i.name for i in session.get_inputs()], (s.numpy(), b.numpy()), strict=True))
        assert (session.run(None, feed)[0] == score_candidates(s, 3, b).numpy()).all()


def test_definition_errors_name_what_is_wrong():
    reference = lambda x: x  # noqa: E731
    with pytest.raises(ValueError, match="already defined"):
        define_op("ela_gate", "(Tensor x) -> Tensor", reference=reference, fake=reference)
    with pytest.raises(ValueError, match="autocast='fp16'"):
        define_op("aztest_bad_autocast", "(Tensor x) -> Tensor", reference=reference, fake=reference,
                  autocast="fp16")
    with pytest.raises(ValueError, match="grads_for names \\['y'\\]"):
        define_op("aztest_bad_grads", "(Tensor x) -> Tensor", reference=reference, fake=reference,
                  backward=reference, grads_for=("y",))
    with pytest.raises(ValueError, match="not of the form"):
        define_op("aztest_bad_schema", "Tensor x -> Tensor", reference=reference, fake=reference)


_COMPILE_UNDER_CI = """
import sys
sys.path[:0] = [{tests!r}, {here!r}]
import torch
from test_define import SAMPLES
from attnzoo.kernels.define import OPS
for name, makers in SAMPLES.items():
    args = makers[0]()
    compiled = torch.compile(lambda *a: OPS[name](*a, backend="torch"), fullgraph=True)
    torch.testing.assert_close(compiled(*args), OPS[name](*args, backend="torch"), msg=name)
"""


def test_every_op_compiles_with_inductor_when_the_ci_variable_is_set():
    """With ``CI`` set (GitHub Actions sets it), Inductor refuses an implicit fallback for an op that has a table
    decomposition; every op must still compile to a call of itself. A fresh process, so that no fallback is left
    over from another test, and no cache: a cached graph skips the lowering step that checks."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    script = _COMPILE_UNDER_CI.format(tests=str(here.parent), here=str(here))
    env = {**os.environ, "CI": "1", "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
