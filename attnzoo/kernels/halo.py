"""Blocked local self-attention with haloes (HaloNet), as one op: ``attnzoo::halo_attention``.

Paper: "Scaling Local Self-Attention for Parameter Efficient Visual Backbones", Vaswani et al., CVPR 2021,
https://arxiv.org/abs/2103.12731.

The query map is cut into non-overlapping ``block_size // stride`` squares; every query of a block attends to the
same ``(block_size + 2 * halo_size)``-wide window of the key/value map centred on that block. Logits are
``scale * q.k`` plus factorised relative-position logits ``q.height_rel[kh - qh + win - 1] + q.width_rel[kw - qw +
win - 1]`` (query and key coordinates local to the block and the window), exactly the indexing of timm's
``HaloAttn``; with ``scale_pos_embed`` the position term is scaled too.

Borders follow timm by default: window pixels outside the key map are zero keys and values that still take part
in the softmax (they are a sink). ``mask_padding=True`` masks them out instead (lucidrains' semantics). Maps whose
sides are not multiples of the block size are handled by treating the missing rows/columns as such padding, and
the output is cropped back to the query map.

The op works on image layouts so that a kernel can read the windows straight from the projected maps: nothing is
unfolded, padded or re-blocked outside the op. Backends:

* 'torch': the PyTorch path below. Forward is :func:`halo_attention_reference`; backward is written out by hand
  (recompute the probabilities, then the flash-attention gradient formulas), which is cheaper than differentiating
  the reference again and is checked against autograd of the reference in the tests.
* 'triton': ``attnzoo.kernels.halo_triton`` must provide ``halo_attention_forward(q, k, v, height_rel, width_rel,
  block_size, halo_size, stride, scale, scale_pos_embed, mask_padding) -> out`` and ``halo_attention_backward(
  grad_out, out, q, k, v, height_rel, width_rel, block_size, halo_size, stride, scale, scale_pos_embed,
  mask_padding) -> (grad_q, grad_k, grad_v, grad_height_rel, grad_width_rel)`` with the shapes of the op below.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnzoo._checks import check_int
from attnzoo.kernels.define import define_op

__all__ = ["HALO_ATTENTION", "halo_attention", "halo_attention_lowering", "halo_attention_reference"]


# ---------------------------------------------------------------------------------------------------------------
# Layout helpers shared by the forward and the hand-written backward
# ---------------------------------------------------------------------------------------------------------------


def _skewed(full: torch.Tensor, query_block: int, win: int, axis: int) -> torch.Tensor:
    """View of per-row relative scores ``full`` (M, qb, qb, 2 * win - 1) as per-window-coordinate scores.

    Element (m, qh, qw, k) of the result is ``full[m, qh, qw, k - i + win - 1]`` with ``i`` = qh (``axis=1``) or
    qw (``axis=2``): stepping ``i`` moves one table row back, so a stride of one less than the row stride does the
    shift with no copy (timm pads and reshapes for the same "skew"). Rows never overlap, so the view can be written.
    """
    m, rows = full.shape[0], full.shape[-1]
    strides = [query_block * query_block * rows, query_block * rows, rows, 1]
    strides[axis] -= 1
    return full.as_strided((m, query_block, query_block, win), strides, full.storage_offset() + win - 1)


def _to_blocks(x: torch.Tensor, nbh: int, nbw: int, query_block: int) -> torch.Tensor:
    """(BH, C, h, w) map -> (BH * nbh * nbw, query_block**2, C) blocks, zero-padding bottom/right to the grid."""
    bh, c, h, w = x.shape
    x = F.pad(x, (0, nbw * query_block - w, 0, nbh * query_block - h))
    x = x.view(bh, c, nbh, query_block, nbw, query_block).permute(0, 2, 4, 3, 5, 1)
    # (BH, nbh, nbw, qb, qb, C)
    return x.reshape(bh * nbh * nbw, query_block * query_block, c)


def _from_blocks(x: torch.Tensor, bh: int, nbh: int, nbw: int, query_block: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_to_blocks`: (BH * nb, query_block**2, C) -> (BH, C, h, w), cropping the padding."""
    c = x.shape[-1]
    x = x.view(bh, nbh, nbw, query_block, query_block, c).permute(0, 5, 1, 3, 2, 4)
    # (BH, C, nbh, qb, nbw, qb)
    x = x.reshape(bh, c, nbh * query_block, nbw * query_block)
    if x.shape[-2:] != (h, w):
        x = x[:, :, :h, :w].contiguous()
    return x


