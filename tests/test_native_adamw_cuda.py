"""The CUDA AdamW kernel: simulator run, PTX for sm_80/sm_90, and real-GPU checks.

(a) and (b) need no GPU. (a) runs the kernel under NUMBA_ENABLE_CUDASIM=1 in a
subprocess (the variable must be set before numba is imported) on numpy arrays'
addresses, against the torch reference; tolerance 1e-6 absolute + 1e-5 relative
(the kernel multiplies by 1/sqrt(1 - beta2**t) where the reference divides).
(c) compares FusedAdamW on CUDA parameters with torch.optim.AdamW over 20 steps;
tolerance 1e-5 absolute + 1e-4 relative, as the GPU contracts multiply-adds to FMAs
differently from torch's kernels.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch

SIM_SCRIPT = textwrap.dedent("""
    import os
    assert os.environ["NUMBA_ENABLE_CUDASIM"] == "1"
    import numpy as np
    import torch
    from numba import cuda
    from slimtrack.native import adamw_cuda
    from slimtrack.native.adamw import adamw_reference_step, adamw_scalars
    from slimtrack.native.adamw_cpu import chunk_table

    rng = np.random.default_rng(0)
    numels = (37, 5, 16)
    # per tensor: lr, weight decay, step (differing, to catch a wrong row index)
    settings = [(1e-2, 0.1, 3), (5e-3, 0.0, 1), (2e-2, 0.2, 7)]
    tensors = [[rng.standard_normal(n).astype(np.float32) for _ in range(3)] for n in numels]
    for t in tensors:  # param, exp_avg, exp_avg_sq (>= 0), grad
        t[2] = np.abs(t[2]) * np.float32(0.01)
        t.append(rng.standard_normal(t[0].size).astype(np.float32))
    expected = [[torch.from_numpy(a.copy()) for a in t] for t in tensors]
    for (p, m, v, g), (lr, wd, step) in zip(expected, settings):
        adamw_reference_step(p, g, m, v, step=step, lr=lr, beta1=0.9, beta2=0.95, eps=1e-8,
                             weight_decay=wd)

    ptrs = np.array([[a.ctypes.data for a in t] for t in tensors], dtype=np.int64)
    scalars = np.array([adamw_scalars(lr, 0.9, 0.95, 1e-8, wd, step)
                        for lr, wd, step in settings], dtype=np.float32)
    chunks = chunk_table(numels, 8)  # 5 + 1 + 2 chunks over 3 blocks: the grid-stride loop
    adamw_cuda.launch(cuda.to_device(ptrs), cuda.to_device(scalars), cuda.to_device(chunks),
                      blocks=3, threads=4)
    worst = 0.0
    for t, e in zip(tensors, expected):
        for got, want in zip(t[:3], e[:3]):
            err = np.abs(got - want.numpy()) - 1e-5 * np.abs(want.numpy())
            worst = max(worst, float(err.max()))
        assert np.array_equal(t[3], e[3].numpy()), "grad was written"
    print(f"SIM_WORST_EXCESS={worst:.3e}")
