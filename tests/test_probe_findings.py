"""Issue #22's probe findings: bad inputs end with one line and exit 2, reused folders and
resumes do what they say, and the small findings (empty validation, quoting, make, numpy)."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from mlflow import MlflowClient
from packaging.requirements import Requirement

from conftest import REPO, run_cli
from slimtrack.cli import main
from slimtrack.data.holdout import is_held_out
from slimtrack.data.readers import Document

QUICK = ("--test", "--kernels", "torch", "--max-chunks", "4")


def the_runs(client: MlflowClient, experiment: str = "slimtrack") -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def loss_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


def one_error_line(stderr: str) -> str:
    """The whole of stderr, which must be one ``slimtrack: error:`` line."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("slimtrack: error:"), lines[0]
    return lines[0]


def train(tmp_path: Path, *args: str, uri: str | None = None) -> subprocess.CompletedProcess:
    """``slimtrack train`` in a subprocess, in ``tmp_path``, against ``uri`` (default: a sqlite
    store in tmp_path)."""
    uri = uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
    return run_cli("train", *args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri}, timeout=300)


# ---- 1, 2: bad values are one line and exit 2 -------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_non_finite_lr_is_one_line_and_exit_2(value, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *QUICK, "--lr", value]) == 2
    assert "--lr" in one_error_line(capsys.readouterr().err)


def test_a_300_character_run_name_is_one_line_and_creates_no_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *QUICK, "--no-log-model", "--run-name", "x" * 300]) == 2
    err = capsys.readouterr().err
    assert "--run-name" in one_error_line(err) and "File name too long" not in err
    assert list(tmp_path.iterdir()) == []  # no outputs/ folder, no store


