"""Several runs in one figure: loss, accuracy, throughput, learning rate and validation
bits per byte overlaid.

Pure like ``charts.py``: metric frames in, a matplotlib Figure with an Agg canvas out; no
MLflow, no files, no pyplot. ``analysis.write_comparison`` reads the runs and saves the
PNG; ``slimtrack compare`` and the analysis notebook both use it.

Each run gets one colour. A metric is drawn twice: the raw per-step line, faint, and its
moving average (the dashboard's window), solid, so noisy per-step values stay readable
when several runs overlap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from slimtrack.dashboard.charts import AVERAGE_WINDOW, decimate, moving_average

COMPARED_METRICS = ("loss", "accuracy", "tokens_per_sec", "learning_rate", "val_bpb")
RUN_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
              "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
RAW_ALPHA = 0.25


@dataclass(frozen=True)
class Panel:
    """One chart of the comparison: which metric, how it is scaled and drawn."""

    column: str
    title: str
    ylabel: str
    scale: float = 1.0  # accuracy is logged as a fraction and charted in %
    smoothed: bool = True  # the learning rate is a schedule, not a noisy measurement
    log_y: bool = False


PANELS = (
    Panel("loss", "Training loss", "loss"),
    Panel("accuracy", "Training accuracy", "accuracy (%)", scale=100.0),
    Panel("tokens_per_sec", "Token throughput", "tokens / s"),
    Panel("learning_rate", "Learning rate schedule", "learning rate (log)", smoothed=False, log_y=True),
    # Bits per UTF-8 byte compare runs whose tokenizers differ; logged at evaluation steps only.
    Panel("val_bpb", "Validation bits per byte", "bits / byte", smoothed=False),
)


def build_comparison(histories: Mapping[str, pd.DataFrame], *,
                     figsize: tuple[float, float] = (18.0, 10.0), dpi: float = 100.0) -> Figure:
    """Overlay the runs' curves; ``histories`` maps a run's display name to its wide frame.

    A frame has a ``step`` column and any of :data:`COMPARED_METRICS` (a missing metric
    is simply not drawn for that run). The figure legend lists the runs in the given order.
    """
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, left=0.05, right=0.98, bottom=0.07, top=0.86, hspace=0.32, wspace=0.2)
    axes = [fig.add_subplot(grid[index // 3, index % 3]) for index in range(len(PANELS))]
    fig.suptitle(_headline(histories), fontsize=15)
    for ax, panel in zip(axes, PANELS):
        _setup(ax, panel)
    handles = []
    for index, (name, frame) in enumerate(histories.items()):
        color = RUN_COLORS[index % len(RUN_COLORS)]
        lines = [_draw_run(ax, panel, frame, color, name) for ax, panel in zip(axes, PANELS)]
        handles.append(next((line for line in lines if line is not None), _placeholder(axes[0], color, name)))
    for ax, panel in zip(axes, PANELS):
        _finish(ax, panel)
    if handles:
        fig.legend(handles, [h.get_label() for h in handles], loc="upper center", bbox_to_anchor=(0.5, 0.95),
                   ncol=min(len(handles), 5), fontsize=10, frameon=False)
    return fig


def _headline(histories: Mapping[str, pd.DataFrame]) -> str:
    if not histories:
        return "slimtrack: no runs to compare"
    smoothing = f"solid: {AVERAGE_WINDOW}-step average, faint: per step"
    return f"slimtrack: {len(histories)} run{'s' if len(histories) != 1 else ''} compared ({smoothing})"


def _setup(ax: Axes, panel: Panel) -> None:
    ax.set_title(panel.title, fontsize=12, fontweight="bold", y=1.0)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))
    if panel.log_y:
        ax.set_yscale("log")
    elif panel.column == "accuracy":
        ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    elif panel.column == "tokens_per_sec":
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))


def _metric_line(frame: pd.DataFrame, panel: Panel) -> tuple[np.ndarray, pd.Series]:
    """Steps and scaled values of one metric, sorted by step, without gaps or non-numbers."""
    if panel.column not in frame.columns or "step" not in frame.columns:
        return np.empty(0), pd.Series(dtype=np.float64)
    steps = pd.to_numeric(frame["step"], errors="coerce")
    values = pd.to_numeric(frame[panel.column], errors="coerce") * panel.scale
    keep = steps.notna() & np.isfinite(values)
    if panel.log_y:
        keep &= values > 0  # a log axis cannot show 0 (warmup often starts there)
    line = pd.DataFrame({"step": steps[keep], "value": values[keep]}).sort_values("step", kind="stable")
    return line["step"].to_numpy(np.float64), line["value"].reset_index(drop=True)


def _draw_run(ax: Axes, panel: Panel, frame: pd.DataFrame, color: str, name: str):
    """Draw one run on one panel; returns the line that stands for the run (or None)."""
    steps, values = _metric_line(frame, panel)
    if not len(steps):
        return None
    marker = "o" if len(steps) == 1 else None  # a one-point line is invisible without one
    if not panel.smoothed:
        x, y = decimate(steps, values.to_numpy())
        return ax.plot(x, y, color=color, lw=1.8, marker=marker, label=name)[0]
    x, y = decimate(steps, values.to_numpy())
    ax.plot(x, y, color=color, lw=0.8, alpha=RAW_ALPHA, marker=marker)
    # The average is taken over every step before decimation, as in the dashboard.
    x, y = decimate(steps, moving_average(values).to_numpy())
    return ax.plot(x, y, color=color, lw=2.0, marker=marker, label=name)[0]


def _placeholder(ax: Axes, color: str, name: str):
    """A run with no data at all still gets its legend entry (an empty line)."""
    return ax.plot([], [], color=color, lw=2.0, label=name)[0]


def _finish(ax: Axes, panel: Panel) -> None:
    if not any(len(line.get_xdata()) for line in ax.lines):
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")
    elif panel.column == "accuracy":
        ax.set_ylim(0, 100)
