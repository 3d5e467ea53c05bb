"""Fused cross-entropy (CPU numba kernel) against the plain torch reference.

Tolerances (float32 throughout; the kernel's exp is a polynomial with ~1e-7 relative
error and its sums are float32):
  loss, row_loss: atol 1e-5, rtol 1e-4
  gradient:       atol 1e-6, rtol 1e-4 (entries are O(1/N))
  accuracy:       exact (same argmax rule: first maximum wins)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slimtrack.native.cross_entropy import (
    cross_entropy_reference,
    fused_cross_entropy,
    warmup,
)

LOSS_TOL = dict(atol=1e-5, rtol=1e-4)
GRAD_TOL = dict(atol=1e-6, rtol=1e-4)


def _fused(logits: torch.Tensor, targets: torch.Tensor, upstream: float = 1.0):
    """Run the fused op on a copy; return (loss, accuracy, row_loss, grad)."""
    x = logits.clone().requires_grad_(True)
    loss, accuracy, row_loss = fused_cross_entropy(x, targets)
    (loss * upstream if upstream != 1.0 else loss).backward()
    return loss.detach(), accuracy, row_loss, x.grad


def _assert_matches(logits: torch.Tensor, targets: torch.Tensor) -> None:
    loss, acc, row_loss, grad = _fused(logits, targets)
    r_loss, r_acc, r_row, r_grad = cross_entropy_reference(logits, targets)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert acc.dtype == torch.float32 and acc.shape == ()
    assert row_loss.dtype == torch.float32 and row_loss.shape == targets.shape
    torch.testing.assert_close(loss, r_loss, **LOSS_TOL)
    torch.testing.assert_close(row_loss, r_row, **LOSS_TOL)
    torch.testing.assert_close(grad, r_grad, **GRAD_TOL)
    assert acc.item() == r_acc.item()


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warmup()  # compile (or load from numba's cache) once, outside the timed tests


@pytest.mark.parametrize("n,v", [(1, 1), (1, 7), (5, 37), (17, 256), (8, 1000), (3, 4099)])
def test_random_matches_reference(n: int, v: int) -> None:
    # V values avoid every power-of-two block size (SIMD width, unroll, row tasks).
    g = torch.Generator().manual_seed(n * 1000 + v)
    logits = torch.randn(n, v, generator=g) * 4
    targets = torch.randint(0, v, (n,), generator=g)
    if n > 2:
        targets[1] = -100  # partly ignored
    _assert_matches(logits, targets)


def test_large_vocab_float32_sums() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 50304, generator=g) * 2
    targets = torch.randint(0, 50304, (4,), generator=g)
    _assert_matches(logits, targets)


def test_extreme_logits() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.where(torch.rand(6, 53, generator=g) < 0.5, -1e4, 1e4)
    logits[0] = -1e4
    logits[0, 3] = 1e4
    targets = torch.tensor([3, 0, 10, 52, -100, 7])
    loss, acc, row_loss, grad = _fused(logits, targets)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and torch.isfinite(row_loss).all()
    _assert_matches(logits, targets)


def test_ties_pick_the_first_maximum() -> None:
    logits = torch.zeros(4, 20)
    logits[:, [3, 9, 15]] = 5.0  # three equal maxima per row
    targets = torch.tensor([3, 9, 15, 3])
    _, acc, _, _ = _fused(logits, targets)
    assert acc.item() == pytest.approx(0.5)  # rows 0 and 3 only: index 3 comes first
    _assert_matches(logits, targets)
    # all-equal row: argmax is 0
    _, acc, _, _ = _fused(torch.ones(1, 33), torch.tensor([0]))
    assert acc.item() == 1.0


def test_all_rows_ignored_gives_zero_not_nan() -> None:
    logits = torch.randn(5, 9)
    targets = torch.full((5,), -100)
    loss, acc, row_loss, grad = _fused(logits, targets)
    assert loss.item() == 0.0 and acc.item() == 0.0
    assert torch.count_nonzero(row_loss) == 0 and torch.count_nonzero(grad) == 0
    _assert_matches(logits, targets)


def test_partly_ignored_rows_and_custom_ignore_index() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 31, generator=g)
    targets = torch.randint(0, 31, (8,), generator=g)
    targets[[0, 5, 7]] = -100
    loss, acc, row_loss, grad = _fused(logits, targets)
    assert torch.count_nonzero(grad[[0, 5, 7]]) == 0 and torch.count_nonzero(row_loss[[0, 5, 7]]) == 0
    _assert_matches(logits, targets)
    # another ignore_index: 0 is then "ignore", -100 would be out of range
    t0 = targets.clamp(min=0)
    x = logits.clone().requires_grad_(True)
    loss0, _, _ = fused_cross_entropy(x, t0, ignore_index=0)
    ref = F.cross_entropy(logits, t0, ignore_index=0)
    torch.testing.assert_close(loss0.detach(), ref, **LOSS_TOL)


def test_accuracy_is_argmax_hit_rate_over_kept_rows() -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(64, 10, generator=g)
    targets = torch.randint(0, 10, (64,), generator=g)
    targets[logits.argmax(1) == targets] = -100  # ...then make half of the rest hits
    keep = targets != -100
    hits = torch.nonzero(keep).flatten()[::2]
    targets[hits] = logits[hits].argmax(1)
    expected = (logits.argmax(1) == targets)[keep].float().mean()
    _, acc, _, _ = _fused(logits, targets)
    assert acc.item() == pytest.approx(expected.item())


def test_gradient_with_upstream_scale_and_through_matmul() -> None:
    g = torch.Generator().manual_seed(5)
    h = torch.randn(12, 8, generator=g)
    w = torch.randn(8, 45, generator=g)
    targets = torch.randint(0, 45, (12,), generator=g)
    targets[4] = -100
    # fused: gradient flows through the in-place buffer into the matmul's backward
    h1, w1 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss, _, _ = fused_cross_entropy(h1 @ w1, targets)
    (loss * 3).backward()
    h2, w2 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    (F.cross_entropy(h2 @ w2, targets) * 3).backward()
    torch.testing.assert_close(w1.grad, w2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-5, rtol=1e-4)
    # directly on a leaf, with a non-1 upstream gradient
    logits = torch.randn(7, 19, generator=g)
    t = torch.randint(0, 19, (7,), generator=g)
    _, _, _, grad = _fused(logits, t, upstream=-0.25)
    torch.testing.assert_close(grad, -0.25 * cross_entropy_reference(logits, t)[3], **GRAD_TOL)


def test_gradient_is_written_in_place_and_no_grad_leaves_logits() -> None:
    logits = torch.randn(3, 11)
    targets = torch.tensor([1, 2, 3])
    x = logits.clone().requires_grad_(True)
    fused_cross_entropy(x, targets)
    # the caller's logits now hold (softmax - onehot) / 3 (documented aliasing)
    torch.testing.assert_close(x.detach(), cross_entropy_reference(logits, targets)[3], **GRAD_TOL)
    y = logits.clone()
    with torch.no_grad():
        loss, _, _ = fused_cross_entropy(y.requires_grad_(True), targets)
    assert torch.equal(y.detach(), logits)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets), **LOSS_TOL)
    z = logits.clone()  # no requires_grad: a forward-only call, logits untouched
    fused_cross_entropy(z, targets)
    assert torch.equal(z, logits)


def test_misuse_fails_loudly() -> None:
    x = torch.randn(4, 6, requires_grad=True)
    loss, _, _ = fused_cross_entropy(x.exp(), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()  # exp saved its output, which now holds the gradient
    y = torch.randn(4, 6, requires_grad=True)
    loss, _, _ = fused_cross_entropy(y * 1, torch.tensor([0, 1, 2, 3]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        loss.backward()


def test_nan_logits_give_nan_loss() -> None:
    logits = torch.randn(2, 9)
    logits[1, 4] = math.nan
    loss, _, row_loss, _ = _fused(logits, torch.tensor([0, 0]))
    assert math.isfinite(row_loss[0].item()) and math.isnan(row_loss[1].item())
    assert math.isnan(loss.item())


def test_empty_batch() -> None:
    loss, acc, row_loss, grad = _fused(torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64))
    assert loss.item() == 0.0 and acc.item() == 0.0 and row_loss.shape == (0,)


@pytest.mark.parametrize(
    "logits,targets,exc,match",
    [
        (torch.randn(5), torch.zeros(5, dtype=torch.int64), ValueError, r"\[N, V\]"),
        (torch.randn(2, 3, 4), torch.zeros(6, dtype=torch.int64), ValueError, r"\[N, V\]"),
        (torch.randn(4, 3), torch.zeros(5, dtype=torch.int64), ValueError, "targets must be"),
        (torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.int64), ValueError, "targets must be"),
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.int32), TypeError, "int64"),
        (torch.randn(4, 3), torch.zeros(4), TypeError, "int64"),
        (torch.randn(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.int64), TypeError,
         "float32"),
        (torch.randn(4, 3).bfloat16(), torch.zeros(4, dtype=torch.int64), TypeError, "float32"),
        (torch.randn(4, 0), torch.zeros(4, dtype=torch.int64), ValueError, "V == 0"),
        (torch.randn(4, 3), torch.tensor([0, 1, 3, 0]), ValueError, "out of range"),
        (torch.randn(4, 3), torch.tensor([0, -1, 2, 0]), ValueError, "out of range"),
        (np.zeros((4, 3), np.float32), torch.zeros(4, dtype=torch.int64), TypeError, "torch"),
    ],
)
def test_bad_inputs_raise_clear_errors(logits, targets, exc, match) -> None:
    with pytest.raises(exc, match=match):
        fused_cross_entropy(logits, targets)
