"""The seven-chart training dashboard: a metrics frame in, a matplotlib Figure out.

Pure: no MLflow, no files, no pyplot (its global figure registry is not thread-safe and
the dashboard is rendered off the training thread). The figure gets an Agg canvas, so
callers can ``fig.savefig(...)`` or use :func:`save_png`.

Long runs stay cheap: moving averages are computed on the full data, then every line is
decimated (MinMaxLTTB keeps the visual shape, including each extreme) to a bounded number
of points before it reaches matplotlib, whose drawing cost grows with the points.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import IO, Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont, get_font
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, MaxNLocator, PercentFormatter
from tsdownsample import MinMaxLTTBDownsampler

from slimtrack.metrics import DASHBOARD_OPTIONAL_COLUMNS, DASHBOARD_REQUIRED_COLUMNS

CHART_TITLES = (
    "Training loss",
    "Training accuracy",
    "Token throughput",
    "Learning rate schedule",
    "Loss vs accuracy",
    "Recent performance (last 500 steps)",
    "Text samples",
)

LOSS_COLOR = "tab:blue"
LOSS_AVERAGE_COLOR = "navy"
ACCURACY_COLOR = "tab:green"
ACCURACY_AVERAGE_COLOR = "darkgreen"
THROUGHPUT_COLOR = "tab:purple"
LR_COLOR = "tab:orange"
VALIDATION_COLOR = "tab:red"
SCATTER_CMAP = "viridis"

REQUIRED_COLUMNS = DASHBOARD_REQUIRED_COLUMNS
CHARTED_OPTIONAL_COLUMNS = DASHBOARD_OPTIONAL_COLUMNS
AVERAGE_WINDOW = 50
RECENT_STEPS = 500
SAMPLE_ROWS = 5
SAMPLE_TEXT_CHARS = 60  # one line of a text column of the samples table
# The table's columns: a sample row's key (manager.SAMPLE_COLUMNS), its header and width.
SAMPLE_TABLE = (("step", "step", 0.06), ("prompt", "prompt", 0.285), ("generated", "generated", 0.285),
                ("true_continuation", "true continuation", 0.285), ("accuracy", "accuracy", 0.085))
# A chart is ~450 px wide (a third of 18 in at 100 dpi, less margins): 1000 points is about
# a minimum and a maximum per pixel column. More points only cost drawing time; the
# scatter's 2000 already cover its area.
MAX_LINE_POINTS = 1000
MAX_SCATTER_POINTS = 2000

_DOWNSAMPLER = MinMaxLTTBDownsampler()


def moving_average(series: pd.Series, window: int = AVERAGE_WINDOW) -> pd.Series:
    """Trailing mean over ``window`` rows; NaNs are skipped, the first rows use what exists."""
    return series.rolling(window, min_periods=1).mean()


def prepare_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The charted columns as float64, sorted by step, one row per step (the last one wins)."""
    missing = [name for name in REQUIRED_COLUMNS if name not in frame.columns]
    if missing and len(frame):
        raise ValueError(f"metrics frame lacks required columns: {', '.join(missing)}")
    columns = {name: _float_column(frame, name) for name in REQUIRED_COLUMNS + CHARTED_OPTIONAL_COLUMNS}
    df = pd.DataFrame(columns, copy=False)
    if np.isnan(columns["step"]).any():
        df = df[df["step"].notna()]
    steps = df["step"].to_numpy()
    # The usual case (strictly increasing steps) skips the sort, which would dominate on a
    # long history.
    if len(steps) > 1 and not (np.diff(steps) > 0).all():
        df = df.sort_values("step", kind="stable").drop_duplicates("step", keep="last")
    return df.reset_index(drop=True)


def _float_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """The column as float64 with NaN for anything missing, non-numeric or infinite."""
    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isinf(values), np.nan, values)  # a new array: the caller's frame stays as is


