"""notebooks/analyze_runs.ipynb runs headless against a sqlite store and an ``mlflow server``.

Two short real training runs (different learning rates) are logged once for the module
into a sqlite store with a local artifact root; a real ``mlflow server`` then serves the
same database and artifact root. The notebook is executed once per store by nbclient in
a kernel that runs this interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import nbformat
import numpy as np
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from mlflow import MlflowClient
from mlflow.entities import Metric
from nbclient import NotebookClient

from conftest import REPO
from mlflow_server import mlflow_server
from slimtrack import analysis

NOTEBOOK = REPO / "notebooks" / "analyze_runs.ipynb"
EXPERIMENT = "notebook-test"
STEPS = 6
RUNS = {"nb-lr-1e-3": "0.001", "nb-lr-3e-3": "0.003"}  # run name -> --lr
KERNEL = "slimtrack-test"
LONG_POINTS = 26_000  # more than one page (25,000) of the REST get-history endpoint


def train(work: Path, uri: str, name: str, lr: str) -> subprocess.Popen:
    """``slimtrack train`` as users run it, in the background (the two runs overlap)."""
    command = [sys.executable, "-m", "slimtrack", "train", "--test", "--max-chunks", str(STEPS),
               "--viz-interval", "3", "--kernels", "torch", "--num-threads", "1", "--lr", lr,
               "--experiment", EXPERIMENT, "--run-name", name, "--output-dir", str(work / name)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("MLFLOW_RUN_ID", None)
    with open(work / f"{name}.log", "wb") as log:  # the child keeps its own handle
        return subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)


def log_long_run(uri: str, artifacts: Path) -> str:
    """A synthetic run with LONG_POINTS loss points, in an experiment of its own."""
    client = MlflowClient(uri)
    exp = client.create_experiment("long-history", artifact_location=(artifacts / "long").as_uri())
    run_id = client.create_run(exp, run_name="long").info.run_id
    values = np.linspace(8.0, 2.0, LONG_POINTS)
    for first in range(0, LONG_POINTS, 1000):
        client.log_batch(run_id, metrics=[Metric("loss", float(values[s]), 1_700_000_000_000 + s, s)
                                          for s in range(first, min(first + 1000, LONG_POINTS))])
    client.set_terminated(run_id)
    return run_id


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two finished training runs in sqlite, and an mlflow server on the same db + artifacts."""
    work = tmp_path_factory.mktemp("notebook")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    artifacts = work / "artifacts"
    # Created here, once: two trainers creating the experiment at the same time would race.
    MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    trainers = {name: train(work, uri, name, lr) for name, lr in RUNS.items()}
    with ExitStack() as stack:
        stack.callback(lambda: [p.kill() for p in trainers.values() if p.poll() is None])  # after a failure
        url = stack.enter_context(mlflow_server(work / "server", backend_store_uri=uri,
                                                artifacts_destination=artifacts))  # starts while they train
        for name, process in trainers.items():
            assert process.wait(timeout=600) == 0, (work / f"{name}.log").read_text()[-3000:]
        long_run = log_long_run(uri, artifacts)  # after the trainers: one sqlite writer at a time
        runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name(EXPERIMENT).experiment_id])
        yield {"work": work, "uri": uri, "url": url, "long_run": long_run,
               "ids": {run.info.run_name: run.info.run_id for run in runs}}


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
    """A kernelspec whose argv is this interpreter, so the notebook imports this slimtrack."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("kernel")
    install(prefix=str(prefix), kernel_name=KERNEL, display_name="slimtrack tests")
    return KernelSpecManager(kernel_dirs=[str(prefix / "share" / "jupyter" / "kernels")])


def execute_notebook(kernel_specs: KernelSpecManager, tracking_uri: str, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell (nbclient raises CellExecutionError on the first failing one)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    manager = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    client = NotebookClient(notebook, km=manager, timeout=300, resources={"metadata": {"path": str(cwd)}})
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "SLIMTRACK_EXPERIMENT": EXPERIMENT}
    env.pop("MLFLOW_RUN_ID", None)
    client.execute(env=env)
    return notebook


def output_text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            data = output.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/html", "")]
    return "\n".join(parts)


def assert_complete_outputs(notebook: nbformat.NotebookNode) -> None:
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    text = output_text(notebook)
    for name in RUNS:
        assert name in text, f"{name} missing from the notebook outputs"
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # comparison, throughput, per-source loss, dashboard
    assert "Traceback" not in text


def rest(url: str, path: str, body: dict | None = None, **query: str) -> dict:
    """One call to the server's REST API (POST with a JSON body, else GET)."""
    address = f"{url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(address, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_notebook_runs_against_a_sqlite_store(stores, kernel_specs, tmp_path):
    notebook = execute_notebook(kernel_specs, stores["uri"], tmp_path)
    assert_complete_outputs(notebook)


@pytest.mark.slow
def test_notebook_runs_against_an_mlflow_server(stores, kernel_specs, tmp_path):
    url, ids = stores["url"], stores["ids"]
    notebook = execute_notebook(kernel_specs, url, tmp_path)
    assert_complete_outputs(notebook)

    # What the notebook read, checked at the source: the server's REST API.
    experiment = rest(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
    found = rest(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert sorted(run["info"]["run_name"] for run in found) == sorted(RUNS)
    for name, run_id in ids.items():
        history = rest(url, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="loss")["metrics"]
        assert sorted(point["step"] for point in history) == list(range(1, STEPS + 1)), name
        params = {p["key"]: p["value"] for run in found if run["info"]["run_id"] == run_id
                  for p in run["data"]["params"]}
        assert params["train.lr"] == RUNS[name]
        # Artifacts come through the server too (the UI's download endpoint).
        address = f"{url}/get-artifact?" + urllib.parse.urlencode(
            {"path": "training_viz/text_samples.json", "run_uuid": run_id})
        with urllib.request.urlopen(address, timeout=60) as response:
            table = json.loads(response.read())
        assert table["columns"] == ["step", "prompt", "generated", "true_continuation", "accuracy"] and table["data"]


@pytest.mark.slow
def test_history_frame_pages_through_the_server(stores):
    """More points than one REST page: the client must follow next_page_token."""
    tidy = analysis.history_frame([stores["long_run"]], ["loss"], stores["url"])
    assert len(tidy) == LONG_POINTS
    assert sorted(tidy.step) == list(range(LONG_POINTS))


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.get("outputs") == [], f"outputs stored in: {cell.source[:60]!r}"
        assert cell.get("execution_count") is None, f"execution count stored in: {cell.source[:60]!r}"
    first = code[0]
    assert "parameters" in first.metadata.get("tags", [])
    assert "MLFLOW_TRACKING_URI" in first.source and "SLIMTRACK_EXPERIMENT" in first.source