def _window_padding(h: int, w: int, nbh: int, nbw: int, block_size: int, halo_size: int) -> tuple[int, int, int, int]:
    """F.pad spec that surrounds a (h, w) map with the halo and completes the last partial blocks."""
    return halo_size, halo_size + nbw * block_size - w, halo_size, halo_size + nbh * block_size - h


def _windows(x: torch.Tensor, nbh: int, nbw: int, block_size: int, halo_size: int, channels_last: bool) -> torch.Tensor:
    """(BH, C, H, W) -> every block's window, (BH * nb, win**2, C) or, channels first, (BH * nb, C, win**2)."""
    bh, c, h, w = x.shape
    win = block_size + 2 * halo_size
    x = F.pad(x, _window_padding(h, w, nbh, nbw, block_size, halo_size))
    x = x.unfold(2, win, block_size).unfold(3, win, block_size)  # (BH, C, nbh, nbw, win, win), a view
    if channels_last:
        return x.permute(0, 2, 3, 4, 5, 1).reshape(bh * nbh * nbw, win * win, c)
    return x.permute(0, 2, 3, 1, 4, 5).reshape(bh * nbh * nbw, c, win * win)


def _fold_windows(xw: torch.Tensor, bh: int, h: int, w: int, nbh: int, nbw: int, block_size: int,
                  halo_size: int) -> torch.Tensor:
    """Adjoint of :func:`_windows`: (BH * nb, C, win**2) window gradients summed back onto the (BH, C, H, W) map."""
    c = xw.shape[1]
    win = block_size + 2 * halo_size
    hp, wp = nbh * block_size + 2 * halo_size, nbw * block_size + 2 * halo_size
    xw = xw.view(bh, nbh, nbw, c, win, win).permute(0, 3, 1, 2, 4, 5)  # (BH, C, nbh, nbw, win, win)
    # The two Tensor.unfold calls of _windows, undone in reverse order (faster than F.fold's col2im here).
    rows = torch.ops.aten.unfold_backward(xw, [bh, c, nbh, wp, win], 3, win, block_size)
    padded = torch.ops.aten.unfold_backward(rows, [bh, c, hp, wp], 2, win, block_size)
    return padded[:, :, halo_size:halo_size + h, halo_size:halo_size + w].contiguous()


def _valid_keys(h: int, w: int, nbh: int, nbw: int, block_size: int, halo_size: int,
                device: torch.device) -> torch.Tensor:
    """Bool (nb, win**2): which window pixels of each block lie inside the (h, w) key map."""
    inside = torch.ones(1, 1, h, w, device=device)
    return _windows(inside, nbh, nbw, block_size, halo_size, channels_last=True)[..., 0] > 0


def _attention_probs(qb: torch.Tensor, kw: torch.Tensor, height_rel: torch.Tensor, width_rel: torch.Tensor,
                     query_block: int, scale: float, scale_pos_embed: bool,
                     valid: torch.Tensor | None) -> torch.Tensor:
    """Softmax over each block's window of ``scale * q.k + rel(q)``.

    Args:
        qb: queries, (M, query_block**2, dqk) with M = BH * nb.
        kw: window keys, channels first, (M, dqk, win**2).
        valid: (nb, win**2) keys allowed to take part, or None for timm's unmasked borders.

    Returns the probabilities, (M, query_block**2, win**2).
    """
    m, _, d = qb.shape
    win = height_rel.shape[0] // 2 + 1
    qs = qb * scale
    logits = torch.matmul(qs, kw)  # (M, qb**2, win**2)
    # The position term is rank-1 in each axis: add q.R_h (M, qh, qw, kh) and q.R_w (M, qh, qw, kw) by broadcasting
    # instead of materialising two full (qb**2, win**2) tensors as timm's skew trick does.
    qr = (qs if scale_pos_embed else qb).view(m, query_block, query_block, d)
    rel_h = _skewed(torch.matmul(qr, height_rel.t()), query_block, win, axis=1)  # (M, qh, qw, kh)
    rel_w = _skewed(torch.matmul(qr, width_rel.t()), query_block, win, axis=2)  # (M, qh, qw, kw)
    grid = logits.view(m, query_block, query_block, win, win)
    grid.add_(rel_h.unsqueeze(-1)).add_(rel_w.unsqueeze(-2))
    if valid is not None:
        logits.view(-1, *valid.shape[:1], *logits.shape[1:]).masked_fill_(~valid[:, None, :], float("-inf"))
    return logits.softmax(dim=-1)