def decimate(x: np.ndarray, y: np.ndarray, n_out: int = MAX_LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """About ``n_out`` finite points of the line (x ascending) that keep its look.

    MinMaxLTTB keeps the shape; the global minimum and maximum are added explicitly, so a
    single loss spike is never decimated away.
    """
    finite = np.isfinite(y)
    if not finite.all():
        x, y = x[finite], y[finite]
    if len(y) <= n_out:
        return x, y
    index = _DOWNSAMPLER.downsample(x, y, n_out=n_out).astype(np.int64)  # uint64 mixes badly
    index = np.union1d(index, (np.argmin(y), np.argmax(y)))
    return x[index], y[index]


def shorten(text: Any, limit: int = SAMPLE_TEXT_CHARS) -> str:
    """One table-cell line: newlines as ⏎, control characters dropped, ellipsis past limit."""
    flat = str(text).replace("\r\n", "\n").replace("\n", " ⏎ ")
    flat = " ".join("".join(c if c.isprintable() else " " for c in flat).split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


class Dashboard:
    """The seven charts of :data:`CHART_TITLES`, built once and redrawn with new data.

    Creating the axes, their ticks and the colour bar is a large part of a fresh render,
    and none of it depends on the data. A Dashboard creates them once; each :meth:`update`
    removes the previous data artists (lines, notes, legends, the table), draws the new
    ones and autoscales again, so a reused Dashboard draws exactly what a fresh one would
    (a test compares the pixels). Not thread-safe: one thread owns one Dashboard (the
    VisualizationManager's render thread keeps one for the whole run).
    """

    def __init__(self, figsize: tuple[float, float] = (18.0, 12.0), dpi: float = 100.0) -> None:
        self.figure = fig = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(fig)
        # A fixed grid with explicit spacing: constrained layout and tight_layout measure
        # every text again on each render, a large share of its time.
        grid = fig.add_gridspec(
            3, 3, height_ratios=(1.0, 1.0, 0.75),
            left=0.06, right=0.95, bottom=0.02, top=0.91, hspace=0.42, wspace=0.3,
        )
        self.loss = _step_chart(fig.add_subplot(grid[0, 0]), CHART_TITLES[0], "loss")
        self.accuracy = _step_chart(fig.add_subplot(grid[0, 1]), CHART_TITLES[1], "accuracy (%)")
        self.accuracy.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
        self.throughput = _step_chart(fig.add_subplot(grid[0, 2]), CHART_TITLES[2], "tokens / s")
        self.throughput.yaxis.set_major_formatter(FuncFormatter(_with_thousands))
        self.learning_rate = _step_chart(fig.add_subplot(grid[1, 0]), CHART_TITLES[3], "learning rate (log)")
        _log_axis(self.learning_rate)
        self.scatter_ax = _chart(fig.add_subplot(grid[1, 1]), CHART_TITLES[4], "accuracy (%)", xlabel="loss")
        self.scatter_ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=None))  # decimals fit the range
        # The scatter and its colour bar persist; update() moves the points and the norm.
        self.points = self.scatter_ax.scatter([], [], c=[], cmap=SCATTER_CMAP, norm=Normalize(0, 1),
                                              s=8, alpha=0.7, linewidths=0)
        colorbar = fig.colorbar(self.points, ax=self.scatter_ax, pad=0.02)
        colorbar.set_label("step")
        colorbar.locator = MaxNLocator(nbins=5, integer=True)
        colorbar.formatter = FuncFormatter(_with_thousands)
        self.recent = _step_chart(fig.add_subplot(grid[1, 2]), CHART_TITLES[5], "loss")
        self.recent_accuracy = self.recent.twinx()
        self.recent_accuracy.set_ylabel("accuracy (%)")
        self.recent_accuracy.yaxis.set_major_locator(MaxNLocator(nbins=5))
        self.recent_accuracy.yaxis.set_major_formatter(PercentFormatter(100, decimals=None))
        self.samples_ax = fig.add_subplot(grid[2, :])
        self.samples_ax.set_title(CHART_TITLES[6], fontsize=12, fontweight="bold", y=1.0)
        self.samples_ax.axis("off")
        self._data_artists: list[Any] = []  # what update() drew last time, removed by the next

    def update(self, frame: pd.DataFrame, samples: Sequence[Mapping[str, Any]] = (), title: str = "") -> Figure:
        """Draw ``frame`` (TrainingMetrics rows) and ``samples`` into the charts; returns the figure."""
        df = prepare_frame(frame)
        self._clear_data()
        # ``title`` (e.g. a run's name and status in `slimtrack report`) goes before the headline.
        self.figure.suptitle(f"{title} - {_headline(df)}" if title else _headline(df), fontsize=15)
        self._draw(_plot_loss(self.loss, df))
        self._draw(_plot_accuracy(self.accuracy, df))
        self._draw(_plot_throughput(self.throughput, df))
        self._draw(_plot_learning_rate(self.learning_rate, df))
        self._draw(_plot_loss_vs_accuracy(self.scatter_ax, self.points, df))
        self._draw(_plot_recent(self.recent, self.recent_accuracy, df))
        self._draw(_plot_samples(self.samples_ax, samples))
        return self.figure

    def _draw(self, artists: list[Any]) -> None:
        self._data_artists.extend(artists)

    def _clear_data(self) -> None:
        """Remove the last update's artists and let every chart autoscale to the new data."""
        for artist in self._data_artists:
            artist.remove()
        self._data_artists.clear()
        for ax in (self.loss, self.accuracy, self.throughput, self.learning_rate, self.scatter_ax,
                   self.recent, self.recent_accuracy):
            ax.relim()  # forget the removed lines' extent
            ax.set_autoscale_on(True)  # undo the fixed limits of a "no data" note or a short run


