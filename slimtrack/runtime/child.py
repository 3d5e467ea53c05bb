"""ChildProcess: work that must not share the training process's GIL, in a child process.

The training thread takes the GIL back after every torch op. Python work on another thread
of the same process (drawing a dashboard, MLflow's SQLAlchemy code for a batch of metrics)
holds the GIL for up to the switch interval (``sys.getswitchinterval()``) each time it gets
it, so the training thread waits again and again. On a GPU, where a step is mostly Python
launching kernels, even a light thread of this kind slows every step (docs/benchmarks.md).
A child process has its own interpreter and GIL; what is left in the training process is
pickling the requests.

The child is ``python -m <module>``, talking over its stdin and stdout (pickled requests and
replies), not a ``multiprocessing`` worker: ``spawn`` would import the parent's ``__main__``
again in the child, and a user's script that calls ``run_training`` without an
``if __name__ == "__main__"`` guard would start a second training there. The child's module
calls :func:`serve` with the function that answers a request.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from typing import Any, BinaryIO, Callable, Sequence


class ChildGone(ConnectionError):
    """The child process could not be started, or died: the caller does the work itself."""


class ChildProcess:
    """``ask(request)`` answered by a ``python -m module`` child. One exchange at a time
    (a lock), so several threads may ask. An error raised in the child is raised again by
    ``ask``; a dead child raises :class:`ChildGone` then and for every later request."""

    def __init__(self, module: str, args: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        self.module = module
        self._lock = threading.Lock()
        try:
            self._process: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", module, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                # A session of its own: Ctrl-C and a closed terminal reach the parent, which
                # ends the run and then the child (its input ends), never the child directly.
                start_new_session=True,
                env={**os.environ, **(env or {})})
        except OSError as exc:
            raise ChildGone(f"{module}: cannot start a process ({exc})") from exc

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None

    def ask(self, request: Any) -> Any:
        with self._lock:
            process = self._process
            if process is None:
                raise ChildGone(f"{self.module}: the process is gone")
            try:
                pickle.dump(request, process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                process.stdin.flush()
                status, detail = pickle.load(process.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                self._stop()
                raise ChildGone(f"{self.module}: the process died ({type(exc).__name__}: {exc})") from exc
        if status == "error":
            raise detail
        return detail

    def cpu_seconds(self) -> float:
        """CPU time the child has used so far (Linux; 0.0 elsewhere or once it is gone)."""
        pid = self.pid
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def close(self) -> None:
        """Let the child finish and exit: it stops at the end of its input."""
        with self._lock:
            self._stop()

    def kill(self) -> None:
        """End the child now, without waiting for it to finish (it holds nothing to keep)."""
        with self._lock:
            process, self._process = self._process, None
            if process is not None:
                process.kill()
                process.wait()
                process.stdin.close()
                process.stdout.close()

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()
            process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        finally:
            process.stdout.close()


# ---- in the child ------------------------------------------------------------------------------
def serve(answer: Callable[[Any], Any]) -> None:
    """Answer requests from stdin until it ends: each reply is ("ok", answer(request)) or
    ("error", the exception). Anything a library prints goes to stderr, never into a reply."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(answer, sys.stdin.buffer, replies)


def _serve(answer: Callable[[Any], Any], requests: BinaryIO, replies: BinaryIO) -> None:
    while True:
        try:
            request = pickle.load(requests)
        except (EOFError, OSError, pickle.UnpicklingError):  # the parent closed the pipe, or is gone
            return
        try:
            reply: tuple[str, Any] = ("ok", answer(request))
        except Exception as exc:  # noqa: BLE001 — the parent raises it; this process keeps serving
            reply = ("error", exc)
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
            if reply[0] == "error":
                pickle.loads(data)  # some exceptions pickle but cannot be rebuilt from their args
        except Exception:  # noqa: BLE001 — a result or an exception that does not travel
            data = pickle.dumps(("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))
        try:
            replies.write(data)
            replies.flush()
        except OSError:  # the parent is gone: nobody waits for the reply
            return
