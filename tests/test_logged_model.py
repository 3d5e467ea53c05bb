"""The logged model works without slimtrack: pyfunc predict, the raw module, `mlflow models serve`.

One tiny GPT (block_size 96) is logged in-process into a sqlite store, as a run's final model
is (model_export.log_pt2_model with the byte tokenizer's definition). The checks then run
where slimtrack cannot be imported: in a fresh Python process whose imports of slimtrack
fail, and in an ``mlflow models serve`` process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import using_store
from mlflow_server import _stop as stop, free_port, wait_until_answering

pytestmark = pytest.mark.slow

BLOCK_SIZE = 96
SERVE_TIMEOUT_S = 180.0  # a cold start of the scoring server on a busy 2-core box

# Runs in a fresh interpreter: slimtrack is made unimportable first, then the model is used the
# way a user without slimtrack would use it. Prints one JSON line of results.
WITHOUT_SLIMTRACK = r"""
import importlib.abc, json, sys

class NoSlimtrack(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "slimtrack" or name.startswith("slimtrack."):
            raise ImportError(f"{name} is not installed here")
        return None

sys.meta_path.insert(0, NoSlimtrack())

import mlflow.pyfunc, mlflow.pytorch, pandas as pd, torch

uri = sys.argv[1]
model = mlflow.pyfunc.load_model(uri)
small = {"max_new_tokens": 8, "seed": 7}
listed = model.predict(["def ", "The "], params=small)
again = model.predict(["def ", "The "], params=small)
framed = model.predict(pd.DataFrame({"prompt": ["abc", ""]}), params={"max_new_tokens": 5, "temperature": 0.0})
raw = mlflow.pytorch.load_model(uri)
shapes = {}
for batch, length in ((1, 10), (3, 77)):
    out = raw(torch.zeros(batch, length, dtype=torch.int64))
    logits = out[0] if isinstance(out, tuple) else out
    shapes[f"{batch}x{length}"] = list(logits.shape)
print(json.dumps({"listed": list(listed), "again": list(again), "framed": list(framed), "shapes": shapes,
                  "slimtrack_imported": "slimtrack" in sys.modules}))
"""


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory):
    """A tiny GPT logged as a run's final model: (tracking URI, ``models:/<model_id>``, model folder)."""
    import mlflow
    import torch

    from slimtrack.config import ModelConfig
    from slimtrack.data.tokenizer import byte_tokenizer_definition
    from slimtrack.tracking.model_export import log_pt2_model
    from slimtrack.train.model import GPT

    tmp = tmp_path_factory.mktemp("logged-model")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tokenizer = tmp / "byte_tokenizer.json"
    tokenizer.write_text(json.dumps(byte_tokenizer_definition()), encoding="utf-8")
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK_SIZE, vocab_size=320)).eval()
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("logged-model", artifact_location=str(tmp / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    with using_store(uri):
        log_pt2_model(run_id, model, np.zeros((2, 64), dtype=np.int64), tokenizer_file=tokenizer)
    (logged,) = client.search_logged_models([experiment])
    folder = Path(logged.artifact_location.removeprefix("file://"))
    return uri, f"models:/{logged.model_id}", folder


def child_env(uri: str) -> dict[str, str]:
    """The environment of a process that uses the model: the store, the venv's tools on PATH
    (``mlflow models serve`` starts ``uvicorn`` by name), and no path to slimtrack's sources."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def without_slimtrack(logged_model, tmp_path_factory):
    """The results of WITHOUT_SLIMTRACK on the logged model."""
    uri, model_uri, _ = logged_model
    cwd = tmp_path_factory.mktemp("no-slimtrack")  # not the repository: its sources are not on sys.path
    result = subprocess.run([sys.executable, "-c", WITHOUT_SLIMTRACK, model_uri], cwd=cwd, env=child_env(uri),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_model_folder_holds_program_tokenizer_and_both_flavours(logged_model):
    _, _, folder = logged_model
    mlmodel = (folder / "MLmodel").read_text(encoding="utf-8")
    assert "python_function:" in mlmodel and "pytorch:" in mlmodel
    assert (folder / "artifacts" / "model.pt2").is_file()
    definition = json.loads((folder / "artifacts" / "byte_tokenizer.json").read_text(encoding="utf-8"))
    assert definition["kind"] == "byte" and definition["eos_id"] == 256
    assert json.loads((folder / "artifacts" / "text_model.json").read_text())["block_size"] == BLOCK_SIZE


def test_pyfunc_continues_prompts_without_slimtrack(without_slimtrack):
    results = without_slimtrack
    assert not results["slimtrack_imported"]
    listed = results["listed"]
    assert len(listed) == 2 and all(isinstance(text, str) for text in listed)
    assert results["again"] == listed  # the same seed, the same continuations
    assert len(results["framed"]) == 2 and all(isinstance(text, str) for text in results["framed"])


def test_raw_module_takes_any_batch_and_length(without_slimtrack):
    assert without_slimtrack["shapes"] == {"1x10": [1, 10, 320], "3x77": [3, 77, 320]}


def test_models_serve_answers_invocations(logged_model, tmp_path):
    uri, model_uri, _ = logged_model
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(uri), cwd=tmp_path,
                                   start_new_session=True)
    try:
        wait_until_answering(url, process, log_path, SERVE_TIMEOUT_S, endpoint="/ping", name="mlflow models serve")
        body = json.dumps({"inputs": ["def ", "The "], "params": {"max_new_tokens": 6, "seed": 3}}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        stop(process)
    predictions = answer["predictions"]
    assert len(predictions) == 2 and all(isinstance(text, str) for text in predictions)