def build_dashboard(
    frame: pd.DataFrame,
    samples: Sequence[Mapping[str, Any]] = (),
    *,
    figsize: tuple[float, float] = (18.0, 12.0),
    dpi: float = 100.0,
    title: str = "",
) -> Figure:
    """The seven charts of :data:`CHART_TITLES` for a frame of TrainingMetrics records.

    A new figure each call; to render a growing run again and again, keep a
    :class:`Dashboard` and call its ``update``."""
    return Dashboard(figsize, dpi).update(frame, samples, title=title)


def save_png(fig: Figure, path_or_buffer: str | os.PathLike | IO[bytes], dpi: float | None = None) -> None:
    """Write the figure as an RGB PNG through the Agg canvas (never pyplot).

    The figure is opaque, so the alpha channel savefig writes carries nothing, and it
    costs time twice: encoding RGBA is slower than RGB, and so is the thumbnail MLflow's
    log_image makes (decode + resize, in the MLflow process), since PIL premultiplies
    alpha to resize. zlib level 1 encodes several times faster than the default level 6
    for a slightly larger file (docs/benchmarks.md)."""
    from PIL import Image  # matplotlib's own dependency

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    figure_dpi = fig.dpi
    if dpi is not None:
        fig.set_dpi(dpi)  # for this drawing only, as savefig(dpi=...) does
    try:
        canvas.draw()
        rgba = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    finally:
        fig.set_dpi(figure_dpi)
    rgba.convert("RGB").save(path_or_buffer, format="PNG", compress_level=1)


def _headline(df: pd.DataFrame) -> str:
    if df.empty:
        return "slimtrack training: no data yet"
    loss, accuracy = df["loss"].dropna(), df["accuracy"].dropna()
    parts = [f"step {df['step'].iloc[-1]:,.0f}"]
    parts.append(f"loss {loss.iloc[-1]:.4f}" if len(loss) else "loss n/a")
    parts.append(f"accuracy {100 * accuracy.iloc[-1]:.1f} %" if len(accuracy) else "accuracy n/a")
    return "slimtrack training · " + " · ".join(parts)


def _with_thousands(value: float, _position: int | None = None) -> str:
    """Tick label: 48,000 rather than 48000 (small fractions as they are)."""
    return f"{value:,.0f}" if abs(value) >= 10 or value == 0 else f"{value:g}"


def _chart(ax: Axes, title: str, ylabel: str, xlabel: str = "step") -> Axes:
    """Title, labels, grid and few y ticks: the parts of a chart that never change."""
    # An explicit y skips the title's auto-placement, which measures all tick labels again.
    ax.set_title(title, fontsize=12, fontweight="bold", y=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    # Few ticks: every tick is a handful of artists to create and a label to lay out,
    # the largest fixed cost of a render.
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    return ax


def _step_chart(ax: Axes, title: str, ylabel: str) -> Axes:
    """A chart whose x axis is the training step: integer ticks with thousands separators."""
    _chart(ax, title, ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=(1, 2, 2.5, 5, 10), integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(_with_thousands))
    return ax


def _log_axis(ax: Axes) -> None:
    ax.set_yscale("log")
    # Minor ticks at 2 and 5 only (the default makes 8 per decade), labelled while the
    # schedule spans under ~2.5 decades, where decade labels alone would be one or two.
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(2.5, 1.5)))


