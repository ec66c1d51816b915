"""attnzoo::neighborhood_attention against NATTEN's definition: windows, dense masked attention, the spec's worked
examples, NAT's bias indexing, every path (blocked PyTorch, lowering, FlexAttention), gradients, the op boundary
(opcheck, compile, ONNX), input checks, and the stated correspondence with halo attention.

The oracle (``tests/na_oracle.py``) is NATTEN's reference mask transcribed with Python ints.
"""

from __future__ import annotations

import importlib
import itertools
import math
import random

import pytest
import torch
from na_oracle import dense_attention, natten_window

from attnzoo.kernels import _dispatch
from attnzoo.kernels import neighborhood as na
from attnzoo.kernels.halo import halo_attention
from attnzoo.kernels.neighborhood import (
    NEIGHBORHOOD_ATTENTION,
    neighborhood_attention,
    neighborhood_attention_lowering,
    neighborhood_windows,
)


def valid_configs(length: int):
    """Every (kernel, dilation, stride, causal) that NATTEN accepts for a dimension of ``length``."""
    return [(k, d, s, c) for k in range(2, length + 1) for d in range(1, length // k + 1) for s in range(1, k + 1)
            for c in (False, True)]


def _inputs(spatial, heads=2, dim=3, dim_v=4, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, *spatial, heads, dim, generator=gen, dtype=dtype) for _ in range(2))
    return q, k, torch.randn(2, *spatial, heads, dim_v, generator=gen, dtype=dtype)


def _rpb(kernel, heads=2, dtype=torch.float64, seed=1):
    return torch.randn(heads, *(2 * x - 1 for x in kernel), generator=torch.Generator().manual_seed(seed),
                       dtype=dtype)


def _bias_allowed(kernel, causal) -> bool:
    return not any(causal) and all(x % 2 for x in kernel)


# ---------------------------------------------------------------------------------------------------------------
# Windows and worked examples
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(2, 17))
def test_windows_match_natten_for_every_valid_configuration(length):
    for kernel, dilation, stride, causal in valid_configs(length):
        start, end, group, _ = neighborhood_windows(length, kernel, dilation, stride, causal)
        for i in range(length):
            got = [j * dilation + int(group[i]) for j in range(int(start[i]), int(end[i]))]
            assert got == natten_window(i, length, kernel, dilation, stride, causal), (length, kernel, dilation,
                                                                                        stride, causal, i)
        if not causal:  # shifted, never truncated: every query sees exactly k keys
            assert bool(((end - start) == kernel).all())


def _neighbour_sets(length, kernel, dilation=1, stride=1, causal=False, backend="torch"):
    """Which keys each query attends to, read from the op itself: q = 0 makes the softmax uniform over the allowed
    keys, and one-hot values then put 1/n on exactly those keys."""
    q = torch.zeros(1, length, 1, 1, dtype=torch.float64)
    v = torch.eye(length, dtype=torch.float64).view(1, length, 1, length)
    out = neighborhood_attention(q, q, v, kernel, dilation, stride, causal, backend=backend)[0, :, 0]
    return [set(torch.nonzero(row > 0).flatten().tolist()) for row in out]


@pytest.mark.parametrize("case, expected", [
    (dict(length=7, kernel=3, dilation=2),
     {0: {0, 2, 4}, 1: {1, 3, 5}, 2: {0, 2, 4}, 3: {1, 3, 5}, 4: {2, 4, 6}, 5: {1, 3, 5}, 6: {2, 4, 6}}),
    (dict(length=8, kernel=3, stride=3),
     {**dict.fromkeys(range(3), {0, 1, 2}), **dict.fromkeys(range(3, 6), {3, 4, 5}), 6: {5, 6, 7}, 7: {5, 6, 7}}),
    (dict(length=9, kernel=4, stride=2),
     {0: {0, 1, 2, 3}, 1: {0, 1, 2, 3}, 2: {1, 2, 3, 4}, 3: {1, 2, 3, 4}, 4: {3, 4, 5, 6}, 5: {3, 4, 5, 6},
      **dict.fromkeys(range(6, 9), {5, 6, 7, 8})}),
    (dict(length=12, kernel=4, stride=2, causal=True),
     {0: {0}, 1: {0, 1}, 4: {2, 3, 4}, 5: {2, 3, 4, 5}, 6: {4, 5, 6}}),
], ids=["L7-k3-d2", "L8-k3-s3", "L9-k4-s2", "causal-L12-k4-s2"])
def test_worked_examples_of_the_spec(case, expected):
    sets = _neighbour_sets(**case)
    for query, keys in expected.items():
        assert sets[query] == keys, (case, query)


