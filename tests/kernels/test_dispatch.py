"""Backend resolution: 'auto' by device, the ATTNZOO_BACKEND default, set_backend, and clear refusals."""

import pytest
import torch

from attnzoo.kernels import _dispatch
from attnzoo.kernels._dispatch import reference_vjp, resolve_backend, set_backend


@pytest.fixture(autouse=True)
def _restore_default():
    yield
    _dispatch._default_backend = None


def test_auto_picks_torch_on_cpu():
    assert resolve_backend("auto", torch.zeros(1)) == "torch"
    assert resolve_backend(None, torch.zeros(1)) == "torch"


def test_environment_and_set_backend(monkeypatch):
    monkeypatch.setenv("ATTNZOO_BACKEND", "torch")
    assert _dispatch.get_backend() == "torch"
    monkeypatch.setenv("ATTNZOO_BACKEND", "cuda")
    with pytest.raises(ValueError, match="ATTNZOO_BACKEND='cuda'"):
        _dispatch.get_backend()
    set_backend("auto")  # set_backend wins over the environment
    assert _dispatch.get_backend() == "auto"
    set_backend("torch")  # and an op called with its default backend='auto' follows it
    assert resolve_backend("auto", torch.zeros(1)) == "torch"
    with pytest.raises(ValueError, match="backend='fast' is not one of"):
        set_backend("fast")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", torch.zeros(1)) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        resolve_backend("triton", torch.zeros(1))


def test_reference_vjp_inside_a_custom_op():
    @torch.library.custom_op("aztest::square_at", mutates_args=())
    def square_at(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return reference_vjp(lambda a, i: a[i] ** 2, [x, index], torch.ones(index.shape, dtype=x.dtype))[0]

    x = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(square_at(x, torch.tensor([0, 2, 2])), torch.tensor([2.0, 0.0, 12.0]))