def _fit_short_run(ax: Axes, steps: np.ndarray) -> None:
    """Too few steps for integer ticks in the automatic range (1 row: 0.95..1.05): widen it."""
    if len(steps) == 0 or steps[-1] - steps[0] < 4:
        first = steps[0] if len(steps) else 0.0
        ax.set_xlim(first - 1, first + 5)


def _no_data(ax: Axes, text: str = "no data yet", ylim: tuple[float, float] | None = (0, 1)) -> list:
    """A grey note in the middle of an empty chart, which keeps its title and axes."""
    note = ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray", fontsize=12)
    if ylim:
        ax.set_ylim(*ylim)  # the empty default, -0.055..0.055, makes wide tick labels
    return [note]


def _line(ax: Axes, x: np.ndarray, y: np.ndarray, **style: Any) -> list:
    x, y = decimate(x, y)
    if len(x) == 1:
        style.setdefault("marker", "o")  # a one-point line is invisible without a marker
    return ax.plot(x, y, **style)


def _metric_with_average(ax: Axes, df: pd.DataFrame, column: str, scale: float, color: str,
                         average_color: str) -> list:
    """Raw line (light) plus its moving average (dark, thick); the average is computed first."""
    steps = df["step"].to_numpy()
    _fit_short_run(ax, steps)
    values = df[column] * scale
    drawn = _line(ax, steps, values.to_numpy(), color=color, lw=0.8, alpha=0.45, label=column)
    drawn += _line(ax, steps, moving_average(values).to_numpy(), color=average_color, lw=2.0,
                   label=f"{AVERAGE_WINDOW}-step average")
    validation = df[f"val_{column}"] * scale
    if validation.notna().any():
        drawn += _line(ax, steps, validation.to_numpy(), color=VALIDATION_COLOR, ls="none", marker="o", ms=4,
                       label=f"val_{column}")
    if values.isna().all():
        drawn += _no_data(ax)
    return drawn


def _plot_loss(ax: Axes, df: pd.DataFrame) -> list:
    drawn = _metric_with_average(ax, df, "loss", 1.0, LOSS_COLOR, LOSS_AVERAGE_COLOR)
    if df["loss"].notna().any():
        drawn.append(ax.legend(loc="upper right", fontsize=9))
    return drawn


def _plot_accuracy(ax: Axes, df: pd.DataFrame) -> list:
    drawn = _metric_with_average(ax, df, "accuracy", 100.0, ACCURACY_COLOR, ACCURACY_AVERAGE_COLOR)
    ax.set_ylim(0, 100)
    if df["accuracy"].notna().any():
        drawn.append(ax.legend(loc="lower right", fontsize=9))
    return drawn


def _plot_throughput(ax: Axes, df: pd.DataFrame) -> list:
    _fit_short_run(ax, df["step"].to_numpy())
    drawn = _line(ax, df["step"].to_numpy(), df["tokens_per_sec"].to_numpy(), color=THROUGHPUT_COLOR, lw=1.0)
    if df["tokens_per_sec"].isna().all():
        drawn += _no_data(ax)
    return drawn


def _plot_learning_rate(ax: Axes, df: pd.DataFrame) -> list:
    _fit_short_run(ax, df["step"].to_numpy())
    # A log axis cannot show 0 or negatives (warmup often starts at 0): leave them out.
    lr = df["learning_rate"].where(df["learning_rate"] > 0).to_numpy()
    drawn = _line(ax, df["step"].to_numpy(), lr, color=LR_COLOR, lw=1.5)
    if np.isnan(lr).all():
        drawn += _no_data(ax, "no positive learning rate yet", ylim=(1e-5, 1e-2))
    return drawn


