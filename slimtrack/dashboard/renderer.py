"""DashboardRenderer: the dashboard drawn in a child process, so it never holds our GIL.

A render is mostly-Python matplotlib work. On a thread of the training process it holds
the GIL for most of that time, and the training thread, which takes the GIL back after
every torch op, waits for it again and again, so a render costs the loop more wall time
there than from a child process (docs/benchmarks.md). The child
(``python -m slimtrack.dashboard.renderer``, see ``slimtrack.runtime.child``) has its own
interpreter and GIL, and runs at the background priority (``slimtrack.runtime.priority``).

One child per run. It keeps one ``charts.Dashboard``, and warms it up (matplotlib's import,
the axes, the fonts: a one-off CPU cost) as soon as it starts, at normal priority, while
the run sets up; then it lowers its priority. If the child cannot start or dies, the caller's
thread renders instead (``in_process``), and the run goes on.
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from slimtrack.runtime.child import ChildGone, ChildProcess, serve
from slimtrack.metrics import dashboard_columns

log = logging.getLogger(__name__)


class DashboardRenderer:
    """``render(frame, samples, png_path)`` in a child process, or in the caller's thread
    when that process is unavailable. ``wait_ready`` may be called from another thread."""

    def __init__(self, use_process: bool = True, background_nice: int = 10) -> None:
        self._child: ChildProcess | None = None
        self._local: Any = None  # a Dashboard of our own once we render in-process
        if use_process:
            try:
                self._child = ChildProcess("slimtrack.dashboard.renderer", args=[str(background_nice)])
            except ChildGone as exc:
                log.warning("dashboard process unavailable (%s); rendering in-process", exc)

    @property
    def in_process(self) -> bool:
        return self._child is None or not self._child.alive

    def child_pid(self) -> int | None:
        return None if self.in_process else self._child.pid

    def wait_ready(self) -> None:
        """Block until the child has started and warmed up (no-op in-process)."""
        self._ask(("ping",))

    def render(self, frame: pd.DataFrame, samples: Sequence[dict[str, Any]], png_path: Path) -> None:
        """Draw the dashboard of ``frame`` (TrainingMetrics rows) and ``samples`` into ``png_path``."""
        # Only what the charts read crosses the pipe. Never import charts.py here: matplotlib's
        # import (CPU work that holds the GIL) would stall the training thread at the run's
        # first dashboard; the child has it imported already.
        frame = frame[dashboard_columns(frame)]
        if self._ask(("render", frame, list(samples), str(png_path))):
            return
        if self._local is None:
            from slimtrack.dashboard.charts import Dashboard

            self._local = Dashboard()
        _save(self._local, frame, samples, str(png_path))

    def _ask(self, request: tuple) -> bool:
        """True when the child did it, False when there is no child (any more). An error
        inside the child is raised here."""
        if self.in_process:
            return False
        try:
            self._child.ask(request)
        except ChildGone as exc:
            log.warning("dashboard process died (%s); rendering in-process from now on", exc)
            return False
        except Exception as exc:
            raise RuntimeError(f"dashboard process: {type(exc).__name__}: {exc}") from exc
        return True

    def close(self) -> None:
        """Let the child finish and exit."""
        if self._child is not None:
            self._child.close()


# ---- in the child ------------------------------------------------------------------------------
def main(background_nice: int) -> None:
    """Warm up, then answer ("render", frame, samples, path), which draws a PNG, and
    ("ping",), which only answers, until the input ends."""
    from slimtrack.dashboard.charts import Dashboard
    from slimtrack.runtime.priority import lower_this_thread_priority

    dashboard = Dashboard()
    _save(dashboard, pd.DataFrame(), [], io.BytesIO())  # the first real render then costs what later ones do
    lower_this_thread_priority(background_nice)  # after the warm-up, which then ends before the first steps

    def answer(request: tuple) -> None:
        if request[0] == "render":
            _save(dashboard, *request[1:])

    serve(answer)


def _save(dashboard: Any, frame: pd.DataFrame, samples: Sequence[dict[str, Any]], target: Any) -> None:
    from slimtrack.dashboard.charts import save_png

    save_png(dashboard.update(frame, samples), target)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
