"""DashboardRenderer: the dashboard drawn in a child process, the same picture as in-process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from slimtrack.dashboard.renderer import DashboardRenderer


def frame(steps: int) -> pd.DataFrame:
    step = np.arange(1, steps + 1, dtype=float)
    return pd.DataFrame({"step": step, "loss": 5.0 / step, "accuracy": step / (steps + 1),
                         "tokens_per_sec": 1000.0 + step, "learning_rate": 1e-3,
                         "rss_mb": 100.0, "loss_by_source/PythonDocs": 2.0})  # columns no chart reads


SAMPLES = [{"step": 10, "input": "def f(x):", "output": "def f(y):", "accuracy": 0.75}]


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_child_process_draws_what_the_caller_would(tmp_path):
    child, local = DashboardRenderer(), DashboardRenderer(use_process=False)
    try:
        assert child.child_pid() not in (None, os.getpid())
        for name, renderer in (("child.png", child), ("local.png", local)):
            renderer.render(frame(40), SAMPLES, tmp_path / name)
        assert not child.in_process and local.in_process
        assert np.array_equal(pixels(tmp_path / "child.png"), pixels(tmp_path / "local.png"))
    finally:
        child.close()


def test_a_dead_child_falls_back_to_rendering_in_process(tmp_path):
    renderer = DashboardRenderer()
    try:
        os.kill(renderer.child_pid(), signal.SIGKILL)
        time.sleep(0.2)
        renderer.render(frame(20), SAMPLES, tmp_path / "after.png")  # no exception: drawn here instead
        assert renderer.in_process
        assert pixels(tmp_path / "after.png").shape[:2] == (1200, 1800)
    finally:
        renderer.close()


def test_requests_from_two_threads_do_not_mix_on_the_pipe(tmp_path):
    import threading

    renderer = DashboardRenderer()
    try:
        threads = [threading.Thread(target=renderer.render, args=(frame(10 + i), SAMPLES, tmp_path / f"{i}.png"))
                   for i in range(2)] + [threading.Thread(target=renderer.wait_ready)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not renderer.in_process  # no exchange broke the protocol (that falls back in-process)
        assert all(pixels(tmp_path / f"{i}.png").shape[:2] == (1200, 1800) for i in range(2))
    finally:
        renderer.close()


def test_the_training_process_never_imports_matplotlib(tmp_path):
    """A dashboard drawn in the child leaves matplotlib out of the caller: its import (~0.5 s
    of CPU under the import lock and the GIL) used to stall the run's first dashboard step."""
    script = (
        "import sys\n"
        "from slimtrack.dashboard.manager import VisualizationManager\n"
        "from slimtrack.tracking.tracker import MlflowTracker\n"  # what the training process imports
        "from slimtrack.dashboard.renderer import DashboardRenderer\n"
        "import tests.test_renderer as t\n"
        "renderer = DashboardRenderer()\n"
        f"renderer.render(t.frame(20), t.SAMPLES, {str(tmp_path / 'a.png')!r})\n"
        "renderer.close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "a.png").stat().st_size > 10_000
    assert done.stdout.strip().splitlines()[-1] == "[]"