def _plot_loss_vs_accuracy(ax: Axes, points: PathCollection, df: pd.DataFrame) -> list:
    """Moves the persistent scatter ``points`` (coloured by step) to this frame's data."""
    keep = np.flatnonzero(df["loss"].notna().to_numpy() & df["accuracy"].notna().to_numpy())
    if len(keep) > MAX_SCATTER_POINTS:  # an even stride over the run, first and last kept
        keep = keep[np.linspace(0, len(keep) - 1, MAX_SCATTER_POINTS).astype(np.int64)]
    steps = df["step"].to_numpy()
    xy = np.column_stack((df["loss"].to_numpy()[keep], 100 * df["accuracy"].to_numpy()[keep]))  # [n, 2]
    points.set_offsets(xy)
    points.set_array(steps[keep])
    # An explicit colour range: autoscaling an empty scatter's colours fails.
    points.set_clim(*((steps[0], max(steps[-1], steps[0] + 1)) if len(steps) else (0, 1)))
    if not len(keep):
        return _no_data(ax, ylim=(0, 100))
    ax.update_datalim(xy)  # relim() skips collections, so the points' extent goes in by hand
    ax.autoscale_view()
    return []


def _plot_recent(ax: Axes, accuracy_ax: Axes, df: pd.DataFrame) -> list:
    """Loss (left axis) and accuracy (right, the twin ``accuracy_ax``) over the last steps."""
    recent = df[df["step"] > df["step"].iloc[-1] - RECENT_STEPS] if len(df) else df
    steps = recent["step"].to_numpy()
    _fit_short_run(ax, steps)
    lines = _line(ax, steps, recent["loss"].to_numpy(), color=LOSS_COLOR, lw=1.0, label="loss")
    lines += _line(accuracy_ax, steps, 100 * recent["accuracy"].to_numpy(), color=ACCURACY_COLOR, lw=1.0,
                   label="accuracy")
    # One legend for both y-axes: the twin's lines are not in ax's own legend.
    drawn = lines + [ax.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=9)]
    if recent["loss"].isna().all():
        drawn += _no_data(ax)
    if recent["accuracy"].isna().all():
        accuracy_ax.set_ylim(0, 100)
    return drawn


def _sample_step(sample: Mapping[str, Any]) -> float:
    try:
        step = float(sample.get("step", 0))
    except (TypeError, ValueError):
        return 0.0
    return step if np.isfinite(step) else 0.0  # a NaN key would scramble the sort


@functools.cache
def _font_code_points() -> frozenset[int]:
    return frozenset(get_font(findfont(FontProperties())).get_charmap())


def _drawable(text: str) -> str:
    """Characters the default font lacks (CJK, for DejaVu Sans) as U+FFFD: each would warn."""
    code_points = _font_code_points()
    return "".join(c if ord(c) in code_points else "\ufffd" for c in text)


def _sample_row(sample: Mapping[str, Any]) -> list[str]:
    accuracy = sample.get("accuracy")
    try:
        accuracy_text = f"{100 * float(accuracy):.1f} %"
    except (TypeError, ValueError):
        accuracy_text = "n/a"
    texts = [_drawable(shorten(sample.get(key, ""))) for key, _, _ in SAMPLE_TABLE[1:-1]]
    return [f"{_sample_step(sample):,.0f}", *texts, accuracy_text]


def _plot_samples(ax: Axes, samples: Sequence[Mapping[str, Any]]) -> list:
    latest = sorted(samples, key=_sample_step)[-SAMPLE_ROWS:]  # stable: ties keep arrival order
    if not latest:
        return _no_data(ax, "no samples yet", ylim=None)
    table = ax.table(
        cellText=[_sample_row(sample) for sample in latest],
        colLabels=[header for _, header, _ in SAMPLE_TABLE],
        colWidths=[width for _, _, width in SAMPLE_TABLE],
        cellLoc="left", loc="upper center",
    )
    # A fixed font size: auto-sizing measures every cell's text again and again.
    table.auto_set_font_size(False)
    table.set_fontsize(10.5)
    table.scale(1.0, 1.9)
    for (row, _), cell in table.get_celld().items():
        cell.get_text().set_parse_math(False)  # sample text may contain "$...$"
        cell.PAD = 0.01  # the default pads 10 % of the cell width: wide columns look indented
        if row == 0:
            cell.set_facecolor("#e8e8e8")
            cell.get_text().set_fontweight("bold")
    return [table]
