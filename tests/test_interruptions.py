"""Ordinary interruptions end a run cleanly: a hang-up, a closed pipe, a crash, a signal in
set-up or at the end, a full disk. Each leaves a run that is not RUNNING, a checkpoint or a
run file to resume from, and every record delivered. Real sqlite stores throughout."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import run_cli
from slimtrack.config import build_config
from slimtrack.tracking.client import Client
from slimtrack.train import session
from slimtrack.train.loop import SlimPajamaTrainer
from slimtrack.train.resume import config_to_resume, find_resume_point, read_run_file

pytestmark = pytest.mark.slow


def the_run(client: MlflowClient):
    return client.search_runs([client.get_experiment_by_name("slimtrack").experiment_id])[0]


def steps_of(client: MlflowClient, run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("step_*.pt"))


def start_train(tmp_path: Path, uri: str, *extra: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slimtrack", "train", "--test", "--max-chunks", "5000",
                             "--kernels", "torch", "--viz-interval", "1000", "--output-dir", str(tmp_path / "out"),
                             *extra], cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def wait_for_steps(client: MlflowClient, minimum: int = 3, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        exp = client.get_experiment_by_name("slimtrack")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and runs[0].data.metrics.get("loss") is not None and \
                len(client.get_metric_history(runs[0].info.run_id, "loss")) >= minimum:
            return runs[0].info.run_id
    raise AssertionError("training did not start")


def assert_stopped_cleanly(client: MlflowClient, out: Path, status: str = "KILLED") -> str:
    run = the_run(client)
    assert run.info.status == status
    names = checkpoints(out)
    assert names, "no checkpoint to resume from"
    last = int(names[-1][5:11])
    assert steps_of(client, run.info.run_id) == list(range(1, last + 1))  # every step once, up to the stop
    return run.info.run_id


def test_sighup_ends_the_run_like_sigterm(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = Client(uri)  # the store's tables exist before the run opens it (Client holds the file's lock)
    proc = start_train(tmp_path, uri)
    wait_for_steps(client)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    run_id = assert_stopped_cleanly(client, tmp_path / "out")
    assert "Traceback" not in stderr and "slimtrack train --resume" in stderr
    resumed = run_cli("train", "--resume", str(tmp_path / "out"), "--max-chunks", str(len(steps_of(client, run_id)) + 3),
                      cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_closed_console_pipe_ends_the_run_cleanly(tmp_path):
    """`slimtrack train ... 2>&1 | head -1`: the reader goes away after the first line."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = Client(uri)
    proc = start_train(tmp_path, uri, "--log-interval", "1", stderr=subprocess.STDOUT)
    proc.stdout.readline()
    wait_for_steps(client)
    proc.stdout.close()  # the next console line meets a closed pipe
    assert proc.wait(timeout=120) == 130
    assert_stopped_cleanly(client, tmp_path / "out")


