"""Reading runs back: frames for notebooks, ``slimtrack report`` and ``slimtrack compare``.

``tracking.py`` writes to MLflow; this module only reads (the two are the only
modules that import mlflow). Everything returns pandas frames so the notebook
and the CLI share one tested code path.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from slimtrack.errors import UserError

SAMPLES_ARTIFACT = "training_viz/text_samples.json"
HISTORY_ARTIFACT = "training_viz/metrics_history.json"


def _client(tracking_uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri) if tracking_uri else MlflowClient()


def get_run(run_id: str, tracking_uri: str | None = None) -> Any:
    """The run, or a UserError naming the id (a typo must not be a traceback)."""
    try:
        return _client(tracking_uri).get_run(run_id)
    except MlflowException:
        raise UserError(f"no run {run_id!r} in the tracking store {mlflow.get_tracking_uri()}") from None


def history_frame(run_ids: Sequence[str], keys: Iterable[str] | None = None,
                  tracking_uri: str | None = None) -> pd.DataFrame:
    """Tidy frame (run, step, key, value) of metric histories; all of a run's keys by default."""
    client = _client(tracking_uri)
    rows = []
    for run_id in run_ids:
        run_keys = list(keys) if keys is not None else sorted(get_run(run_id, tracking_uri).data.metrics)
        for key in run_keys:
            for m in client.get_metric_history(run_id, key):  # the client pages through long histories
                rows.append((run_id, m.step, key, m.value))
    return pd.DataFrame(rows, columns=["run", "step", "key", "value"])


def wide_history(run_id: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """One row per step, one column per metric key: the frame ``build_dashboard`` takes."""
    tidy = history_frame([run_id], tracking_uri=tracking_uri)
    if tidy.empty:
        return pd.DataFrame(columns=["step", "loss", "accuracy", "tokens_per_sec", "learning_rate"])
    wide = tidy.pivot_table(index="step", columns="key", values="value", aggfunc="last")
    return wide.reset_index().rename_axis(columns=None)


def run_samples(run_id: str, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """The run's text samples from its ``text_samples.json`` artifact ([] if it has none)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SAMPLES_ARTIFACT,
                                                       dst_path=tmp, tracking_uri=tracking_uri)
        except (MlflowException, OSError):
            return []
        return samples_from_table(json.loads(Path(path).read_text()))


def samples_from_table(table: dict[str, Any]) -> list[dict[str, Any]]:
    """MLflow table JSON (columns + data) -> list of sample dicts."""
    columns = table.get("columns", [])
    return [dict(zip(columns, row)) for row in table.get("data", [])]


def build_report(run_id: str, out: Path | None = None, tracking_uri: str | None = None) -> Path:
    """Rebuild a run's dashboard from the tracking store alone; returns the PNG path."""
    from slimtrack.plots import build_dashboard, save_png

    run = get_run(run_id, tracking_uri)
    frame = wide_history(run_id, tracking_uri)
    figure = build_dashboard(frame, run_samples(run_id, tracking_uri))
    name = run.info.run_name or run_id[:8]
    figure.suptitle(f"{name} ({run.info.status.lower()}) - " + (figure._suptitle.get_text()
                                                                  if figure._suptitle else ""))
    out = Path(out) if out else Path(f"dashboard-{run_id[:8]}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(figure, out)
    return out
