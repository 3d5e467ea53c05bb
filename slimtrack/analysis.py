"""Reading runs back: frames for notebooks, ``slimtrack report`` and ``slimtrack compare``.

The tracker (``tracking/``) writes to MLflow; this module only reads. Everything
returns pandas frames so the notebook and the CLI share one tested code path.

Every function takes an optional ``tracking_uri``; without it MLflow's own
resolution applies (``MLFLOW_TRACKING_URI``, else its default store).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from slimtrack.errors import UserError
from slimtrack.metrics import SOURCE_PREFIX, records_frame, records_from_json
from slimtrack.dashboard.manager import SAMPLE_COLUMNS as TABLE_COLUMNS, VIZ_DIR, samples_from_table

SAMPLES_ARTIFACT = f"{VIZ_DIR}/text_samples.json"
HISTORY_ARTIFACT = f"{VIZ_DIR}/metrics_history.json"
SAMPLE_COLUMNS = list(TABLE_COLUMNS)  # step, prompt, generated, true_continuation, accuracy

# The fixed columns of runs_frame(); every other column is one of the runs' params.
RUN_COLUMNS = [
    "run_id", "run_name", "status", "start_time", "duration_s", "tokens_seen",
    "final_loss", "best_loss", "final_accuracy", "best_accuracy", "final_val_loss", "best_val_loss",
    "final_val_bpb", "best_val_bpb",
]
# metric -> whether lower is better; "best" needs the whole history, "final" is the last step.
SUMMARISED_METRICS = {"loss": True, "accuracy": False, "val_loss": True, "val_bpb": True}
SEARCH_PAGE_SIZE = 1000  # runs per search_runs call (MLflow's maximum is 50,000)


def _client(tracking_uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri) if tracking_uri else MlflowClient()


def _store_name(tracking_uri: str | None) -> str:
    """The store for an error message, without credentials."""
    from slimtrack.tracking.uri import redact_uri

    return redact_uri(tracking_uri or mlflow.get_tracking_uri())


def _store_error(exc: MlflowException, tracking_uri: str | None) -> str:
    """First line of MLflow's message, with the store's credentials (which it quotes) removed."""
    from slimtrack.tracking.uri import redact_uri

    uri = (tracking_uri or mlflow.get_tracking_uri()).rstrip("/")
    detail = (str(exc).splitlines() or [""])[0].replace(uri, redact_uri(uri))
    return detail if len(detail) <= 300 else detail[:299] + "…"


# ---- single runs ---------------------------------------------------------------------------------
def get_run(run_id: str, tracking_uri: str | None = None) -> Run:
    """The run, or a UserError naming the id (a typo must not be a traceback)."""
    try:
        return _client(tracking_uri).get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise UserError(f"no run {run_id!r} in the tracking store {_store_name(tracking_uri)}") from None
        # Not a typo in the id: an unreachable server, a store we may not read, ...
        raise UserError(f"cannot read run {run_id!r} from {_store_name(tracking_uri)}: "
                        f"{_store_error(exc, tracking_uri)}") from None


def display_names(runs: Sequence[Run]) -> list[str]:
    """A legend label per run: its name, with a short id where two runs share a name."""
    names = [run.info.run_name or run.info.run_id[:8] for run in runs]
    return [f"{name} ({run.info.run_id[:8]})" if names.count(name) > 1 else name
            for name, run in zip(names, runs)]


# ---- metric histories ----------------------------------------------------------------------------
def history_frame(run_ids: Sequence[str], keys: Iterable[str] | None = None,
                  tracking_uri: str | None = None) -> pd.DataFrame:
    """Tidy frame (run, step, key, value) of metric histories; all of a run's keys by default."""
    client = _client(tracking_uri)
    wanted = list(keys) if keys is not None else None
    rows = []
    for run_id in run_ids:
        run = get_run(run_id, tracking_uri)  # a typo is a UserError, not an empty history
        for key in wanted if wanted is not None else sorted(run.data.metrics):
            # The client pages through long histories itself (the REST API serves 25,000 a page).
            rows.extend((run_id, m.step, key, m.value) for m in client.get_metric_history(run_id, key))
    return pd.DataFrame(rows, columns=["run", "step", "key", "value"])