# ---- 3, 4, 5: a tracking store that cannot be used ---------------------------------------------
@pytest.mark.slow
def test_an_unknown_store_scheme_is_one_line_and_leaves_no_folder(tmp_path):
    result = train(tmp_path, *QUICK, "--no-log-model", "--output-dir", str(tmp_path / "new"), uri="foo://bar")
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_error_line(result.stderr).startswith("slimtrack: error: tracking store")
    assert not (tmp_path / "new").exists()
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_corrupt_sqlite_store_is_one_line_and_exit_2(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(bytes(range(256)) * 40)  # garbage, not a sqlite database
    result = train(tmp_path, *QUICK, "--no-log-model", "--output-dir", str(tmp_path / "new"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_error_line(result.stderr).startswith("slimtrack: error: tracking store")
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_an_unwritable_sqlite_store_fails_fast_with_one_line(tmp_path):
    (tmp_path / "afile").write_text("a file, not a folder")
    started = time.monotonic()
    result = train(tmp_path, *QUICK, "--no-log-model", "--output-dir", str(tmp_path / "new"),
                   uri=f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}")
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_error_line(result.stderr).startswith("slimtrack: error: tracking store")
    assert elapsed < 60, f"took {elapsed:.0f} s"  # no minutes of retries
    assert not (tmp_path / "new").exists()


# ---- 6, 7, 8: reused folders and resumes ------------------------------------------------------
@pytest.mark.slow
def test_a_reused_output_folder_is_refused_and_resume_continues_its_run(tmp_path):
    out = str(tmp_path / "o")
    first = train(tmp_path, *QUICK, "--no-log-model", "--output-dir", out)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run_a] = the_runs(client)

    fresh = train(tmp_path, *QUICK, "--no-log-model", "--output-dir", out)
    assert fresh.returncode == 2, fresh.stderr[-3000:]
    assert "--resume" in one_error_line(fresh.stderr)
    assert [r.info.run_id for r in the_runs(client)] == [run_a.info.run_id]  # no run B

    resumed = run_cli("train", "--resume", out, "--max-chunks", "6", cwd=tmp_path,
                      env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [run] = the_runs(client)
    assert run.info.run_id == run_a.info.run_id and run.info.status == "FINISHED"
    assert loss_steps(client, run.info.run_id) == [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-step run that logged its model: (work folder, store uri, run id)."""
    work = tmp_path_factory.mktemp("finished")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = train(work, *QUICK, "--output-dir", str(work / "o"), uri=uri)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = the_runs(MlflowClient(uri))
    return work, uri, run.info.run_id


@pytest.mark.slow
def test_resume_with_fewer_chunks_than_done_is_one_line_and_exit_2(finished_run):
    work, uri, _ = finished_run
    result = run_cli("train", "--resume", str(work / "o"), "--max-chunks", "2", cwd=work,
                     env={"MLFLOW_TRACKING_URI": uri}, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "--max-chunks" in one_error_line(result.stderr)


def dashboard_images(client: MlflowClient, run_id: str) -> list[str]:
    return [a.path for a in client.list_artifacts(run_id, "images") if "training_dashboard" in a.path]


def logged_models(client: MlflowClient, run_id: str) -> list:
    experiment_id = client.get_run(run_id).info.experiment_id
    return [m for m in client.search_logged_models([experiment_id]) if m.source_run_id == run_id]


@pytest.mark.slow
def test_a_no_op_resume_logs_no_second_dashboard_or_model(finished_run):
    work, uri, run_id = finished_run
    client = MlflowClient(uri)
    images_before = dashboard_images(client, run_id)
    assert images_before and len(logged_models(client, run_id)) == 1
    result = run_cli("train", "--resume", str(work / "o"), "--max-chunks", "4", cwd=work,
                     env={"MLFLOW_TRACKING_URI": uri}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(dashboard_images(client, run_id)) == sorted(images_before)
    assert len(logged_models(client, run_id)) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    assert loss_steps(client, run_id) == [1, 2, 3, 4]


# ---- 9: an empty validation split --------------------------------------------------------------
def training_only_texts(count: int, length: int) -> list[str]:
    """``count`` texts of ``length`` characters that the carved validation split does not hold."""
    texts, i = [], 0
    while len(texts) < count:
        text = (f"document {i}: the quick brown fox jumps over the lazy dog. " * (length // 40 + 1))[:length]
        if not is_held_out(Document(text, "RedPajamaC4")):
            texts.append(text)
        i += 1
    return texts


@pytest.mark.slow
def test_an_empty_validation_split_logs_no_val_loss_and_says_so_once(tmp_path):
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps({"text": text, "meta": {"redpajama_set_name": "RedPajamaC4"}}) + "\n"
                            for text in training_only_texts(6, 1000)))
    result = train(tmp_path, *QUICK, "--no-log-model", "--dataset", str(data), "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if "validation split" in line and "empty" in line]
    assert len(said) == 1, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = the_runs(client)
    assert run.info.status == "FINISHED"
    assert "val_loss" not in run.data.metrics
    assert client.get_metric_history(run.info.run_id, "val_loss") == []
    assert all(math.isfinite(value) for value in run.data.metrics.values()), run.data.metrics
    assert loss_steps(client, run.info.run_id) == [1, 2, 3, 4]


# ---- 10: the mlflow ui hint is shell-quoted ----------------------------------------------------
@pytest.mark.slow
def test_the_mlflow_ui_hint_survives_a_space_in_the_store_path(tmp_path):
    (tmp_path / "my runs").mkdir()
    uri = f"sqlite:///{tmp_path / 'my runs' / 'mlflow.db'}"
    result = train(tmp_path, *QUICK, "--no-log-model", "--output-dir", str(tmp_path / "o"), uri=uri)
    assert result.returncode == 0, result.stderr[-3000:]
    [hint] = [line.split("view it with ", 1)[1] for line in result.stderr.splitlines() if "view it with " in line]
    argv = shlex.split(hint)
    assert argv[:2] == ["mlflow", "ui"]
    assert argv[argv.index("--backend-store-uri") + 1] == uri


# ---- 11, 12: the Makefile and the extras -------------------------------------------------------
def make_dry_run(target: str) -> str:
    result = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_clean_keeps_the_runs_and_clean_runs_deletes_them():
    clean = make_dry_run("clean")
    for name in ("mlflow.db", "mlruns", "outputs"):
        assert name not in clean, clean
    runs = make_dry_run("clean-runs")
    deleting = [line for line in runs.splitlines() if line.startswith("rm ")]
    assert deleting, runs
    for name in ("mlflow.db", "mlruns", "outputs"):
        assert any(name in line for line in deleting), runs


@pytest.mark.parametrize("extra", ["cuda", "dev"])
def test_the_cuda_and_dev_extras_cap_numpy_below_2_5(extra):
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    numpy = [Requirement(spec) for spec in extras[extra] if Requirement(spec).name == "numpy"]
    assert numpy, extras[extra]
    for requirement in numpy:
        assert not requirement.specifier.contains("2.5.0", prereleases=True)
        assert not requirement.specifier.contains("2.5.0rc1", prereleases=True)
        assert requirement.specifier.contains("2.4.4")


# ---- 13: the NaN message names the real newest checkpoint --------------------------------------
@pytest.mark.slow
def test_the_nan_message_says_when_no_checkpoint_exists(tmp_path):
    result = train(tmp_path, "--test", "--kernels", "torch", "--no-log-model", "--lr", "1e9",
                   "--warmup-steps", "0", "--checkpoint-interval", "1000", "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "no checkpoint was written before it" in result.stderr, result.stderr[-3000:]
    assert "the newest checkpoint is" not in result.stderr
    assert not list((tmp_path / "o").glob("checkpoints/step_*.pt"))
    [run] = the_runs(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert run.info.status == "FAILED"
