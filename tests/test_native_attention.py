"""Causal attention with the numba softmax: values and gradients against float64 and SDPA,
the fallback, and the ways it must fail loudly."""

from __future__ import annotations

import math

import pytest
import torch

from slimtrack.native import attention, causal_attention
from slimtrack.native.attention import attention_reference, uses_fused_kernel


def exact(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """Causal attention written out in float64: the ground truth both paths approximate."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (t.double().view(B, T, n_head, -1).transpose(1, 2) for t in qkv.split(C, dim=2))
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // n_head)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)


def value_and_grad(fn, qkv: torch.Tensor, n_head: int, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    qkv = qkv.detach().clone().requires_grad_()
    y = fn(qkv, n_head)
    y.backward(grad)
    return y.detach(), qkv.grad


# (B, T, H, D): the small preset's layer, odd and tiny sequences, one head, T = 1.
SHAPES = [(16, 128, 4, 64), (3, 33, 3, 16), (2, 5, 2, 4), (1, 1, 1, 8), (2, 70, 1, 32)]


@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_gradients_match_float64_as_closely_as_sdpa(shape):
    B, T, H, D = shape
    g = torch.Generator().manual_seed(T)
    qkv, grad = torch.randn(B, T, 3 * H * D, generator=g) * 2, torch.randn(B, T, H * D, generator=g)
    assert uses_fused_kernel(qkv, H)
    y, dqkv = value_and_grad(causal_attention, qkv, H, grad)
    y_sdpa, dqkv_sdpa = value_and_grad(attention_reference, qkv, H, grad)
    x64 = qkv.double().requires_grad_()
    y64 = exact(x64, H)
    y64.backward(grad.double())
    for ours, sdpa, truth in ((y, y_sdpa, y64.detach()), (dqkv, dqkv_sdpa, x64.grad)):
        assert ours.shape == truth.shape
        # Within 4x of SDPA's own float32 error, and small in absolute terms.
        assert (ours.double() - truth).abs().max() <= max(2e-6, 4 * (sdpa.double() - truth).abs().max())


def test_each_query_sees_only_earlier_positions():
    qkv = torch.randn(2, 12, 3 * 8)
    later = qkv.clone()
    later[:, 7:] = torch.randn(2, 5, 24)  # change every position from 7 on
    torch.testing.assert_close(causal_attention(qkv, 2)[:, :7], causal_attention(later, 2)[:, :7])
    assert not torch.allclose(causal_attention(qkv, 2)[:, 7:], causal_attention(later, 2)[:, 7:])


def test_backward_can_run_twice_with_retain_graph_and_twice_backward_fails_loudly():
    qkv = torch.randn(2, 9, 12, requires_grad=True)
    y = causal_attention(qkv, 2)
    (first,) = torch.autograd.grad(y, qkv, torch.ones_like(y), retain_graph=True)
    grad = torch.ones_like(y).requires_grad_()  # a second-order graph would differentiate through it
    (second,) = torch.autograd.grad(y, qkv, grad, create_graph=True)
    assert torch.equal(first, second.detach())  # the saved weights are not consumed by the first pass
    with pytest.raises(RuntimeError, match="once_differentiable"):
        second.sum().backward()


def test_nan_in_a_key_poisons_only_the_queries_that_see_it():
    qkv = torch.randn(1, 6, 3 * 4)
    qkv[0, 3, 4] = float("nan")  # key of position 3 (k is the second third of qkv)
    y = causal_attention(qkv, 1)
    assert torch.isfinite(y[0, :3]).all() and torch.isnan(y[0, 3:]).all()


def test_too_long_for_the_memory_cap_and_other_devices_and_dtypes_run_sdpa(monkeypatch):
    qkv = torch.randn(2, 16, 3 * 8)
    monkeypatch.setattr(attention, "MAX_SCORES_BYTES", 2 * 2 * 16 * 16 * 4 - 1)  # one float short
    assert not uses_fused_kernel(qkv, 2)
    assert torch.equal(causal_attention(qkv, 2), attention_reference(qkv, 2))
    monkeypatch.undo()
    assert uses_fused_kernel(qkv, 2) and not uses_fused_kernel(qkv.double(), 2)
    assert torch.equal(causal_attention(qkv.double(), 2), attention_reference(qkv.double(), 2))


@pytest.mark.parametrize("shape, n_head", [((4, 24), 2), ((2, 4, 25), 2), ((2, 4, 24), 5)])
def test_bad_shapes_raise_a_clear_error(shape, n_head):
    with pytest.raises(ValueError, match=r"causal_attention: qkv must be \[B, T, 3C\]"):
        causal_attention(torch.randn(*shape), n_head)