""")


def test_kernel_under_simulator_matches_reference():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-c", SIM_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("SIM_WORST_EXCESS="))
    assert float(line.split("=")[1]) <= 1e-6, done.stdout


def test_importing_native_does_not_touch_cuda():
    """slimtrack.native must import (and step CPU params) on machines without CUDA."""
    script = textwrap.dedent("""
        import sys, torch
        from slimtrack.native.adamw import FusedAdamW
        p = torch.nn.Parameter(torch.zeros(3)); p.grad = torch.ones(3)
        FusedAdamW([p]).step()
        print("CUDA_MODULES", "slimtrack.native.adamw_cuda" in sys.modules,
              "numba.cuda" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CUDA_MODULES False False" in done.stdout


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)])
def test_kernel_compiles_to_ptx(cc):
    pytest.importorskip("numba.cuda")
    from numba import cuda

    from slimtrack.native import adamw_cuda

    # As launched: C-contiguous pointer and chunk tables, a strided float32 view of scalars.
    sig = "void(int64[:, ::1], float32[:, :], int64[:, ::1])"
    ptx, _ = cuda.compile_ptx(adamw_cuda.adamw_multi_tensor_cuda.py_func, sig, cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    assert "ld.global.f32" in ptx and "st.global.f32" in ptx  # addrspace(1) accesses
    assert "sqrt.rn.f32" in ptx and "div.rn.f32" in ptx  # IEEE float32, no fast-math
    assert ".f64" not in ptx and "%fd" not in ptx  # no double instructions or registers


def _cuda_model_and_opts(seed: int = 0):
    from slimtrack.native.adamw import FusedAdamW

    models = []
    for _ in range(2):
        torch.manual_seed(seed)
        models.append(torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(),
                                          torch.nn.Linear(256, 64)).cuda())
    groups = [[{"params": [p for p in m.parameters() if p.dim() >= 2], "weight_decay": 0.1},
               {"params": [p for p in m.parameters() if p.dim() < 2], "weight_decay": 0.0}]
              for m in models]
    return models, FusedAdamW(groups[0], lr=1e-2), torch.optim.AdamW(groups[1], lr=1e-2)


def _train(model, opt, steps):
    for step in steps:
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(32, 64, generator=gen).cuda(), torch.randn(32, 64, generator=gen).cuda()
        for group in opt.param_groups:
            group["lr"] = 1e-2 * (1 - step / 40)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_adamw_on_cuda_matches_torch():
    (fused_model, torch_model), fused_opt, torch_opt = _cuda_model_and_opts()
    _train(fused_model, fused_opt, range(20))
    _train(torch_model, torch_opt, range(20))
    torch.cuda.synchronize()
    for pf, pt in zip(fused_model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(pf, pt, rtol=1e-4, atol=1e-5)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fused_opt.state[pf][key], torch_opt.state[pt][key],
                                       rtol=1e-4, atol=1e-5)
        assert float(fused_opt.state[pf]["step"]) == 20.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_adamw_on_cuda_never_syncs_and_round_trips():
    """No host sync in steady-state steps (torch's sync debug mode raises on one), and a
    state dict round trip mid-run continues bit-exactly."""
    (model, other), opt, _ = _cuda_model_and_opts()
    _train(model, opt, range(2))
    torch.cuda.set_sync_debug_mode("error")
    try:
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        for _ in range(3):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    _train(model, opt, range(5, 8))
    saved = copy.deepcopy(opt.state_dict())  # load_state_dict would share the tensors
    other.load_state_dict(model.state_dict())
    from slimtrack.native.adamw import FusedAdamW

    resumed = FusedAdamW([{"params": [p for p in other.parameters() if p.dim() >= 2]},
                          {"params": [p for p in other.parameters() if p.dim() < 2]}], lr=1e-2)
    resumed.load_state_dict(saved)
    _train(model, opt, range(8, 12))
    _train(other, resumed, range(8, 12))
    for pa, pb in zip(model.parameters(), other.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_adamw_cuda_fast_launch_matches_numba_dispatcher():
    """The direct launch is in use on a real GPU and steps bit-identically to numba's
    dispatcher (which gets the strided scalars view as a DeviceNDArray)."""
    from slimtrack.native import adamw_cuda, cuda_launch

    (model_a, model_b), _, _ = _cuda_model_and_opts()
    from slimtrack.native.adamw import FusedAdamW

    try:
        for fast, model in ((True, model_a), (False, model_b)):
            cuda_launch.FAST_LAUNCH = fast
            _train(model, FusedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1), range(5))
            if fast:
                assert adamw_cuda._kernel.fast, "fell back to numba's dispatcher on a real GPU"
    finally:
        cuda_launch.FAST_LAUNCH = True
    torch.cuda.synchronize()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