def _geometry(q: torch.Tensor, k: torch.Tensor, block_size: int, stride: int) -> tuple[int, int, int]:
    h, w = k.shape[-2:]
    return math.ceil(h / block_size), math.ceil(w / block_size), block_size // stride


# ---------------------------------------------------------------------------------------------------------------
# PyTorch reference
# ---------------------------------------------------------------------------------------------------------------


def halo_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height_rel: torch.Tensor,
                             width_rel: torch.Tensor, block_size: int, halo_size: int, stride: int = 1,
                             scale: float = 1.0, scale_pos_embed: bool = False,
                             mask_padding: bool = False) -> torch.Tensor:
    """Pure-PyTorch halo attention (differentiable by autograd); the 'torch' backend's forward.

    Arguments and shapes as :func:`halo_attention` (no validation here).
    """
    bh, _, h, w = k.shape
    nbh, nbw, query_block = _geometry(q, k, block_size, stride)
    qb = _to_blocks(q, nbh, nbw, query_block)  # (M, qb**2, dqk)
    kw = _windows(k, nbh, nbw, block_size, halo_size, channels_last=False)  # (M, dqk, win**2)
    vw = _windows(v, nbh, nbw, block_size, halo_size, channels_last=True)  # (M, win**2, dv)
    valid = _valid_keys(h, w, nbh, nbw, block_size, halo_size, q.device) if mask_padding else None
    attn = _attention_probs(qb, kw, height_rel, width_rel, query_block, scale, scale_pos_embed, valid)
    out = torch.matmul(attn, vw)  # (M, qb**2, dv)
    return _from_blocks(out, bh, nbh, nbw, query_block, *q.shape[-2:])


