"""Fused GELU (tanh approximation): values and derivative against float64, autograd, dispatch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slimtrack.config import ModelConfig
from slimtrack.train.model import GPT
from slimtrack.native import fused_bias_gelu, fused_gelu
from slimtrack.native.gelu import gelu_reference


def exact(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GELU-tanh and its derivative in float64."""
    x = x.double()
    c = math.sqrt(2 / math.pi)
    t = torch.tanh(c * (x + 0.044715 * x**3))
    return 0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x**2)


def value_and_grad(fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    y.backward(grad)
    return y.detach(), x.grad


def test_values_and_derivative_match_float64_as_closely_as_torch():
    x = torch.cat([torch.linspace(-12, 12, 400_001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 80.0, -80.0])])
    y_true, d_true = exact(x)
    y, d = value_and_grad(fused_gelu, x, torch.ones_like(x))
    y_torch, d_torch = value_and_grad(gelu_reference, x, torch.ones_like(x))
    # Within 2x of torch's own float32 error, and small in absolute terms.
    assert (y.double() - y_true).abs().max() <= max(1e-6, 2 * (y_torch.double() - y_true).abs().max())
    assert (d.double() - d_true).abs().max() <= max(2e-6, 2 * (d_torch.double() - d_true).abs().max())


def test_backward_is_grad_times_derivative_for_any_shape_and_layout():
    x = torch.randn(6, 40, 8).transpose(0, 2)  # non-contiguous [8, 40, 6]
    grad = torch.randn(8, 40, 6)
    y, dx = value_and_grad(fused_gelu, x, grad)
    y_ref, dx_ref = value_and_grad(gelu_reference, x, grad)
    assert y.shape == x.shape and dx.shape == x.shape
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dx, dx_ref, atol=5e-6, rtol=1e-5)


def test_nan_stays_nan_and_empty_works():
    assert torch.isnan(fused_gelu(torch.tensor([float("nan"), 1.0])))[0]
    assert fused_gelu(torch.empty(0, 5)).shape == (0, 5)


def test_other_dtypes_run_torch_gelu_exactly():
    x = torch.randn(100, dtype=torch.float64)
    assert torch.equal(fused_gelu(x), F.gelu(x, approximate="tanh"))


def model_pair() -> tuple[GPT, GPT]:
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    torch.manual_seed(0)
    native = GPT(config, kernels="native")
    torch.manual_seed(0)
    plain = GPT(config, kernels="torch")
    return native, plain


def test_native_model_trains_like_the_torch_model_and_evaluates_identically():
    native, plain = model_pair()
    idx = torch.randint(0, 64, (3, 16))
    for model in (native, plain):
        model(idx).square().mean().backward()
    torch.testing.assert_close(native(idx), plain(idx), atol=1e-5, rtol=1e-5)
    for a, b in zip(native.parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)
    native.eval(), plain.eval()
    assert torch.equal(native(idx), plain(idx))  # eval (and export) use F.gelu


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_state_dicts_are_interchangeable(kernels):
    native, plain = model_pair()
    other = GPT(native.config, kernels=kernels)
    other.load_state_dict(plain.state_dict())
    assert native.state_dict().keys() == other.state_dict().keys()


def test_inplace_overwrites_an_activation_and_gives_the_same_gradients():
    x0 = torch.randn(4, 64, requires_grad=True)
    h = x0 * 2.0  # an activation (non-leaf) that nothing else saved
    y = fused_gelu(h, inplace=True)
    assert y.data_ptr() == h.data_ptr()
    y.backward(torch.ones_like(y))
    x1 = x0.detach().clone().requires_grad_()
    gelu_reference(x1 * 2.0).backward(torch.ones(4, 64))
    torch.testing.assert_close(x0.grad, x1.grad, atol=5e-6, rtol=1e-5)


def test_inplace_on_a_tensor_saved_for_backward_fails_loudly():
    x0 = torch.randn(8, requires_grad=True)
    h = x0.exp()  # exp saves its output for backward
    y = fused_gelu(h, inplace=True)
    with pytest.raises(RuntimeError, match="inplace"):
        y.sum().backward()


def test_inplace_on_a_view_returns_a_new_tensor():
    base = torch.randn(4, 64, requires_grad=True) * 1.0
    view = base.view(2, 128)  # in place on a view would make autograd copy the base in backward
    y = fused_gelu(view, inplace=True)
    assert y.data_ptr() != view.data_ptr()
    torch.testing.assert_close(y, gelu_reference(view), atol=1e-6, rtol=1e-6)


def linear_gelu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, fused: bool) -> torch.Tensor:
    """The MLP's fc + GELU: the fused bias path, or nn.Linear's addmm then torch's GELU."""
    if fused:
        return fused_bias_gelu(F.linear(x, w), b)
    return gelu_reference(F.linear(x, w, b))


def test_bias_gelu_matches_linear_then_gelu_in_values_and_all_three_gradients():
    g = torch.Generator().manual_seed(0)
    x0, w0, b0 = torch.randn(37, 24, generator=g), torch.randn(40, 24, generator=g) / 5, torch.randn(40, generator=g)
    grad = torch.randn(37, 40, generator=g)
    outs = []
    for fused in (True, False):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        y = linear_gelu(x, w, b, fused)
        y.backward(grad)
        outs.append((y.detach(), x.grad, w.grad, b.grad))
    for ours, torch_s in zip(*outs):
        torch.testing.assert_close(ours, torch_s, atol=2e-5, rtol=1e-5)


def test_bias_gelu_writes_over_the_product_and_its_bias_gradient_ignores_the_thread_count():
    import numba

    h0, grad = torch.randn(100, 16), torch.randn(100, 16)
    grads = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            h = h0.clone().requires_grad_() * 1.0  # a non-leaf product
            b = torch.zeros(16, requires_grad=True)
            y = fused_bias_gelu(h, b)
            assert y.data_ptr() == h.data_ptr()
            y.backward(grad)
            grads.append(b.grad)
    finally:
        numba.set_num_threads(before)
    assert torch.equal(grads[0], grads[1])  # a fixed split of the rows: the same rounding


@pytest.mark.parametrize("case", ["float64", "transposed", "view", "bias shape"])
def test_bias_gelu_inputs_it_cannot_fuse_run_torch_exactly(case):
    h, b = torch.randn(6, 8), torch.randn(8)
    if case == "float64":
        h, b = h.double(), b.double()
    elif case == "transposed":
        h = torch.randn(8, 6).t()  # [6, 8], not contiguous
    elif case == "view":
        h = torch.randn(48).view(6, 8)
    else:
        b = torch.randn(1)
    expected = gelu_reference(h + b)
    assert torch.equal(fused_bias_gelu(h, b), expected)