def wide_history(run_id: str, tracking_uri: str | None = None,
                 keys: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per step, one column per metric key: the frame ``build_dashboard`` takes."""
    tidy = history_frame([run_id], keys, tracking_uri=tracking_uri)
    if tidy.empty:
        columns = list(keys) if keys is not None else ["loss", "accuracy", "tokens_per_sec", "learning_rate"]
        return pd.DataFrame(columns=["step", *columns])
    wide = tidy.pivot_table(index="step", columns="key", values="value", aggfunc="last")
    return wide.reset_index().rename_axis(columns=None)


def source_loss_frame(run_ids: Sequence[str], tracking_uri: str | None = None) -> pd.DataFrame:
    """Tidy frame (run, step, source, loss) of the ``loss_by_source/<set>`` histories."""
    frames = []
    for run_id in run_ids:
        keys = [k for k in get_run(run_id, tracking_uri).data.metrics if k.startswith(SOURCE_PREFIX)]
        frames.append(history_frame([run_id], sorted(keys), tracking_uri))
    tidy = pd.concat(frames, ignore_index=True) if frames else history_frame([], [])
    tidy["key"] = tidy["key"].str.slice(len(SOURCE_PREFIX))
    return tidy.rename(columns={"key": "source", "value": "loss"})


# ---- experiments -----------------------------------------------------------------------------
def _experiment_id(client: MlflowClient, experiment: str, tracking_uri: str | None) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise UserError(f"no experiment {experiment!r} in the tracking store {_store_name(tracking_uri)}")
    return found.experiment_id


def _search_all_runs(client: MlflowClient, experiment_id: str, limit: int | None = None) -> list[Run]:
    """The experiment's active runs, newest first, every page of the search."""
    runs: list[Run] = []
    token = None
    while limit is None or len(runs) < limit:
        page_size = SEARCH_PAGE_SIZE if limit is None else min(SEARCH_PAGE_SIZE, limit - len(runs))
        page = client.search_runs([experiment_id], max_results=page_size, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def latest_runs(experiment: str, n: int = 5, tracking_uri: str | None = None) -> list[str]:
    """Ids of the experiment's ``n`` newest runs, newest first."""
    client = _client(tracking_uri)
    return [run.info.run_id for run in _search_all_runs(client, _experiment_id(client, experiment, tracking_uri), n)]


def runs_frame(experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """One row per run of the experiment, newest first.

    Columns: :data:`RUN_COLUMNS` (final = the value at the last step, best = the lowest
    loss / highest accuracy over every step, NaN where a run has no such metric;
    duration NaN while a run is still going), then one column per param (``config.preset``,
    ``train.lr``, ...), numeric where every value of the param is a number.
    """
    client = _client(tracking_uri)
    runs = _search_all_runs(client, _experiment_id(client, experiment, tracking_uri))
    rows = [_run_row(client, run) for run in runs]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    params = sorted(set(frame.columns) - set(RUN_COLUMNS))
    for column in params:
        frame[column] = _numbers_where_possible(frame[column])
    return frame[RUN_COLUMNS + params]


def _run_row(client: MlflowClient, run: Run) -> dict[str, Any]:
    info, metrics = run.info, run.data.metrics
    row: dict[str, Any] = {}
    for name, value in run.data.params.items():
        # A param that happens to share a fixed column's name keeps both values.
        row[f"params.{name}" if name in RUN_COLUMNS else name] = value
    row.update({
        "run_id": info.run_id,
        "run_name": info.run_name,
        "status": info.status,
        "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
        "duration_s": (info.end_time - info.start_time) / 1000 if info.end_time else np.nan,
        "tokens_seen": metrics.get("tokens_seen", np.nan),
    })
    for key, lower_is_better in SUMMARISED_METRICS.items():
        row[f"final_{key}"] = metrics.get(key, np.nan)
        row[f"best_{key}"] = _best_value(client, info.run_id, key, lower_is_better) if key in metrics else np.nan
    return row


def _best_value(client: MlflowClient, run_id: str, key: str, lower_is_better: bool) -> float:
    values = np.array([m.value for m in client.get_metric_history(run_id, key)], dtype=np.float64)
    values = values[np.isfinite(values)]  # a NaN step (a diverged batch) is no one's best
    if not len(values):
        return np.nan
    return float(values.min() if lower_is_better else values.max())


def _numbers_where_possible(column: pd.Series) -> pd.Series:
    """MLflow keeps params as strings: "0.001" becomes a number, "embedded" stays text."""
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().sum() == column.notna().sum() else column


# ---- exported files (training_viz/) ----------------------------------------------------------
def load_exported(path_or_run_id: str | Path, tracking_uri: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's ``metrics_history.json`` and ``text_samples.json`` as (history, samples) frames.

    ``path_or_run_id`` is a run's local output folder (the one holding ``training_viz/``,
    or ``training_viz/`` itself) or a run id whose artifacts are downloaded. History: one
    row per step, sorted by step, the TrainingMetrics fields as columns
    (``metrics.records_frame``). Samples: step, prompt, generated, true_continuation,
    accuracy (empty when the run wrote none).
    """
    folder = Path(path_or_run_id)
    if folder.is_dir():
        viz_dir = folder if folder.name == VIZ_DIR else folder / VIZ_DIR
        return _read_exported(viz_dir / "metrics_history.json", viz_dir / "text_samples.json", str(folder))
    run_id = str(path_or_run_id)
    if "/" in run_id or "\\" in run_id or folder.exists():
        raise UserError(f"{run_id} is not a run's output folder (nor a run id)")
    get_run(run_id, tracking_uri)  # an unknown id is a UserError, not a download error
    with tempfile.TemporaryDirectory() as tmp:
        history = _download(run_id, HISTORY_ARTIFACT, Path(tmp) / "history", tracking_uri)
        samples = _download(run_id, SAMPLES_ARTIFACT, Path(tmp) / "samples", tracking_uri)
        return _read_exported(history, samples, f"run {run_id}")


def _download(run_id: str, artifact: str, dst: Path, tracking_uri: str | None) -> Path | None:
    """One artifact file into ``dst``; None when the run has no such file."""
    dst.mkdir()
    try:
        # The returned path is the truth: where the file lands differs between artifact stores.
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact,
                                                        dst_path=str(dst), tracking_uri=tracking_uri))
    except (MlflowException, OSError):
        return None


def _read_exported(history_file: Path | None, samples_file: Path | None,
                   source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (history, samples) frames of ``load_exported``; ``source`` names the run in errors."""
    if history_file is None or not history_file.is_file():
        raise UserError(f"{source} has no {HISTORY_ARTIFACT} (it is written at the first --viz-interval)")
    history = records_frame(records_from_json(history_file.read_text()))
    if samples_file is not None and samples_file.is_file():
        samples = pd.DataFrame(samples_from_table(json.loads(samples_file.read_text())))
    else:
        samples = pd.DataFrame()
    return history, samples.reindex(columns=list(dict.fromkeys(SAMPLE_COLUMNS + list(samples.columns))))


def run_samples(run_id: str, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """The run's text samples from its ``text_samples.json`` artifact ([] if it has none)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SAMPLES_ARTIFACT,
                                                       dst_path=tmp, tracking_uri=tracking_uri)
        except (MlflowException, OSError):
            return []
        return samples_from_table(json.loads(Path(path).read_text()))


# ---- figures written to files ------------------------------------------------------------------
def build_report(run_id: str, out: Path | None = None, tracking_uri: str | None = None) -> Path:
    """Rebuild a run's dashboard from the tracking store alone; returns the PNG path."""
    from slimtrack.dashboard.charts import build_dashboard, save_png

    run = get_run(run_id, tracking_uri)
    frame = wide_history(run_id, tracking_uri)
    name = run.info.run_name or run_id[:8]
    figure = build_dashboard(frame, run_samples(run_id, tracking_uri),
                             title=f"{name} ({run.info.status.lower()})")
    out = Path(out) if out else Path(f"dashboard-{run_id[:8]}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(figure, out)
    return out


def comparison_histories(run_ids: Sequence[str], tracking_uri: str | None = None) -> dict[str, pd.DataFrame]:
    """Display name -> wide history of the compared metrics, in the order given."""
    from slimtrack.dashboard.compare import COMPARED_METRICS

    runs = [get_run(run_id, tracking_uri) for run_id in run_ids]  # every id checked before any download
    return {name: wide_history(run.info.run_id, tracking_uri, keys=COMPARED_METRICS)
            for name, run in zip(display_names(runs), runs)}


def write_comparison(run_ids: Sequence[str], out: Path | None = None, tracking_uri: str | None = None) -> Path:
    """Overlay the runs' curves (``slimtrack compare``); returns the PNG path."""
    from slimtrack.dashboard.compare import build_comparison
    from slimtrack.dashboard.charts import save_png

    if not run_ids:
        raise UserError("nothing to compare: give run ids or --experiment")
    figure = build_comparison(comparison_histories(run_ids, tracking_uri))
    out = Path(out) if out else Path(f"compare-{run_ids[0][:8]}-{len(run_ids)}runs.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(figure, out)
    return out
