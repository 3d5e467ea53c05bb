"""Fused cross-entropy CUDA kernels: simulator, PTX, and (with a GPU) real launches.

(a) the kernels run under numba's CUDA simulator in a subprocess (the
    NUMBA_ENABLE_CUDASIM flag must be set before numba is imported, and must not
    leak into this process);
(b) every kernel compiles to PTX for sm_80 and sm_90 (no GPU needed);
(c) @pytest.mark.gpu: real launches on torch CUDA tensors (skipped without a GPU).

Tolerances vs the float32 torch reference: loss/row_loss atol 1e-5 rtol 1e-4 for
float32 storage; gradients atol 1e-6 rtol 1e-4 (float32), and one storage rounding
step for half types (bf16: 2**-8 relative, fp16: 2**-11 relative, plus atol).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

SIM_SCRIPT = textwrap.dedent(r"""
    import json, os
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    import numpy as np, torch, torch.nn.functional as F
    from numba import cuda
    from slimtrack.native import cross_entropy_cuda as K

    def as_f32(a, kind):  # storage array -> float32 values
        if kind == "bfloat16":
            return torch.from_numpy(a).view(torch.bfloat16).float().numpy()
        return a.astype(np.float32)

    def reference(x, tg):
        xt = torch.tensor(x, requires_grad=True)
        t = torch.tensor(tg)
        rl = F.cross_entropy(xt, t, reduction="none", ignore_index=-100)
        (rl.sum() / max(int((tg != -100).sum()), 1)).backward()
        correct = ((xt.argmax(1) == t) & (t != -100)).float()
        return rl.detach().numpy(), correct.numpy(), xt.grad.numpy()

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 37)) * 3).astype(np.float32)  # V=37: not a multiple of 16
    x[0, 30] = x[0, 6] = 20.0         # tie across threads: index 6 must win
    x[1, 5] = x[1, 21] = 20.0         # tie within one thread's columns (5, 21)
    x[2, 0] = np.nan                  # ignored row: zero gradient even so
    wide = (rng.standard_normal((2, 150)) * 3).astype(np.float32)  # 3 loop trips a thread
    wide[1, 149] = 30.0
    cases = {"small": (x, np.array([6, 21, -100], np.int64)),
             "wide": (wide, np.array([17, 149], np.int64))}
    out = {}
    for case, (x, tg) in cases.items():
        N, V = x.shape
        for kind in ("float32", "float16", "bfloat16"):
            store = {"float32": lambda: x.copy(), "float16": lambda: x.astype(np.float16),
                     "bfloat16": lambda: torch.tensor(x).bfloat16().view(torch.int16).numpy()}[kind]()
            r_loss, r_correct, r_grad = reference(np.nan_to_num(as_f32(store, kind)), tg)
            d_x = cuda.to_device(store)
            d_out = cuda.device_array((2, N), np.float32)  # row losses, correct flags
            count = cuda.to_device(np.array([(tg != -100).sum()], np.int64))
            K.launch_cross_entropy(d_out, d_x, cuda.to_device(tg), count, -100, True, kind, block=16)
            d_loss, d_correct = d_out.copy_to_host()
            grad = as_f32(d_x.copy_to_host(), kind)
            K.launch_scale(d_x, cuda.to_device(np.array([-3.0], np.float32)), kind, block=16)
            grad3 = as_f32(d_x.copy_to_host(), kind)
            out[case + "/" + kind] = dict(
                loss_err=float(np.abs(d_loss - r_loss).max()),
                correct=d_correct.tolist(), ref_correct=r_correct.tolist(),
                grad_err=float(np.abs(grad - r_grad).max()),
                scale_err=float(np.abs(grad3 + 3 * grad).max()),
                ignored_rows_zero=bool((grad[tg == -100] == 0).all()))

    # bf16 store rounds to nearest even, exactly like torch (ties, NaN, inf, -0).
    @cuda.jit
    def store_bf16(out, vals):
        i = cuda.grid(1)
        if i < vals.shape[0]:
            K._store_bf16(out, 0, i, vals[i])
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7FFFFF,
                     0xFF800000, 0x80000000, 0x00008000], np.uint32)
    vals = np.concatenate([bits.view(np.float32),
                           rng.standard_normal(200).astype(np.float32),
                           np.array([np.nan, np.inf], np.float32)])
    d_out = cuda.device_array((1, vals.size), np.int16)
    store_bf16[1, 256](d_out, cuda.to_device(vals))
    ours = d_out.copy_to_host()[0]
    theirs = torch.tensor(vals).bfloat16().view(torch.int16).numpy()
    finite = ~np.isnan(vals)  # any NaN pattern will do for NaN
    back = torch.from_numpy(ours.copy()).view(torch.bfloat16).float().numpy()
    out["bf16_rne_exact"] = bool((ours[finite] == theirs[finite]).all()
                                 and np.isnan(back[~finite]).all())

    # an out-of-range target gives a NaN loss (the GPU path cannot raise without a sync)
    d_out = cuda.device_array((2, 1), np.float32)
    K.launch_cross_entropy(d_out, cuda.to_device(x[:1].copy()),
                           cuda.to_device(np.array([V], np.int64)),
                           cuda.to_device(np.array([1], np.int64)), -100, True, "float32", block=16)
    out["out_of_range_nan"] = bool(np.isnan(d_out.copy_to_host()[0, 0]))
    print("RESULT " + json.dumps(out))
