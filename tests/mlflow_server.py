"""A real ``mlflow server`` on 127.0.0.1 for tests: sqlite backend, proxied artifacts.

Use the context manager where a test needs control over the stores (or a longer-lived
server in a module fixture)::

    with mlflow_server(tmp_path) as url:
        client = MlflowClient(url)

or the function-scoped fixture (``from mlflow_server import mlflow_server_url`` in the
test module makes pytest see it)::

    def test_something(mlflow_server_url): ...

The server runs in its own process group, so stopping it also stops the uvicorn worker
it spawns; nothing else is touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

START_TIMEOUT_S = 180.0  # a cold start (imports, sqlite migrations) takes 10-40 s on a busy 2-core box
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(tmp_path: Path, backend_store_uri: str | None = None,
                  artifacts_destination: Path | None = None,
                  timeout: float = START_TIMEOUT_S, port: int | None = None) -> Iterator[str]:
    """Start ``mlflow server`` on a free port, yield its URL, stop it afterwards.

    By default the backend is ``tmp_path/server.db`` and artifacts go to
    ``tmp_path/server-artifacts``; pass an existing sqlite URI and artifact folder to
    serve runs that were logged to a sqlite store directly.
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    backend_store_uri = backend_store_uri or f"sqlite:///{tmp_path / 'server.db'}"
    artifacts_destination = Path(artifacts_destination or tmp_path / "server-artifacts")
    port = port or free_port()  # a fixed port lets a test stop and restart "the same" server
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", backend_store_uri,
               "--artifacts-destination", str(artifacts_destination), "--workers", "1"]
    # The background job runner serves GenAI jobs only: one process fewer on a small machine.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the server's store is the one given here
    log_path = tmp_path / f"mlflow-server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                   start_new_session=True)
    try:
        wait_until_answering(url, process, log_path, timeout)
        yield url
    finally:
        _stop(process)


def wait_until_answering(url: str, process: subprocess.Popen, log_path: Path, timeout: float,
                         endpoint: str = "/health", name: str = "mlflow server") -> None:
    """Poll ``url + endpoint`` until it answers 200; fail with the log's tail if the process
    exits or the time runs out (a server, or `mlflow models serve` with endpoint /ping)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}{endpoint}", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{name} at {url} not answering after {timeout:.0f} s:\n{_tail(log_path)}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it and its uvicorn worker), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; a worker that ignored SIGTERM still gets the SIGKILL.
        if sig == signal.SIGTERM:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


@pytest.fixture
def mlflow_server_url(tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty MLflow server for one test."""
    with mlflow_server(tmp_path / "mlflow-server") as url:
        yield url
