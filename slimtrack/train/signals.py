"""Stopping a run cleanly: signals, and a console that went away.

SIGTERM, SIGINT (Ctrl-C) and SIGHUP (a closed terminal, a dropped SSH session) all ask the
run to stop: :class:`StopFlag` is set, the loop stops at the next step boundary, and the
run ends as KILLED with a checkpoint, every record delivered or spooled. A second Ctrl-C
interrupts at once. The handlers stay installed from set-up to the end of the run, so a
signal during set-up or during the run's end is honoured the same way.

A console that went away (stdout or stderr a closed pipe: ``slimtrack train | head``, a
closed terminal) is the same request: :class:`ConsoleGuard` catches the write error, points
the stream's file descriptor at ``/dev/null`` (so nothing fails on it again, not even at
interpreter exit) and sets the flag.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None)
GONE = (errno.EPIPE, errno.EIO, errno.ECONNRESET)


class StopFlag:
    """Set once a stop was asked for; ``reason`` says why (the signal's name, or the console)."""

    def __init__(self) -> None:
        self.reason = ""

    @property
    def requested(self) -> bool:
        return bool(self.reason)

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.request(signal.Signals(signum).name)


@contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[None]:
    """Route SIGTERM, SIGINT and SIGHUP to ``flag`` (main thread only; elsewhere a no-op)."""
    try:
        previous = {sig: signal.signal(sig, flag.on_signal) for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ConsoleGuard:
    """A text stream that turns "the reader is gone" into a stop request instead of an error."""

    def __init__(self, stream: TextIO, flag: StopFlag) -> None:
        self.stream = stream
        self.flag = flag
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self.stream.write(text)
            except OSError as exc:
                self._lost(exc)
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except OSError as exc:
                self._lost(exc)

    def isatty(self) -> bool:
        return not self.gone and self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return self.stream.encoding

    def _lost(self, exc: OSError) -> None:
        if exc.errno not in GONE:
            raise exc
        self.gone = True
        self.flag.request("console gone")
        try:  # the stream's own buffer and the interpreter's exit flush now go nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


@contextmanager
def guard_console(flag: StopFlag) -> Iterator[None]:
    """sys.stdout and sys.stderr behind a :class:`ConsoleGuard` for the duration."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ConsoleGuard(sys.stdout, flag), ConsoleGuard(sys.stderr, flag)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