def test_blocked_attention_is_stride_equal_to_kernel():
    sets = _neighbour_sets(12, kernel=4, stride=4)
    assert sets == [set(range(4 * (i // 4), 4 * (i // 4) + 4)) for i in range(12)]


def test_full_window_is_plain_attention():
    q, k, v = _inputs((5, 6))
    want = torch.nn.functional.scaled_dot_product_attention(*(t.flatten(1, 2).transpose(1, 2) for t in (q, k, v)))
    got = neighborhood_attention(q, k, v, (5, 6))
    torch.testing.assert_close(got.flatten(1, 2), want.transpose(1, 2), rtol=0, atol=1e-12)
    causal = neighborhood_attention(q[:, 0], k[:, 0], v[:, 0], 6, is_causal=True)  # 1-D, k == L: causal attention
    want = torch.nn.functional.scaled_dot_product_attention(*(t[:, 0].transpose(1, 2) for t in (q, k, v)),
                                                            is_causal=True)
    torch.testing.assert_close(causal, want.transpose(1, 2), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# The op against the dense oracle
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [7, 8])
def test_1d_every_valid_configuration(length):
    """Odd and even maps, every kernel/dilation/stride/causal NATTEN accepts, with the bias where it is allowed."""
    q, k, v = _inputs((length,))
    for kernel, dilation, stride, causal in valid_configs(length):
        rpb = _rpb((kernel,)) if _bias_allowed((kernel,), (causal,)) else None
        want = dense_attention(q, k, v, (kernel,), (dilation,), (stride,), (causal,), rpb, scale=0.7)
        got = neighborhood_attention(q, k, v, kernel, dilation, stride, causal, rpb, scale=0.7)
        low = neighborhood_attention_lowering(q, k, v, [kernel], [dilation], [stride], [causal],
                                              q.new_zeros(0) if rpb is None else rpb, 0.7)
        config = (length, kernel, dilation, stride, causal)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=f"op {config}")
        torch.testing.assert_close(low, want, rtol=0, atol=1e-12, msg=f"lowering {config}")


@pytest.mark.parametrize("spatial", [(5, 6), (7, 7), (8, 9)])
def test_2d_configurations_borders_and_causal(spatial):
    """A seeded sample of per-dimension configuration pairs on odd and even maps (every pair is one of NATTEN's)."""
    pairs = list(itertools.product(valid_configs(spatial[0]), valid_configs(spatial[1])))
    q, k, v = _inputs(spatial)
    for first, second in random.Random(sum(spatial)).sample(pairs, 40):
        kernel, dilation, stride, causal = zip(first, second, strict=True)
        rpb = _rpb(kernel) if _bias_allowed(kernel, causal) else None
        want = dense_attention(q, k, v, kernel, dilation, stride, causal, rpb, scale=0.7)
        got = neighborhood_attention(q, k, v, kernel, dilation, stride, causal, rpb, scale=0.7)
        low = neighborhood_attention_lowering(q, k, v, kernel, dilation, stride, causal,
                                              q.new_zeros(0) if rpb is None else rpb, 0.7)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=f"op {spatial} {first} {second}")
        torch.testing.assert_close(low, want, rtol=0, atol=1e-12, msg=f"lowering {spatial} {first} {second}")


@pytest.mark.parametrize("spatial, kernel, dilation, stride, causal", [
    ((4, 5, 6), (3, 2, 3), (1, 2, 2), (1, 2, 3), (False, True, False)),
    ((5, 5, 5), (3, 3, 3), (1, 1, 1), (1, 1, 1), (False, False, False)),
    ((6, 4, 7), (2, 4, 3), (3, 1, 2), (2, 3, 1), (True, False, True)),
])
def test_3d(spatial, kernel, dilation, stride, causal):
    q, k, v = _inputs(spatial)
    rpb = _rpb(kernel) if _bias_allowed(kernel, causal) else None
    want = dense_attention(q, k, v, kernel, dilation, stride, causal, rpb, scale=0.7)
    torch.testing.assert_close(neighborhood_attention(q, k, v, kernel, dilation, stride, causal, rpb, scale=0.7),
                               want, rtol=0, atol=1e-12)
    bias = q.new_zeros(0) if rpb is None else rpb
    torch.testing.assert_close(neighborhood_attention_lowering(q, k, v, kernel, dilation, stride, causal, bias, 0.7),
                               want, rtol=0, atol=1e-12)


def test_many_chunks_and_dilation_reordering(monkeypatch):
    """The chunked path (one block row per chunk) and the reordering of dilation groups give the same result."""
    q, k, v = _inputs((13, 11))
    rpb = _rpb((3, 5))
    args = (q, k, v, (3, 5), (3, 2), (2, 1), (False, False), rpb)
    want = dense_attention(*args, scale=0.5)
    whole = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    neighborhood_attention(*whole[:3], *args[3:7], whole[3], scale=0.5).square().sum().backward()
    monkeypatch.setattr(na, "CHUNK_ELEMENTS", 1)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    got = neighborhood_attention(*leaves[:3], *args[3:7], leaves[3], scale=0.5)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    got.square().sum().backward()  # the backward's chunks too (the one-chunk backward is gradchecked below)
    for a, b in zip(leaves, whole, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_default_scale_is_head_dim_to_the_minus_half():
    q, k, v = _inputs((9,), dim=4)
    torch.testing.assert_close(neighborhood_attention(q, k, v, 3), neighborhood_attention(q, k, v, 3, scale=0.5))


# ---------------------------------------------------------------------------------------------------------------
# NAT's bias
# ---------------------------------------------------------------------------------------------------------------


def natten017_pb_start(index: int, length: int, kernel: int, dilation: int) -> int:
    """``get_pb_start`` of NATTEN 0.17.5's CPU kernels (``natten_cpu_commons.h``), transcribed."""
    nh = kernel // 2
    if dilation <= 1:
        return nh + (index < nh) * (nh - index) + (index + nh >= length) * (length - index - 1 - nh)
    if index - nh * dilation < 0:
        return kernel - 1 - (index // dilation)
    if index + nh * dilation >= length:
        return (length - index - 1) // dilation
    return nh


def natten017_window_start(index: int, length: int, kernel: int, dilation: int) -> int:
    """``get_window_start`` (non-causal) of the same file: the first key of the window, in map coordinates."""
    nh = kernel // 2
    group, ip = index % dilation, index // dilation
    group_len = (length + dilation - 1) // dilation
    group_len -= 1 if group >= dilation - (group_len * dilation - length) else 0
    start = max(ip - nh, 0) + (ip + nh >= group_len) * (group_len - ip - nh - 1)
    return start * dilation + group


@pytest.mark.parametrize("length", range(3, 26))
def test_bias_rows_are_natten_017s_at_every_border(length):
    """The bias row the op reads, ``(j' - i') + k - 1``, is the row NATTEN 0.17's kernels read (``pb_start + ki``
    for the ki-th neighbour) for every odd kernel, dilation and query (stride 1, where NATTEN has a bias)."""
    for kernel in range(3, length + 1, 2):
        for dilation in range(1, length // kernel + 1):
            for i in range(length):
                first = natten017_window_start(i, length, kernel, dilation)
                assert natten_window(i, length, kernel, dilation, 1, False)[0] == first
                for ki in range(kernel):
                    j = first + ki * dilation
                    assert j // dilation - i // dilation + kernel - 1 == natten017_pb_start(i, length, kernel,
                                                                                           dilation) + ki


def test_bias_gets_the_gradient_of_every_position_it_is_added_to():
    q, k, v = _inputs((6, 7))
    rpb = _rpb((3, 3)).requires_grad_()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c, r: neighborhood_attention(a, b, c, 3, (2, 1), (1, 2), rpb=r),
                                    [*leaves, rpb])


# ---------------------------------------------------------------------------------------------------------------
# Paths and backends
# ---------------------------------------------------------------------------------------------------------------

FLEX_CASES = [
    ((9, 10), (3, 5), (2, 1), (1, 2), (False, False), True),
    ((8, 8), (4, 3), (2, 1), (2, 3), (True, False), False),
    ((20,), (5,), (3,), (2,), (False,), True),
]


@pytest.mark.parametrize("spatial, kernel, dilation, stride, causal, bias", FLEX_CASES)
def test_flex_path_matches_the_reference(spatial, kernel, dilation, stride, causal, bias):
    q, k, v = _inputs(spatial, dim=8, dim_v=8, dtype=torch.float32)
    rpb = _rpb(kernel, dtype=torch.float32) if bias else None
    want = dense_attention(*(t.double() for t in (q, k, v)), kernel, dilation, stride, causal,
                           None if rpb is None else rpb.double(), scale=0.35)
    got = neighborhood_attention(q, k, v, kernel, dilation, stride, causal, rpb, scale=0.35, backend="flex")
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)
    # FlexAttention has no CPU backward: the 'flex' path's gradients are the blocked path's
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    neighborhood_attention(*leaves, kernel, dilation, stride, causal, rpb, scale=0.35, backend="flex").sum().backward()
    flex_grads = [t.grad for t in leaves]
    for t in leaves:
        t.grad = None
    neighborhood_attention(*leaves, kernel, dilation, stride, causal, rpb, scale=0.35).sum().backward()
    for got_grad, t in zip(flex_grads, leaves, strict=True):
        torch.testing.assert_close(got_grad, t.grad)


def test_backend_names(monkeypatch):
    q, k, v = _inputs((9,))
    want = neighborhood_attention(q, k, v, 3, backend="torch")
    for backend in ("auto", None):
        torch.testing.assert_close(neighborhood_attention(q, k, v, 3, backend=backend), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="backend='fast' is not one of"):
        neighborhood_attention(q, k, v, 3, backend="fast")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        neighborhood_attention(q, k, v, 3, backend="triton")
    _dispatch.set_backend("torch")  # the process default is followed by 'auto'
    try:
        torch.testing.assert_close(neighborhood_attention(q, k, v, 3), want, rtol=0, atol=0)
    finally:
        _dispatch._default_backend = None


# ---------------------------------------------------------------------------------------------------------------
# Gradients and the op boundary
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial, kernel, dilation, stride, causal, bias", [
    ((8,), (3,), (2,), (2,), (False,), True),
    ((9,), (4,), (1,), (3,), (True,), False),
    ((5, 6), (3, 4), (1, 1), (3, 2), (False, True), False),
    ((4, 3, 5), (3, 2, 3), (1, 1, 1), (1, 2, 2), (False, False, False), False),
])
def test_gradcheck(spatial, kernel, dilation, stride, causal, bias):
    q, k, v = (t.requires_grad_() for t in _inputs(spatial, dim=2, dim_v=3))
    leaves = [q, k, v, *([_rpb(kernel).requires_grad_()] if bias else [])]

    def fn(*tensors):
        rpb = tensors[3] if bias else None
        return neighborhood_attention(*tensors[:3], kernel, dilation, stride, causal, rpb, scale=0.8)

    assert torch.autograd.gradcheck(fn, leaves)