def _halo_backward_torch(grad_out: torch.Tensor, out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         v: torch.Tensor, height_rel: torch.Tensor, width_rel: torch.Tensor, block_size: int,
                         halo_size: int, stride: int, scale: float, scale_pos_embed: bool,
                         mask_padding: bool) -> tuple[torch.Tensor, ...]:
    """Gradients of :func:`halo_attention_reference` w.r.t. q, k, v and both tables, written out by hand."""
    bh, _, h, w = k.shape
    nbh, nbw, query_block = _geometry(q, k, block_size, stride)
    win = block_size + 2 * halo_size
    qb = _to_blocks(q, nbh, nbw, query_block)
    kw = _windows(k, nbh, nbw, block_size, halo_size, channels_last=False)
    vw = _windows(v, nbh, nbw, block_size, halo_size, channels_last=True)
    valid = _valid_keys(h, w, nbh, nbw, block_size, halo_size, q.device) if mask_padding else None
    attn = _attention_probs(qb, kw, height_rel, width_rel, query_block, scale, scale_pos_embed, valid)
    dout = _to_blocks(grad_out, nbh, nbw, query_block)  # (M, qb**2, dv)
    # Softmax backward needs rowsum(P * dP) = rowsum(dO * O): a reduction over the small maps, not the logits.
    delta = _to_blocks((grad_out * out).sum(1, keepdim=True), nbh, nbw, query_block)  # (M, qb**2, 1)
    grad_vw = torch.matmul(dout.transpose(1, 2), attn)  # (M, dv, win**2): channels first, for _fold_windows
    grad_logits = torch.matmul(dout, vw.transpose(1, 2)).sub_(delta).mul_(attn)  # (M, qb**2, win**2)
    del attn
    qs = qb * scale
    grad_qs = torch.matmul(grad_logits, kw.transpose(1, 2))  # (M, qb**2, dqk)
    grad_kw = torch.matmul(qs.transpose(1, 2), grad_logits)  # (M, dqk, win**2)
    m, _, d = qb.shape
    grid = grad_logits.view(m, query_block, query_block, win, win)
    grad_h, grad_w = grid.sum(-1), grid.sum(-2)  # (M, qh, qw, kh), (M, qh, qw, kw)
    qr = (qs if scale_pos_embed else qb).view(m, query_block, query_block, d)
    # Scatter the per-window-coordinate gradients back onto table rows (the adjoint of _skewed), then two GEMMs each.
    grad_full_h, grad_full_w = (grad_h.new_zeros(m, query_block, query_block, 2 * win - 1) for _ in range(2))
    _skewed(grad_full_h, query_block, win, axis=1).copy_(grad_h)
    _skewed(grad_full_w, query_block, win, axis=2).copy_(grad_w)
    grad_qr = torch.matmul(grad_full_h, height_rel).add_(torch.matmul(grad_full_w, width_rel))  # (M, qh, qw, d)
    grad_height = grad_full_h.view(-1, 2 * win - 1).t() @ qr.reshape(-1, d)
    grad_width = grad_full_w.view(-1, 2 * win - 1).t() @ qr.reshape(-1, d)
    grad_qb = grad_qs.mul_(scale).add_(grad_qr.reshape(m, -1, d), alpha=scale if scale_pos_embed else 1.0)
    grad_q = _from_blocks(grad_qb, bh, nbh, nbw, query_block, *q.shape[-2:])
    grad_k = _fold_windows(grad_kw, bh, h, w, nbh, nbw, block_size, halo_size)
    grad_v = _fold_windows(grad_vw, bh, h, w, nbh, nbw, block_size, halo_size)
    return grad_q, grad_k, grad_v, grad_height, grad_width


# ---------------------------------------------------------------------------------------------------------------
# Export/ONNX lowering
# ---------------------------------------------------------------------------------------------------------------


