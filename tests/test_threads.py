"""numba's kernels run on torch's own OpenMP threads after configure_threads (native/threads.py).

Each check runs in a fresh interpreter: numba's threading layer is chosen once per
process, when its pool starts, so it cannot be switched inside the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Which OS threads burn CPU during torch matmuls, then during a numba kernel. Thread CPU
# time comes from /proc (clock ticks), so each phase runs long enough for ~0.3 s of work.
PROBE = textwrap.dedent("""
    import json, os
    import slimtrack, torch
    from slimtrack.native.threads import configure_threads
    from slimtrack.native import fused_gelu
    import numba

    def busy_since(before):
        ticks = {}
        for tid in os.listdir("/proc/self/task"):
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks, sorted(t for t in ticks if ticks[t] - before.get(t, 0) > 3)

    configure_threads(2)
    a, b, x = torch.randn(1024, 1024), torch.randn(1024, 1024), torch.randn(4_000_000)
    fused_gelu(x.clone()); a @ b  # start both pools, compile
    start, _ = busy_since({})
    for _ in range(40):
        a @ b
    after_torch, torch_threads = busy_since(start)
    for _ in range(60):
        fused_gelu(x.clone())
    _, numba_threads = busy_since(after_torch)
    print(json.dumps({"layer": numba.threading_layer(), "torch": torch_threads, "numba": numba_threads}))
""")


def probe(env_layer: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if env_layer:
        env["NUMBA_THREADING_LAYER"] = env_layer
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                    reason="thread CPU times come from Linux's /proc, and it takes two cores")
def test_numba_kernels_run_on_torchs_openmp_threads():
    shared = probe(None)
    assert shared["layer"] == "omp"
    assert len(shared["torch"]) == 2  # the main thread and torch's one OpenMP worker
    assert set(shared["numba"]) <= set(shared["torch"])  # no thread of numba's own
    # The probe can tell: on numba's own pool the kernel runs on threads torch never used.
    separate = probe("workqueue")
    assert separate["layer"] == "workqueue"
    assert not set(separate["numba"]) <= set(separate["torch"])


def test_a_users_layer_is_read_when_the_choice_is_made(monkeypatch):
    """NUMBA_THREADING_LAYER is read at call time (never at import), and a set one is kept."""
    import numba

    from slimtrack.native import threads

    monkeypatch.setattr(numba.config, "THREADING_LAYER", "tbb")  # as numba reads the variable
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "tbb")
    assert threads.user_threading_layer() == "tbb"
    assert threads.choose_threading_layer() == "tbb"  # kept, whatever slimtrack would pick
    monkeypatch.delenv("NUMBA_THREADING_LAYER")
    assert threads.user_threading_layer() == ""
