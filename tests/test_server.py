"""Training against a real `mlflow server` (sqlite backend, served artifacts), checked
through the server's REST API the way a team's other tools would read it."""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
import uuid

import pytest

from conftest import run_cli
from mlflow_server import mlflow_server

# .ci/run installs and starts PostgreSQL and sets this; elsewhere the PostgreSQL case skips.
POSTGRES_URI = os.environ.get("SLIMTRACK_TEST_POSTGRES_URI")

pytestmark = pytest.mark.slow
STEPS = 8


def rest(url: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    target = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        target += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(target, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(params=["sqlite", "postgresql"])
def server_url(request, tmp_path):
    if request.param == "postgresql" and not POSTGRES_URI:
        pytest.skip("no PostgreSQL (set SLIMTRACK_TEST_POSTGRES_URI; .ci/run does)")
    backend = POSTGRES_URI if request.param == "postgresql" else None
    with mlflow_server(tmp_path / "server", backend_store_uri=backend) as url:
        yield url


def test_training_against_a_server_arrives_complete(tmp_path, server_url):
    url = server_url
    experiment_name = f"team-{uuid.uuid4().hex[:8]}"  # a PostgreSQL store outlives the test
    result = run_cli("train", "--test", "--max-chunks", str(STEPS), "--viz-interval", "4", "--output-dir",
                     str(tmp_path / "out"), "--experiment", experiment_name, cwd=tmp_path,
                     env={"MLFLOW_TRACKING_URI": url})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{url}/#/experiments/" in result.stderr  # a clickable UI link

    experiment = rest(url, "experiments/get-by-name", experiment_name=experiment_name)["experiment"]
    runs = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert len(runs) == 1
    run = runs[0]
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["train.max_chunks"] == str(STEPS) and params["config.preset"] == "test"
    for key in ("loss", "accuracy", "tokens_per_sec", "learning_rate", "gpu_memory_mb"):
        history = rest(url, "metrics/get-history", run_id=run_id, metric_key=key)["metrics"]
        assert sorted(m["step"] for m in history) == list(range(1, STEPS + 1)), key
    files = {f["path"] for f in rest(url, "artifacts/list", run_id=run_id, path="training_viz")["files"]}
    assert {"training_viz/training_step_000004.png", "training_viz/training_step_000008.png",
            "training_viz/training_latest.png", "training_viz/metrics_history.json",
            "training_viz/text_samples.json"} <= files
    # the artifact bytes are served by the tracking server itself (--artifacts-destination)
    png = urllib.request.urlopen(f"{url}/get-artifact?" + urllib.parse.urlencode(
        {"run_id": run_id, "path": "training_viz/training_latest.png"}), timeout=30).read()
    assert png.startswith(b"\x89PNG")