def test_flex_compiles_past_dynamos_shared_recompile_limit(monkeypatch):
    """Every ``torch.compile(flex_attention)`` in a process shares dynamo's recompile limit; past it dynamo ran
    flex_attention eagerly: its dense math path under vmap, which broke opcheck after earlier flex tests. The op's
    compiled region is its own: with the global limit at 1 and new shapes, the dense path is never taken."""
    module = importlib.import_module("torch._higher_order_ops.flex_attention")  # the package re-exports the HOP

    def dense(*args, **kwargs):
        raise AssertionError("FlexAttention ran its dense eager path")

    monkeypatch.setattr(module, "math_attention", dense)
    with torch._dynamo.config.patch(recompile_limit=1):
        for length in (13, 14, 15):
            q, k, v = _inputs((length,), dim=4, dim_v=4, dtype=torch.float32)
            got = neighborhood_attention(q, k, v, 3, backend="flex")
            torch.testing.assert_close(got, neighborhood_attention(q, k, v, 3, backend="torch"), rtol=0, atol=2e-6)


@pytest.mark.parametrize("path", ["gather", "flex"])
def test_opcheck(path):
    q, k, v = _inputs((5, 4, 6), dtype=torch.float32 if path == "flex" else torch.float64)
    if path == "flex":  # build the cached block mask first: create_block_mask's vmap cannot run under opcheck's modes
        neighborhood_attention(q, k, v, (3, 2, 3), (1, 2, 2), (1, 2, 1), (False, True, False), backend="flex")
    torch.library.opcheck(NEIGHBORHOOD_ATTENTION.overload,
                          (q, k, v, [3, 2, 3], [1, 2, 2], [1, 2, 1], [False, True, False], q.new_zeros(0), 0.5, path,
                           "torch"))


