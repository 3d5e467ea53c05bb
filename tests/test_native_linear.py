"""onednn_linear: F.linear's values and gradients, products on oneDNN, fallbacks exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimtrack.native import fused_bias_gelu, onednn_linear
from slimtrack.config import ModelConfig
from slimtrack.native import linear
from slimtrack.native.linear import onednn_available, uses_onednn
from slimtrack.train.model import GPT

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN")


def value_and_grads(fn, x, weight, bias, grad):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    y = fn(*leaves)
    y.backward(grad)
    return [y.detach()] + [t.grad if t is not None else None for t in leaves]


@needs_onednn
@pytest.mark.parametrize("shape", [(37, 24), (3, 11, 24)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("n_out", [40, 10])  # widening, narrowing: the weight gradient's two paths
def test_values_and_all_gradients_match_float64_as_closely_as_f_linear(shape, with_bias, n_out):
    torch.manual_seed(0)
    x, weight = torch.randn(*shape), torch.randn(n_out, 24)
    bias = torch.randn(n_out) if with_bias else None
    grad = torch.randn(*shape[:-1], n_out)
    assert uses_onednn(x, weight)
    ours = value_and_grads(onednn_linear, x, weight, bias, grad)
    torchs = value_and_grads(F.linear, x, weight, bias, grad)
    exact = value_and_grads(F.linear, x.double(), weight.double(), None if bias is None else bias.double(),
                            grad.double())
    for mine, theirs, true in zip(ours, torchs, exact):
        if true is None:
            assert mine is None
            continue
        assert mine.shape == true.shape and mine.dtype == torch.float32
        # Summation order differs from MKL's; the error stays within a few times torch's own.
        assert (mine.double() - true).abs().max() <= 4 * (theirs.double() - true).abs().max() + 1e-5


@needs_onednn
def test_a_2d_output_is_a_tensor_of_its_own_so_bias_gelu_fuses_over_it():
    x, weight, bias = torch.randn(16, 8), torch.randn(32, 8, requires_grad=True), torch.randn(32, requires_grad=True)
    h = onednn_linear(x, weight)
    assert not h._is_view()  # a view would send fused_bias_gelu to its torch fallback
    y = fused_bias_gelu(h, bias)
    assert type(y.grad_fn).__name__ == "_FusedBiasGELUInplaceBackward"
    torch.testing.assert_close(y.detach(), F.gelu(F.linear(x, weight.detach(), bias.detach()), approximate="tanh"),
                               atol=1e-5, rtol=1e-5)


@needs_onednn
def test_gradients_are_skipped_for_inputs_that_do_not_need_them():
    x = torch.randn(5, 4, requires_grad=True)
    weight, bias = torch.randn(3, 4), torch.randn(3)  # frozen
    onednn_linear(x, weight, bias).sum().backward()
    assert x.grad is not None and weight.grad is None and bias.grad is None
    torch.testing.assert_close(x.grad, weight.sum(0).expand(5, 4))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_run_f_linear_exactly(dtype):
    x, weight, bias = torch.randn(6, 4, dtype=dtype), torch.randn(3, 4, dtype=dtype), torch.randn(3, dtype=dtype)
    assert not uses_onednn(x, weight)
    assert torch.equal(onednn_linear(x, weight, bias), F.linear(x, weight, bias))


@pytest.mark.parametrize("shape", [(4,), (0, 4), (2, 0, 4)])
def test_1d_and_empty_inputs_run_f_linear(shape):
    x, weight, bias = torch.randn(*shape, requires_grad=True), torch.randn(3, 4, requires_grad=True), torch.randn(3)
    assert not uses_onednn(x, weight)
    y = onednn_linear(x, weight, bias)
    assert torch.equal(y, F.linear(x, weight, bias))
    y.sum().backward()  # oneDNN itself rejects empty products
    assert weight.grad.shape == weight.shape


def test_the_config_switch_keeps_f_linear(monkeypatch):
    """runtime.onednn_linear=False (GPT's onednn_linear): a native model in training never
    reaches oneDNN's products; True: it does wherever this torch has them."""
    products = []
    real_product = linear._product
    monkeypatch.setattr(linear, "_product", lambda *args: products.append(1) or real_product(*args))

    def reaches_onednn(enabled: bool) -> str:
        products.clear()
        config = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64)
        model = GPT(config, kernels="native", onednn_linear=enabled).train()
        model(torch.randint(0, 64, (2, 8))).sum().backward()
        return str(bool(products))

    outputs = [reaches_onednn(enabled) for enabled in (False, True)]
    assert outputs == ["False", str(onednn_available())]
