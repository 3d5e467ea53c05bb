"""Shared fixtures: a real MLflow store (sqlite in a temp dir), tiny configs, CLI runner."""

from __future__ import annotations

import contextlib
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

# Two cores: keep torch and numba from oversubscribing them in every test process.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("NUMBA_NUM_THREADS", "2")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
# Programs a run exports (tracking/program_cache.py) go to a cache of this session, not the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="slimtrack-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite-backed MLflow store; artifacts land under tmp_path too."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@contextlib.contextmanager
def using_store(uri: str) -> Iterator[None]:
    """MLflow's fluent API on the store ``uri`` (tracking and registry) for the block.
    ``mlflow.set_*_uri`` also set the environment variables subprocesses inherit; both
    MLflow's state and the environment are put back afterwards, so no later test's
    subprocess inherits this store."""
    import mlflow

    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600,
            ) -> subprocess.CompletedProcess:
    """``python -m slimtrack ...`` in a subprocess (the way users run it)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "slimtrack", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
