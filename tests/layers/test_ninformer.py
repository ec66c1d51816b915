"""NiNBlock: parameter counts from the spec, parity with a functional rewrite of the authors' block, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.layers.ninformer import NiNBlock

D, N, D_FFN = 16, 9, 24


def _block(**kwargs) -> NiNBlock:
    torch.manual_seed(0)
    block = NiNBlock(D, N, D_FFN, **kwargs).double().eval()
    with torch.no_grad():  # non-trivial norms, so that a swapped or skipped norm shows in the output
        for name, p in block.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    return block


def _reference(x: torch.Tensor, sd: dict[str, torch.Tensor], second_norm: str) -> torch.Tensor:
    """The authors' NiNBlock written out with functional ops (eval mode: dropout is the identity)."""

    def ln(t, prefix):
        return F.layer_norm(t, t.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])

    def ffn(t, prefix):
        hidden = F.gelu(F.linear(t, sd[f"{prefix}.fc1.weight"], sd[f"{prefix}.fc1.bias"]))
        return F.linear(hidden, sd[f"{prefix}.fc2.weight"], sd[f"{prefix}.fc2.bias"])

    u = ln(x, "norm1")
    # MLP-Mixer layer on u: token mixing over N on (B, d, N), then channel mixing
    v = u + ffn(ln(u, "gate.mixer.norm_tokens").transpose(1, 2), "gate.mixer.mlp_tokens").transpose(1, 2)
    v = v + ffn(ln(v, "gate.mixer.norm_channels"), "gate.mixer.mlp_channels")
    gate = F.linear(u, sd["gate.proj.weight"], sd["gate.proj.bias"]) * v  # no sigmoid
    x = x + gate
    return x + ffn(ln(x, second_norm), "mlp")


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_spec_for_cifar_block():
    block = NiNBlock(256, 64, 512, dropout=0.5)
    assert _count(block) == 659_264
    assert _count(block.gate) == 395_840
    assert _count(block.mlp) == 262_912
    assert _count(block.norm1) == 512 and block.norm2 is None
    assert _count(NiNBlock(256, 64, 512, shared_norm=False)) == 659_264 + 512


def test_default_ffn_width_is_twice_dim():
    assert NiNBlock(256, 64).d_ffn == 512


@pytest.mark.parametrize("shared_norm", [True, False])
def test_matches_functional_reference(shared_norm):
    block = _block(shared_norm=shared_norm)
    x = torch.randn(3, N, D, dtype=torch.float64)
    expected = _reference(x, block.state_dict(), "norm1" if shared_norm else "norm2")
    torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)


def test_shared_norm_is_one_module_used_twice():
    # with two norms holding norm1's weights the outputs coincide, with different weights they do not
    shared, split = _block(), _block(shared_norm=False)
    split.load_state_dict({**shared.state_dict(), "norm2.weight": shared.norm1.weight,
                           "norm2.bias": shared.norm1.bias})
    x = torch.randn(2, N, D, dtype=torch.float64)
    torch.testing.assert_close(split(x), shared(x), rtol=0, atol=0)
    with torch.no_grad():
        split.norm2.weight.mul_(2.0)
    assert (split(x) - shared(x)).abs().max() > 1e-3


def test_gate_is_unbounded():
    # a sigmoid gate would keep the gate in (0, 1); the authors' product is not squashed
    block = _block()
    gate = block.gate(block.norm1(torch.randn(4, N, D, dtype=torch.float64)))
    assert gate.min() < 0 and gate.max() > 1


def test_dropout_acts_only_in_training():
    block = _block(dropout=0.5)
    x = torch.randn(2, N, D, dtype=torch.float64)
    torch.testing.assert_close(block(x), block(x))
    block.train()
    assert (block(x) - block(x)).abs().max() > 1e-3


def test_backward_reaches_every_parameter():
    block = _block(shared_norm=False, drop_path=0.1).train()
    block(torch.randn(2, N, D, dtype=torch.float64)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_compile_fullgraph_matches_eager():
    block = NiNBlock(D, N, D_FFN).eval()
    x = torch.randn(2, N, D)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), block(x))


def test_device_dtype_and_reset_parameters():
    block = NiNBlock(D, N, D_FFN, dtype=torch.float64)
    assert {p.dtype for p in block.parameters()} == {torch.float64}
    assert all(p.is_meta for p in NiNBlock(D, N, device="meta").parameters())
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
    block.reset_parameters()
    assert torch.equal(block.norm1.weight, torch.ones(D, dtype=torch.float64))
    assert block.gate.mixer.mlp_tokens.fc1.weight.abs().sum() > 0 and block.mlp.fc2.weight.abs().sum() > 0
    assert "dim=16, seq_len=9, d_ffn=24, dropout=0.0, shared_norm=True" in repr(block)


@pytest.mark.parametrize("shape", [(2, N + 1, D), (2, N, D + 1), (N, D)])
def test_wrong_input_shape_raises(shape):
    with pytest.raises(ValueError, match=rf"shape \(B, seq_len={N}, dim={D}\), got \({shape[0]}"):
        NiNBlock(D, N)(torch.randn(shape))


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=0, seq_len=N), "dim must be a positive int, got 0"),
    (dict(dim=D, seq_len=N, d_ffn=-1), "d_ffn must be a positive int, got -1"),
    (dict(dim=D, seq_len=N, dropout=1.0), r"NiNBlock: dropout=1.0, expected a float in \[0, 1\)"),
    (dict(dim=D, seq_len=N, drop_path=-0.1), r"NiNBlock: drop_path=-0.1, expected a float in \[0, 1\)"),
])
def test_bad_constructor_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NiNBlock(**kwargs)


def test_non_int_sizes_raise_type_error():
    with pytest.raises(TypeError, match=r"NiNBlock: seq_len must be a positive int, got 2.5 \(float\)"):
        NiNBlock(D, 2.5)