def _block_index(num_blocks: torch.SymInt | int, step: int, width: int, offset: int, size: torch.SymInt | int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_blocks, width) map rows (or columns) ``i * step + j - offset`` clamped into the map, and which of them
    lie inside it: blocked windows as index tensors, so no size is padded, split or sliced symbolically."""
    index = (torch.arange(num_blocks, device=device) * step).unsqueeze(1) + torch.arange(width, device=device) - offset
    return index.clamp(0, size - 1), (index >= 0) & (index < size)


def _relative_rows(table: torch.Tensor, query_block: int, win: int) -> torch.Tensor:
    """(query_block, win, d) rows ``table[k - i + win - 1]`` for query coordinate i and window coordinate k."""
    i = torch.arange(query_block, device=table.device).unsqueeze(1)
    k = torch.arange(win, device=table.device)
    return table[k - i + win - 1]


def halo_attention_lowering(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height_rel: torch.Tensor,
                            width_rel: torch.Tensor, block_size: int, halo_size: int, stride: int = 1,
                            scale: float = 1.0, scale_pos_embed: bool = False,
                            mask_padding: bool = False) -> torch.Tensor:
    """The same function as :func:`halo_attention_reference` in export-friendly ops (the ONNX lowering).

    Blocks and windows are gathered with clamped index tensors and a validity mask instead of padding, ``unfold``
    and cropping; the relative-position rows are gathered from the tables before the product (a static
    ``(qb, win, d)`` gather) instead of skewing the products with ``as_strided``; nothing is written in place. Every
    size is then a product of block counts and constants, so symbolic H and W trace without guards.
    """
    bh, dqk, h, w = k.shape
    hq, wq = q.shape[-2:]
    query_block = block_size // stride
    win = block_size + 2 * halo_size
    nbh, nbw = (h + block_size - 1) // block_size, (w + block_size - 1) // block_size
    # queries -> blocks: (BH, nbh, nbw, qb, qb, dqk); rows past the map repeat its last one, their outputs are dropped
    q_rows, _ = _block_index(nbh, query_block, query_block, 0, hq, q.device)
    q_cols, _ = _block_index(nbw, query_block, query_block, 0, wq, q.device)
    qb = q[:, :, q_rows][..., q_cols].permute(0, 2, 4, 3, 5, 1)
    rows, rows_inside = _block_index(nbh, block_size, win, halo_size, h, q.device)  # (nbh, win)
    cols, cols_inside = _block_index(nbw, block_size, win, halo_size, w, q.device)  # (nbw, win)
    inside = rows_inside.view(nbh, 1, win, 1) & cols_inside.view(1, nbw, 1, win)  # (nbh, nbw, win, win)

    def windows(x: torch.Tensor) -> torch.Tensor:
        """(BH, C, H, W) -> (BH, nbh, nbw, win * win, C), zero outside the map (timm's zero padding)."""
        xw = x[:, :, rows][..., cols].permute(0, 2, 4, 3, 5, 1)  # (BH, nbh, nbw, win, win, C)
        xw = xw * inside.unsqueeze(-1).to(x.dtype)
        return xw.reshape(bh, nbh, nbw, win * win, x.shape[1])

    kw, vw = windows(k), windows(v)
    logits = torch.matmul(qb.reshape(bh, nbh, nbw, -1, dqk) * scale, kw.transpose(-1, -2))  # (.., qb**2, win**2)
    qr = qb * scale if scale_pos_embed else qb
    rel_h = torch.einsum("bxyijd,ikd->bxyijk", qr, _relative_rows(height_rel, query_block, win))  # k: window row
    rel_w = torch.einsum("bxyijd,jkd->bxyijk", qr, _relative_rows(width_rel, query_block, win))  # k: window column
    logits = logits.view(bh, nbh, nbw, query_block, query_block, win, win) + rel_h.unsqueeze(-1) + \
        rel_w.unsqueeze(-2)
    if mask_padding:
        logits = logits.masked_fill(~inside.view(nbh, nbw, 1, 1, win, win), float("-inf"))
    attn = logits.reshape(bh, nbh, nbw, query_block * query_block, win * win).softmax(-1)
    out = torch.matmul(attn, vw)  # (BH, nbh, nbw, qb**2, dv)
    out = out.view(bh, nbh, nbw, query_block, query_block, -1).permute(0, 5, 1, 3, 2, 4)
    out = out.reshape(bh, -1, nbh * query_block, nbw * query_block)  # (BH, dv, rows of the block grid, columns)
    return out[:, :, torch.arange(hq, device=q.device)][..., torch.arange(wq, device=q.device)]


# ---------------------------------------------------------------------------------------------------------------
# Op definition
# ---------------------------------------------------------------------------------------------------------------


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height_rel: torch.Tensor,
                  width_rel: torch.Tensor, block_size: int, halo_size: int, stride: int, scale: float,
                  scale_pos_embed: bool, mask_padding: bool) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("height_rel", height_rel), ("width_rel", width_rel)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} is {t.dtype} on {t.device}; expected {q.dtype} on {q.device} like q")
        expected_dim = 2 if name.endswith("_rel") else 4
        if t.dim() != expected_dim:
            raise ValueError(f"{name} must be {expected_dim}-D, got shape {tuple(t.shape)}")
    check_int("block_size", block_size, 1, where="halo_attention")
    check_int("halo_size", halo_size, 0, where="halo_attention")
    if stride not in (1, 2) or isinstance(stride, bool):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    if block_size % stride:
        raise ValueError(f"block_size={block_size} must be divisible by stride={stride}")
    bh, dqk, h, w = k.shape
    expected_q = (bh, dqk, -(-h // stride), -(-w // stride))  # ceil in integer arithmetic (symbolic sizes)
    if tuple(q.shape) != expected_q:
        raise ValueError(f"q has shape {tuple(q.shape)}; expected {expected_q} for k of shape {tuple(k.shape)} and "
                         f"stride={stride}")
    if v.shape[0] != bh or v.shape[2:] != k.shape[2:]:
        raise ValueError(f"v has shape {tuple(v.shape)}; expected ({bh}, dv, {h}, {w}) like k")
    win = block_size + 2 * halo_size
    for name, table in (("height_rel", height_rel), ("width_rel", width_rel)):
        if tuple(table.shape) != (2 * win - 1, dqk):
            raise ValueError(f"{name} has shape {tuple(table.shape)}; expected (2 * win - 1, dqk) = "
                             f"({2 * win - 1}, {dqk}) for block_size={block_size}, halo_size={halo_size}")


def _halo_flops(q, k, v, height_rel, width_rel, block_size, halo_size, stride, scale, scale_pos_embed,
                mask_padding) -> int:
    """2 multiply-adds per (query, window key, channel) for q.k and for p.v, plus the two position products."""
    bh, dqk, h, w = k
    dv = v[1]
    query_block, win = block_size // stride, block_size + 2 * halo_size
    blocks = bh * math.ceil(h / block_size) * math.ceil(w / block_size)
    queries = blocks * query_block * query_block
    return 2 * queries * win * win * (dqk + dv) + 2 * 2 * queries * win * dqk


HALO_ATTENTION = define_op(
    "halo_attention",
    "(Tensor q, Tensor k, Tensor v, Tensor height_rel, Tensor width_rel, int block_size, int halo_size, int stride, "
    "float scale, bool scale_pos_embed, bool mask_padding) -> Tensor",
    reference=halo_attention_reference,
    lowering=halo_attention_lowering,
    triton=("halo_triton", "halo_attention_forward"),
    fake=lambda q, k, v, *_: q.new_empty(q.shape[0], v.shape[1], q.shape[2], q.shape[3]),
    backward=_halo_backward_torch,
    backward_triton=("halo_triton", "halo_attention_backward"),
    grads_for=("q", "k", "v", "height_rel", "width_rel"),
    backward_needs_output=True,
    autocast="lower",
    validate=_check_inputs,
    flops=_halo_flops,
)


def halo_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height_rel: torch.Tensor,
                   width_rel: torch.Tensor, block_size: int, halo_size: int, stride: int = 1, scale: float = 1.0,
                   scale_pos_embed: bool = False, mask_padding: bool = False,
                   backend: str | None = None) -> torch.Tensor:
    """Halo attention of a query map over blocked windows of a key/value map.

    Args:
        q: queries, one map per (batch, head) pair, at ``1 / stride`` of the key resolution.
        k: keys at full resolution.
        v: values at full resolution.
        height_rel: relative-position table along height, ``2 * win - 1`` rows with ``win = block_size +
            2 * halo_size`` (rows ``[0, 2 * halo_size)`` are never used, as in timm).
        width_rel: relative-position table along width, same shape.
        block_size: side of the key blocks; query blocks are ``block_size // stride`` wide.
        halo_size: pixels of halo around each block on every side.
        stride: 1, or 2 for strided queries (then ``block_size`` must be even).
        scale: multiplies ``q.k`` (and the position term when ``scale_pos_embed``).
        scale_pos_embed: scale the relative-position logits too.
        mask_padding: exclude window pixels outside the map from the softmax (default: timm's zero keys).
        backend: 'auto', 'torch', 'triton', or None for the process default (see ``attnzoo.kernels.set_backend``).

    Shapes:
        q: (BH, dqk, ceil(H / stride), ceil(W / stride)); k: (BH, dqk, H, W); v: (BH, dv, H, W);
        height_rel, width_rel: (2 * win - 1, dqk). Returns (BH, dv, ceil(H / stride), ceil(W / stride)).
        H and W need not be multiples of ``block_size``.
    """
    return HALO_ATTENTION(q, k, v, height_rel, width_rel, block_size, halo_size, stride, float(scale),
                          bool(scale_pos_embed), bool(mask_padding), backend=backend)
