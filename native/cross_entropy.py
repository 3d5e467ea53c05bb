"""Fused softmax cross-entropy + accuracy: public API, autograd glue, torch reference.

    loss, accuracy, row_loss = fused_cross_entropy(logits, targets)   # logits: [N, V]
    loss.backward()                                                  # dlogits, no new [N, V]

One kernel pass per row computes max, argmax, log-sum-exp, the row's loss, the
correct flag and the gradient ``(softmax - onehot) / n_valid``, which it writes
**over the logits buffer** (llm.c's fused classifier, Liger's cross-entropy): no
log-probability or probability tensor is ever materialised.

CPU tensors run the numba kernel in cross_entropy_cpu.py; CUDA tensors the one in
cross_entropy_cuda.py, imported only when the first CUDA tensor arrives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cross_entropy_cpu

_CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_inputs(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Clear one-line errors for the wrong shapes, dtypes or devices."""
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError("fused_cross_entropy: logits and targets must be torch tensors")
    if logits.dim() != 2:
        raise ValueError(f"fused_cross_entropy: logits must be [N, V], got shape "
                         f"{tuple(logits.shape)} (flatten batch and time first)")
    if logits.shape[1] == 0:
        raise ValueError("fused_cross_entropy: logits have V == 0 classes")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"fused_cross_entropy: targets must be [N] = [{logits.shape[0]}], "
                         f"got shape {tuple(targets.shape)}")
    if targets.dtype != torch.int64:
        raise TypeError(f"fused_cross_entropy: targets must be int64, got {targets.dtype}")
    if targets.device != logits.device:
        raise ValueError(f"fused_cross_entropy: logits on {logits.device} but targets on "
                         f"{targets.device}")
    if logits.device.type == "cpu":
        if logits.dtype != torch.float32:
            raise TypeError(f"fused_cross_entropy: CPU logits must be float32, got "
                            f"{logits.dtype}")
    elif logits.device.type == "cuda":
        if logits.dtype not in _CUDA_DTYPES:
            raise TypeError(f"fused_cross_entropy: CUDA logits must be float32, bfloat16 or "
                            f"float16, got {logits.dtype}")
    else:
        raise ValueError(f"fused_cross_entropy: unsupported device {logits.device}")