def test_compile_fullgraph_forward_and_backward():
    q, k, v = (t.float() for t in _inputs((7, 9), dim=4, dim_v=4))
    rpb = _rpb((5, 3), dtype=torch.float32)

    def fn(q, k, v, rpb):
        return neighborhood_attention(q, k, v, (5, 3), (1, 3), (2, 1), rpb=rpb)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    eager = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    got, want = compiled(*leaves), fn(*eager)
    torch.testing.assert_close(got, want)
    got.square().sum().backward()
    want.square().sum().backward()
    for a, b in zip(leaves, eager, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


class _TinyNA(torch.nn.Module):
    """qkv projection, the op with a bias and dilation, output projection: what a NAT layer exports."""

    def __init__(self, dim=8, heads=2, kernel=3, dilation=2):
        super().__init__()
        self.heads, self.kernel, self.dilation = heads, kernel, dilation
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.rpb = torch.nn.Parameter(torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1))
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):  # (B, H, W, C)
        b, h, w, c = x.shape
        q, k, v = self.qkv(x).reshape(b, h, w, 3, self.heads, c // self.heads).unbind(3)
        out = neighborhood_attention(q, k, v, self.kernel, self.dilation, rpb=self.rpb)
        return self.proj(out.reshape(b, h, w, c))


def test_onnx_export_runs_in_onnxruntime_at_other_sizes(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = _TinyNA().eval()
    x = torch.randn(2, 9, 11, 8)
    dyn = torch.export.Dim.DYNAMIC
    path = tmp_path / "na.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=({0: dyn, 1: dyn, 2: dyn},))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((2, 9, 11, 8), (1, 13, 7, 8)):
        sample = torch.randn(shape)
        (got,) = session.run(None, {session.get_inputs()[0].name: sample.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), model(sample), rtol=1e-4, atol=1e-5)


def test_torch_export_keeps_the_custom_op():
    model = _TinyNA().eval()
    program = torch.export.export(model, (torch.randn(2, 9, 11, 8),))
    assert any(node.target == NEIGHBORHOOD_ATTENTION.overload for node in program.graph.nodes)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=11), "kernel_size=11 .* is larger than the map \\(9\\)"),
    (dict(kernel_size=1), "kernel_size=1 .* must be >= 2"),
    (dict(kernel_size=3, dilation=4), "kernel_size \\* dilation = 3 \\* 4 = 12 .* exceeds the map \\(9\\)"),
    (dict(kernel_size=3, dilation=0), "dilation=0 .* must be >= 1"),
    (dict(kernel_size=3, stride=0), "stride=0 .* must be a positive int"),
    (dict(kernel_size=3, stride=-1), "stride=-1 .* must be a positive int"),
    (dict(kernel_size=3, stride=4), "stride=4 .* must be <= kernel_size=3"),
    (dict(kernel_size=4, rpb=torch.zeros(2, 7)), "rpb with kernel_size=\\(4,\\): NATTEN supports the bias only "
                                                  "with odd kernels"),
    (dict(kernel_size=3, rpb=torch.zeros(2, 7)), "rpb has shape \\(2, 7\\); expected .* = \\(2, 5\\)"),
    (dict(kernel_size=3, rpb=torch.zeros(3, 5)), "rpb has shape \\(3, 5\\); expected .* = \\(2, 5\\)"),
    (dict(kernel_size=3, is_causal=True, rpb=torch.zeros(2, 5)), "causal neighborhood attention is undefined with "
                                                                 "positional biases"),
    (dict(kernel_size=(3, 3)), "kernel_size=\\(3, 3\\) must be one value or 1"),
])
def test_bad_input_names_argument_value_and_rule(kwargs, match):
    q, k, v = _inputs((9,), dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        neighborhood_attention(q, k, v, **kwargs)


def test_bad_tensors():
    q, k, v = _inputs((9,), dtype=torch.float32)
    with pytest.raises(ValueError, match="k has shape .* expected q's shape"):
        neighborhood_attention(q, k[:, :8], v, 3)
    with pytest.raises(ValueError, match="v has shape"):
        neighborhood_attention(q, k, v[:, :8], 3)
    with pytest.raises(ValueError, match="1 to 3 spatial dims"):
        neighborhood_attention(q[:, 0], k[:, 0], v[:, 0], 3)
    with pytest.raises(ValueError, match="k is torch.float64"):
        neighborhood_attention(q, k.double(), v, 3)
    with pytest.raises(TypeError, match="kernel_size=3.0 must be ints"):
        neighborhood_attention(q, k, v, 3.0)


# ---------------------------------------------------------------------------------------------------------------
# Halo attention: what corresponds and what does not (the op docstring's statements)
# ---------------------------------------------------------------------------------------------------------------


def _halo(q, k, v, block, halo, mask_padding, tables=None):
    """halo_attention on heads-last (B, H, W, 1, D) inputs, one head per batch row."""
    win = block + 2 * halo
    d = q.shape[-1]
    height, width = tables if tables is not None else (q.new_zeros(2 * win - 1, d), q.new_zeros(2 * win - 1, d))
    out = halo_attention(*(t[..., 0, :].permute(0, 3, 1, 2) for t in (q, k, v)), height, width, block, halo,
                         scale=0.5, mask_padding=mask_padding)
    return out.permute(0, 2, 3, 1).unsqueeze(3)


def test_halo_without_halo_on_whole_blocks_is_blocked_neighborhood_attention():
    """halo_size=0, sides multiples of the block, no position term: exactly NA with kernel == stride == block."""
    q, k, v = _inputs((8, 12), heads=1)
    want = neighborhood_attention(q, k, v, 4, stride=4, scale=0.5)
    for mask_padding in (False, True):
        torch.testing.assert_close(_halo(q, k, v, 4, 0, mask_padding), want, rtol=0, atol=1e-12)


def test_halo_windows_are_strided_neighborhood_windows_only_inside_the_map():
    """Blocks whose halo window lies inside the map see NA's window (kernel block + 2 * halo, stride block); border
    blocks differ (halo pads or masks, NA shifts), and so does any nonzero position table."""
    block, halo, side = 2, 1, 8
    q, k, v = _inputs((side, side), heads=1)
    ours = neighborhood_attention(q, k, v, block + 2 * halo, stride=block, scale=0.5)
    interior = slice(block, side - block)  # blocks 1 and 2 of 4: their windows [1, 5) and [3, 7) are inside
    for mask_padding in (False, True):
        theirs = _halo(q, k, v, block, halo, mask_padding)
        torch.testing.assert_close(theirs[:, interior, interior], ours[:, interior, interior], rtol=0, atol=1e-12)
        assert not torch.allclose(theirs[:, :block], ours[:, :block])  # a border block row
    win = block + 2 * halo
    gen = torch.Generator().manual_seed(3)
    tables = [torch.randn(2 * win - 1, q.shape[-1], generator=gen, dtype=q.dtype) for _ in range(2)]
    positioned = _halo(q, k, v, block, halo, True, tables)
    assert not torch.allclose(positioned[:, interior, interior], ours[:, interior, interior])


def test_flop_formula_counts_kernel_keys_per_query():
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v = _inputs((6, 5, 4), heads=2, dim=3, dim_v=5)
    with FlopCounterMode(display=False) as counter:
        neighborhood_attention(q, k, v, (3, 2, 2), is_causal=(True, False, False))
    assert counter.get_total_flops() == 2 * (2 * 6 * 5 * 4 * 2) * math.prod((3, 2, 2)) * (3 + 5)