def crash_on_call(monkeypatch, method: str, call: int, target=SlimPajamaTrainer) -> None:
    original = getattr(target, method)
    calls = {"n": 0}

    def wrapper(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise RuntimeError("a bug in the step")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(target, method, wrapper)


def test_a_crash_in_the_loop_fails_the_run_and_checkpoints_the_last_step(tmp_path, mlflow_store, monkeypatch, capsys):
    crash_on_call(monkeypatch, "train_on_chunk", 8)  # steps 1-7 complete, the 8th raises in its forward pass
    config = build_config("test", kernels="torch", output_dir=str(tmp_path / "out"), checkpoint_interval=1000)
    with pytest.raises(RuntimeError, match="a bug in the step"):
        session.run_training(config)
    client = MlflowClient()
    run = the_run(client)
    assert run.info.status == "FAILED"
    assert checkpoints(tmp_path / "out") == ["step_000007.pt"]  # written at the last completed step
    assert steps_of(client, run.info.run_id) == list(range(1, 8))
    assert f"slimtrack train --resume {tmp_path / 'out'}" in capsys.readouterr().err


def test_a_crash_inside_the_optimizer_step_writes_no_checkpoint(tmp_path, mlflow_store, monkeypatch):
    """Half-updated weights are not a state to resume from: the newest earlier checkpoint stays."""
    crash_on_call(monkeypatch, "step", 6, target=torch.optim.AdamW)
    config = build_config("test", kernels="torch", output_dir=str(tmp_path / "out"), checkpoint_interval=3)
    with pytest.raises(RuntimeError):
        session.run_training(config)
    assert checkpoints(tmp_path / "out") == ["step_000003.pt"]
    assert the_run(MlflowClient()).info.status == "FAILED"


def signal_during(monkeypatch, target, method: str) -> None:
    original = getattr(target, method)

    def wrapper(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(target, method, wrapper)


def test_sigterm_at_the_end_of_the_loop_still_checkpoints_and_ends_the_run(tmp_path, mlflow_store, monkeypatch):
    from slimtrack.train.hooks import ConsoleAndTrackingHooks

    signal_during(monkeypatch, ConsoleAndTrackingHooks, "close")  # the loop is done, the run's end begins
    out = tmp_path / "out"
    config = build_config("test", kernels="torch", output_dir=str(out))
    outcome = session.run_training(config)
    assert outcome.status == "KILLED" and outcome.steps == 20
    client = MlflowClient()
    run = the_run(client)
    assert run.info.status == "KILLED" and checkpoints(out)[-1] == "step_000020.pt"
    assert not read_run_file(out)["model_logged"]  # the export was skipped: a resume does it
    monkeypatch.undo()
    point = find_resume_point(str(out))
    resumed = session.run_training(config_to_resume(point), resume=point)
    assert resumed.status == "FINISHED" and read_run_file(out)["model_logged"]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert steps_of(client, run.info.run_id) == list(range(1, 21))  # no step twice


def test_sigterm_during_setup_leaves_a_killed_run_that_resumes_from_step_0(tmp_path, mlflow_store, monkeypatch):
    from slimtrack.train.model import GPT

    signal_during(monkeypatch, GPT, "num_parameters")  # after the run is open, before the first step
    out = tmp_path / "out"
    outcome = session.run_training(build_config("test", kernels="torch", output_dir=str(out)))
    assert outcome.status == "KILLED" and outcome.steps == 0
    client = MlflowClient()
    run_id = the_run(client).info.run_id
    assert client.get_run(run_id).info.status == "KILLED"
    monkeypatch.undo()
    point = find_resume_point(str(out))
    assert point.run_id == run_id and point.step == 0
    resumed = session.run_training(config_to_resume(point), resume=point)
    assert resumed.status == "FINISHED" and resumed.run_id == run_id
    assert steps_of(client, run_id) == list(range(1, 21))


def test_a_full_disk_at_a_checkpoint_is_one_line_and_fails_the_run(tmp_path, mlflow_store, monkeypatch, capsys):
    import slimtrack.train.checkpoint as checkpoint_module

    def full_disk(state, handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    out = tmp_path / "out"
    outcome = session.run_training(build_config("test", kernels="torch", output_dir=str(out), checkpoint_interval=5))
    assert outcome.status == "FAILED" and "No space left on device" in outcome.message
    assert "tracking" not in outcome.message
    assert the_run(MlflowClient()).info.status == "FAILED"
    assert not [p for p in (out / "checkpoints").iterdir()]  # no partial temporary file left behind


def rank_pids(rank: int) -> list[int]:
    """Processes of slimtrack whose environment says RANK=<rank> (torchrun's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"slimtrack" in cmdline and b"train" in cmdline:
            found.append(int(entry.name))
    return found


def test_a_killed_rank_restarts_the_group_into_the_same_run(tmp_path):
    """torchrun --max-restarts: kill -9 rank 1 mid-run; the group restarts, `--resume auto`
    continues from the newest checkpoint, and the one MLflow run gets one point per step."""
    from mlflow_server import free_port

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = Client(uri)
    steps = 60
    # Restarts to spare: on a loaded 2-core machine a restarted group's gloo connection can
    # fail (a rank's peer not yet listening); torchrun then restarts the group again.
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--max-restarts", "6", "--master-port", str(free_port()), "-m", "slimtrack", "train",
                             "--test", "--kernels", "torch", "--max-chunks", str(steps), "--checkpoint-interval", "5",
                             "--viz-interval", "1000", "--resume", "auto", "--output-dir", str(tmp_path / "out")],
                            cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        run_id = wait_for_steps(client, minimum=8)
        victims = rank_pids(1)
        assert victims, "rank 1 not found"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):  # torchrun and its ranks: none may outlive a failed test
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("slimtrack").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # the restart continued the same run
    assert client.get_run(run_id).info.status == "FINISHED"
    assert steps_of(client, run_id) == list(range(1, steps + 1))
    assert "resuming after step" in stderr