""")

PTX_SCRIPT = textwrap.dedent(r"""
    import json, re
    from numba import cuda
    from slimtrack.native import cross_entropy_cuda as K
    out = {}
    for kind in K.KINDS:
        sigs = K.signatures(kind)
        for name, fn in K.python_kernels(kind).items():
            for cc in ((8, 0), (9, 0)):
                ptx, _ = cuda.compile_ptx(fn, sigs[name], cc=cc)
                out[f"{kind}/{name}/sm_{cc[0]}{cc[1]}"] = dict(
                    target=re.findall(r"^\.target (\S+)", ptx, re.M),
                    entry=".entry" in ptx, shared=".shared" in ptx, barrier="bar.sync" in ptx,
                    f64=len(re.findall(r"\.f64\b", ptx)))
    print("RESULT " + json.dumps(out))
""")


def _run(script: str, sim: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_kernels_under_cuda_simulator() -> None:
    res = _run(SIM_SCRIPT, sim=True)
    grad_tol = {"float32": 1e-6, "float16": 3e-4, "bfloat16": 2e-3}  # 1/3 * one storage ulp
    for case, expected_correct in (("small", [1.0, 0.0, 0.0]), ("wide", [0.0, 1.0])):
        for kind, tol in grad_tol.items():
            r = res[f"{case}/{kind}"]
            assert r["loss_err"] < (1e-5 if kind == "float32" else 1e-4), (case, kind, r)
            assert r["correct"] == r["ref_correct"] == expected_correct, (case, kind, r)
            assert r["grad_err"] < tol, (case, kind, r)
            assert r["scale_err"] < 3 * tol, (case, kind, r)
            assert r["ignored_rows_zero"], (case, kind, r)
    assert res["bf16_rne_exact"]
    assert res["out_of_range_nan"]


def test_every_kernel_compiles_to_ptx_for_sm80_and_sm90() -> None:
    res = _run(PTX_SCRIPT, sim=False)
    assert len(res) == 3 * 2 * 2  # kinds x kernels x targets
    for key, r in res.items():
        assert r["target"] == [key.rsplit("/", 1)[1]], (key, r)
        assert r["entry"], key
        assert r["f64"] == 0, (key, "float64 crept into the float32 math")
        if "/ce_kernel/" in key:
            assert r["shared"] and r["barrier"], key


# ---- real GPU ----------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
HALF_TOL = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _check_on_gpu(n: int, v: int, dtype: torch.dtype, seed: int = 0) -> None:
    from slimtrack.native.cross_entropy import cross_entropy_reference, fused_cross_entropy

    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = (torch.randn(n, v, device="cuda", generator=g) * 3).to(dtype)
    targets = torch.randint(0, v, (n,), device="cuda", generator=g)
    targets[::5] = -100
    logits[1, 7] = logits[1, 3] = logits[1].max() + 1  # a tie: index 3 wins
    targets[1] = 3
    r_loss, r_acc, r_row, r_grad = cross_entropy_reference(logits, targets)
    x = logits.clone().requires_grad_(True)
    loss, acc, row = fused_cross_entropy(x, targets)
    (loss * 3).backward()
    torch.cuda.synchronize()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(loss, r_loss, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(row, r_row, atol=1e-5, rtol=1e-4)
    assert acc.item() == pytest.approx(r_acc.item())
    rel = HALF_TOL.get(dtype, 0.0)
    torch.testing.assert_close(x.grad.float(), 3 * r_grad, atol=1e-6 + 3 * rel / n,
                               rtol=1e-4 + rel)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,v", [(7, 37), (64, 256), (33, 8192), (16, 50304)])
def test_gpu_matches_reference(dtype: torch.dtype, n: int, v: int) -> None:
    _check_on_gpu(n, v, dtype)


@pytest.mark.gpu
@gpu
def test_gpu_no_host_sync_and_edge_cases() -> None:
    from slimtrack.native.cross_entropy import fused_cross_entropy

    x = torch.randn(8, 100, device="cuda", requires_grad=True)
    t = torch.full((8,), -100, device="cuda")
    fused_cross_entropy(torch.zeros(1, 5, device="cuda", requires_grad=True),
                        torch.zeros(1, dtype=torch.int64, device="cuda"))  # compile first
    torch.cuda.set_sync_debug_mode("error")  # torch raises on any synchronising call
    try:
        loss, acc, row = fused_cross_entropy(x, t)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.item() == 0.0 and acc.item() == 0.0
    assert torch.count_nonzero(x.grad).item() == 0
    # N == 1, V == 1
    y = torch.randn(1, 1, device="cuda", requires_grad=True)
    loss, acc, _ = fused_cross_entropy(y, torch.zeros(1, dtype=torch.int64, device="cuda"))
    loss.backward()
    assert loss.item() == 0.0 and acc.item() == 1.0 and y.grad.item() == 0.0


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_fast_launch_matches_numba_dispatcher(dtype: torch.dtype) -> None:
    """The direct launch (cuda_launch.CudaKernel) is in use on a real GPU and gives
    bit-identical losses, rows and gradients to numba's own dispatcher."""
    from slimtrack.native import cross_entropy_cuda, cuda_launch
    from slimtrack.native.cross_entropy import fused_cross_entropy

    g = torch.Generator(device="cuda").manual_seed(1)
    logits = (torch.randn(96, 8192, device="cuda", generator=g) * 2).to(dtype)
    targets = torch.randint(0, 8192, (96,), device="cuda", generator=g)
    targets[::7] = -100
    results = {}
    try:
        for fast in (True, False):
            cuda_launch.FAST_LAUNCH = fast
            x = logits.clone().requires_grad_(True)
            loss, acc, row = fused_cross_entropy(x, targets)
            (loss * 0.5).backward()
            results[fast] = (loss, acc, row, x.grad)
            if fast:
                kind = "float32" if dtype == torch.float32 else "bfloat16"
                ce, scale = cross_entropy_cuda.get_kernels(kind, cross_entropy_cuda.block_for(8192))
                assert ce.fast and scale.fast, "fell back to numba's dispatcher on a real GPU"
    finally:
        cuda_launch.FAST_LAUNCH = True
    for a, b in zip(results[True], results[False]):
        assert torch.equal(a, b)
