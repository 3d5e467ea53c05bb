"""StopFlag, the signal handlers and the console guard (train/signals.py), in this process."""

from __future__ import annotations

import io
import os
import signal

import pytest

from slimtrack.train.signals import ConsoleGuard, StopFlag, stop_on_signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_each_stop_signal_sets_the_flag_and_the_handlers_are_restored(signum):
    before = signal.getsignal(signum)
    flag = StopFlag()
    with stop_on_signals(flag):
        os.kill(os.getpid(), signum)
        assert flag.requested and flag.reason == signal.Signals(signum).name
    assert signal.getsignal(signum) == before


def test_a_second_ctrl_c_interrupts_at_once():
    flag = StopFlag()
    with stop_on_signals(flag):
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert flag.reason == "SIGTERM"  # the first reason stays


def test_a_closed_pipe_becomes_a_stop_request_and_later_writes_go_nowhere():
    read_end, write_end = os.pipe()
    stream = io.TextIOWrapper(io.FileIO(write_end, "w"), line_buffering=True)
    os.close(read_end)  # the reader is gone (`| head` exited)
    flag = StopFlag()
    guard = ConsoleGuard(stream, flag)
    guard.write("step 1\n")  # EPIPE here: no exception
    guard.flush()
    assert guard.gone and flag.reason == "console gone"
    assert guard.write("step 2\n") == len("step 2\n")
    stream.write("the fd now points at /dev/null\n")
    stream.flush()  # no BrokenPipeError, not even at exit
    stream.close()


def test_other_write_errors_are_not_swallowed():
    class Full(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        ConsoleGuard(Full(), StopFlag()).write("x")