def _run_kernel(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                write_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dispatch on device. Returns (loss, accuracy, row_loss, grad buffer).

    The grad buffer is ``logits`` itself when it was contiguous, else a contiguous copy;
    with write_grad it holds the gradient for mean loss, otherwise it is untouched.
    """
    x = logits.detach()
    if not x.is_contiguous():
        x = x.contiguous()  # the gradient then lands in this copy, not in the caller's tensor
    n_rows = x.shape[0]
    if x.is_cuda:
        out, count = _cuda_forward(x, targets.contiguous(), ignore_index, write_grad)
        means = out.sum(dim=1) / count.clamp(min=1)  # [2] f32, stays on the device: no sync
        return means[0], means[1], out[0], x

    t = targets.detach().contiguous().numpy()
    bad = (t != ignore_index) & ((t < 0) | (t >= x.shape[1]))
    if bad.any():
        raise ValueError(f"fused_cross_entropy: target {int(t[bad][0])} out of range for "
                         f"V={x.shape[1]} (and not ignore_index={ignore_index})")
    row_loss = torch.empty(n_rows, dtype=torch.float32)
    correct = torch.empty(n_rows, dtype=torch.float32)
    n_valid = cross_entropy_cpu.cross_entropy_fwd_bwd(
        row_loss.numpy(), correct.numpy(), x.numpy(), t, int(ignore_index), bool(write_grad))
    denom = float(max(n_valid, 1))
    loss = (row_loss.sum(dtype=torch.float64) / denom).to(torch.float32)
    accuracy = (correct.sum(dtype=torch.float64) / denom).to(torch.float32)
    return loss, accuracy, row_loss, x


# ---- CUDA glue: torch tensors straight into the kernels, on torch's current stream ----

_KINDS = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _cuda_launch(t: torch.Tensor, launch) -> None:
    """Run ``launch(stream)`` in t's device context on torch's current stream."""
    from numba import cuda

    from .cuda_launch import torch_stream

    with cuda.gpus[t.device.index or 0]:
        launch(torch_stream(t.device))


def _cuda_forward(x: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                  write_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [2, N]: row losses and correct flags, count: non-ignored rows), on the device."""
    from . import cross_entropy_cuda as kernels  # lazy: no CUDA import on CPU-only machines

    out = torch.empty(2, x.shape[0], dtype=torch.float32, device=x.device)
    count = (targets != ignore_index).sum().reshape(1)
    _cuda_launch(x, lambda stream: kernels.launch_cross_entropy(
        out, x, targets, count, ignore_index, write_grad, _KINDS[x.dtype], stream))
    return out, count


def _cuda_scale(grad: torch.Tensor, grad_output: torch.Tensor) -> None:
    from . import cross_entropy_cuda as kernels

    g = grad_output.detach().to(device=grad.device, dtype=torch.float32).reshape(1)
    _cuda_launch(grad, lambda stream: kernels.launch_scale(grad, g, _KINDS[grad.dtype], stream))


class _FusedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy whose gradient was already written into the logits buffer."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        loss, accuracy, row_loss, grad = _run_kernel(logits, targets, ignore_index, True)
        if grad.data_ptr() == logits.data_ptr():
            # The logits now hold the gradient. Bumping the version counter makes any
            # other autograd node that saved these logits (e.g. logits = h.exp())
            # fail loudly in backward instead of silently reading the gradient.
            torch.autograd.graph.increment_version(logits)
        ctx.grad = grad  # a plain attribute, so backward can hand the buffer over
        ctx.mark_non_differentiable(accuracy, row_loss)
        return loss, accuracy, row_loss

    @staticmethod
    def backward(ctx, grad_loss, _grad_accuracy, _grad_row_loss):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("fused_cross_entropy: backward can run once per call (the "
                               "gradient lives in the logits buffer and is scaled in place)")
        ctx.grad = None  # drop our reference: autograd may adopt the buffer as .grad
        if grad.is_cuda:
            _cuda_scale(grad, grad_loss)  # the kernel skips g == 1 on the device: no sync
        else:
            g = float(grad_loss)  # a CPU scalar: no device sync involved
            if g != 1.0:
                grad.mul_(g)
        return grad, None, None


def fused_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean softmax cross-entropy, accuracy and per-row loss in one fused kernel pass.

    Args:
        logits: ``[N, V]``; float32 on CPU, float32/bfloat16/float16 on CUDA (math in
            float32).
        targets: ``[N]`` int64 class indices in ``[0, V)``, or ``ignore_index``.
        ignore_index: rows with this target count nowhere: zero loss, zero gradient,
            not in the accuracy.

    Returns:
        ``(loss, accuracy, row_loss)``: ``loss`` a differentiable 0-dim float32 tensor,
        the mean over non-ignored rows (0, not NaN, when every row is ignored);
        ``accuracy`` a detached 0-dim float32 tensor, the fraction of non-ignored rows
        whose argmax (first maximum wins, as ``torch.argmax``) is the target;
        ``row_loss`` ``[N]`` float32, detached, 0 on ignored rows. Nothing is synced:
        call ``.item()`` when you need a number.

    Aliasing (read this): when a gradient is needed (grad mode on and
    ``logits.requires_grad``), the kernel OVERWRITES ``logits`` with
    ``(softmax - onehot) / n_valid`` during this call, and ``loss.backward()`` hands
    that same buffer on as the gradient (scaled in place by the upstream gradient).
    After the call the caller's logits are gone. That is the point, since the
    trainer's logits are a temporary nobody reads again, but never pass logits you
    still need, and don't call backward twice. Logits that another autograd node
    saved for its own backward (``logits = h.exp()``) make backward raise instead of
    computing garbage. Non-contiguous logits are copied first (and then survive).
    Without a gradient (``torch.no_grad()``, eval) the logits are left unchanged.

    On CPU a target outside ``[0, V)`` raises ValueError; on CUDA (where checking
    would need a host sync) that row's loss is NaN instead.
    """
    _check_inputs(logits, targets)
    ignore_index = int(ignore_index)
    if torch.is_grad_enabled() and logits.requires_grad:
        return _FusedCrossEntropy.apply(logits, targets, ignore_index)
    loss, accuracy, row_loss, _ = _run_kernel(logits, targets, ignore_index, False)
    return loss, accuracy, row_loss


def cross_entropy_reference(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain torch: (loss, accuracy, row_loss, grad) via F.cross_entropy, autograd, argmax.

    Computed in float32 on a copy (the input is not modified); same conventions as
    fused_cross_entropy (mean over non-ignored rows, 0 when all are ignored).
    """
    x = logits.detach().float().clone().requires_grad_(True)
    valid = targets != ignore_index
    n_valid = valid.sum().clamp(min=1).to(torch.float32)
    with torch.enable_grad():
        row_loss = F.cross_entropy(x, targets, ignore_index=ignore_index, reduction="none")
        loss = row_loss.sum() / n_valid
        loss.backward()
    correct = (x.detach().argmax(dim=-1) == targets) & valid
    accuracy = correct.sum().to(torch.float32) / n_valid
    return loss.detach(), accuracy, row_loss.detach(), x.grad


def warmup() -> None:
    """Compile the CPU kernel now on tiny inputs (cache=True keeps it for later processes)."""
    logits = torch.zeros(2, 3)
    targets = torch.tensor([1, -100])
    for write_grad in (True, False):
        _run_kernel(logits, targets, -100, write_grad)
