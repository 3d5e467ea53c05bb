"""The dashboard's content: seven charts, their colours, scales, data and robustness."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings

import matplotlib.pyplot as plt  # only to check that build_dashboard leaves pyplot alone
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image

from slimtrack.dashboard import charts as plots
from slimtrack.dashboard.charts import CHART_TITLES, build_dashboard, save_png

LOSS, ACCURACY, THROUGHPUT, LR, SCATTER, RECENT, SAMPLES = CHART_TITLES


def metrics(n: int, seed: int = 0) -> pd.DataFrame:
    """A small realistic run: decaying loss, rising accuracy, warmup LR starting at 0."""
    rng = np.random.default_rng(seed)
    step = np.arange(1, n + 1)
    return pd.DataFrame({
        "step": step,
        "loss": 2.0 + 8.0 * np.exp(-step / max(n / 5, 1)) + rng.normal(0, 0.1, n),
        "accuracy": np.clip(0.6 * (1 - np.exp(-step / max(n / 4, 1))) + rng.normal(0, 0.02, n), 0, 1),
        "tokens_per_sec": 40_000 + rng.normal(0, 1_000, n),
        "learning_rate": np.minimum(step - 1, 50) * 1e-5,  # 0 at step 1: the log axis must cope
    })


def samples(n: int) -> list[dict]:
    return [
        {"step": 10 * (i + 1), "prompt": f"prompt {i}\nsecond line " + "word " * 30,
         "generated": f"output {i}", "true_continuation": f"truth {i}", "accuracy": i / 10}
        for i in range(n)
    ]


def charts(fig: Figure) -> dict[str, Axes]:
    """The titled axes by title: the colour bar and the twin axis have no title."""
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def line(ax: Axes, label: str):
    (found,) = [line for line in ax.get_lines() if line.get_label() == label]
    return found


def render(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    save_png(fig, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dashboard() -> Figure:
    return build_dashboard(metrics(1_200), samples(7))


def test_exactly_the_seven_titled_charts(dashboard: Figure) -> None:
    titled = [ax.get_title() for ax in dashboard.axes if ax.get_title()]
    assert titled == list(CHART_TITLES)
    for title in CHART_TITLES[:6]:
        ax = charts(dashboard)[title]
        assert ax.get_xlabel() and ax.get_ylabel(), title


def test_colour_constants_are_the_promised_hues() -> None:
    for constant, hue in [(plots.LOSS_COLOR, "blue"), (plots.ACCURACY_COLOR, "green"),
                          (plots.THROUGHPUT_COLOR, "purple"), (plots.LR_COLOR, "orange")]:
        assert to_rgba(constant) in (to_rgba(hue), to_rgba(f"tab:{hue}"))


@pytest.mark.parametrize("title, colour", [
    (LOSS, plots.LOSS_COLOR), (ACCURACY, plots.ACCURACY_COLOR),
    (THROUGHPUT, plots.THROUGHPUT_COLOR), (LR, plots.LR_COLOR),
])
def test_line_colours(dashboard: Figure, title: str, colour: str) -> None:
    colours = [to_rgba(line.get_color()) for line in charts(dashboard)[title].get_lines()]
    assert to_rgba(colour) in colours


def test_learning_rate_is_log_scale_without_zeros(dashboard: Figure) -> None:
    ax = charts(dashboard)[LR]
    assert ax.get_yscale() == "log"
    (lr_line,) = ax.get_lines()
    assert (lr_line.get_ydata() > 0).all()
    assert lr_line.get_xdata()[0] == 2  # step 1 had lr 0: masked, not plotted


def test_accuracy_is_percent_from_0_to_100(dashboard: Figure) -> None:
    ax = charts(dashboard)[ACCURACY]
    assert ax.get_ylim() == (0, 100)
    raw = line(ax, "accuracy")
    assert 30 < raw.get_ydata().max() <= 100  # fractions were scaled to %


def test_moving_average_equals_pandas_rolling_mean() -> None:
    frame = metrics(10_000)  # longer than MAX_LINE_POINTS: the average is decimated too
    expected = frame["loss"].rolling(50, min_periods=1).mean().to_numpy()
    loss_chart = charts(build_dashboard(frame, []))[LOSS]
    average = line(loss_chart, "50-step average")
    steps = average.get_xdata().astype(int)
    assert len(steps) <= plots.MAX_LINE_POINTS + 2
    np.testing.assert_allclose(average.get_ydata(), expected[steps - 1])
    assert to_rgba(average.get_color()) == to_rgba(plots.LOSS_AVERAGE_COLOR)
    assert average.get_linewidth() > line(loss_chart, "loss").get_linewidth()


def test_validation_loss_is_drawn_as_markers() -> None:
    frame = metrics(300).assign(val_loss=lambda f: f["loss"].where(f["step"] % 100 == 0))
    validation = line(charts(build_dashboard(frame, []))[LOSS], "val_loss")
    assert list(validation.get_xdata()) == [100, 200, 300]
    assert validation.get_marker() == "o" and validation.get_linestyle() == "None"


def test_recent_chart_has_twin_y_axes_over_the_last_500_steps(dashboard: Figure) -> None:
    ax = charts(dashboard)[RECENT]
    (twin,) = [other for other in dashboard.axes if other is not ax and ax.get_shared_x_axes().joined(ax, other)]
    assert twin.get_ylabel() == "accuracy (%)" and ax.get_ylabel() == "loss"
    (loss_line,), (accuracy_line,) = ax.get_lines(), twin.get_lines()
    for plotted in (loss_line, accuracy_line):
        assert plotted.get_xdata().min() == 1_200 - 499
        assert plotted.get_xdata().max() == 1_200
    assert accuracy_line.get_ydata().max() > 1  # percent
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["loss", "accuracy"]


def test_scatter_is_coloured_by_step_with_a_colour_bar(dashboard: Figure) -> None:
    ax = charts(dashboard)[SCATTER]
    (points,) = ax.collections
    assert points.colorbar is not None and points.colorbar.ax in dashboard.axes
    assert points.colorbar.ax.get_ylabel() == "step"
    np.testing.assert_array_equal(points.get_array(), np.arange(1, 1_201))


def test_table_shows_the_last_five_samples_shortened(dashboard: Figure) -> None:
    ax = charts(dashboard)[SAMPLES]
    (table,) = ax.tables
    cells = table.get_celld()
    assert max(row for row, _ in cells) == 5  # header + 5 rows
    assert [cells[0, col].get_text().get_text() for col in range(5)] == [
        "step", "prompt", "generated", "true continuation", "accuracy"]
    assert [cells[row, 0].get_text().get_text() for row in range(1, 6)] == ["30", "40", "50", "60", "70"]
    text = cells[5, 1].get_text().get_text()
    assert len(text) <= plots.SAMPLE_TEXT_CHARS and text.endswith("…")
    assert "\n" not in text and text.startswith("prompt 6 ⏎ second line")
    assert cells[5, 2].get_text().get_text() == "output 6" and cells[5, 3].get_text().get_text() == "truth 6"
    assert cells[5, 4].get_text().get_text() == "60.0 %"


def test_samples_with_dollars_and_missing_glyphs_render_without_warnings() -> None:
    odd = [{"step": 1, "prompt": "cost $5 and $x^2$ \\frac", "generated": "中文 \x00 tab\tend", "accuracy": None}]
    fig = build_dashboard(metrics(3), odd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph or a mathtext error would raise
        render(fig)
    cells = charts(fig)[SAMPLES].tables[0].get_celld()
    assert cells[1, 1].get_text().get_text() == "cost $5 and $x^2$ \\frac"
    assert cells[1, 4].get_text().get_text() == "n/a"


def test_no_samples_keeps_the_chart_with_a_note() -> None:
    ax = charts(build_dashboard(metrics(10), []))[SAMPLES]
    assert not ax.tables
    assert "no samples yet" in [text.get_text() for text in ax.texts]


@pytest.mark.parametrize("rows", [0, 1, 2])
def test_tiny_frames_render_all_seven_charts(rows: int) -> None:
    fig = build_dashboard(metrics(rows), samples(rows))
    assert list(charts(fig)) == list(CHART_TITLES)
    assert render(fig).startswith(b"\x89PNG")
    if rows == 1:  # a one-point line gets a marker, or nothing would show
        assert line(charts(fig)[LOSS], "loss").get_marker() == "o"


def test_an_empty_frame_without_columns_renders() -> None:
    fig = build_dashboard(pd.DataFrame(), [])
    assert list(charts(fig)) == list(CHART_TITLES)
    assert "no data yet" in fig.get_suptitle()


def test_nan_rows_and_missing_optional_columns() -> None:
    frame = metrics(200)
    frame.loc[frame["step"] % 3 == 0, "loss"] = np.nan
    frame.loc[5, "tokens_per_sec"] = np.inf
    fig = build_dashboard(frame, samples(2))
    raw = line(charts(fig)[LOSS], "loss")
    assert len(raw.get_xdata()) == 200 - 66 and np.isfinite(raw.get_ydata()).all()
    assert np.isfinite(charts(fig)[THROUGHPUT].get_lines()[0].get_ydata()).all()
    assert np.isinf(frame.loc[5, "tokens_per_sec"])  # the caller's frame is untouched
    render(fig)


def test_all_nan_metrics_render() -> None:
    frame = pd.DataFrame({column: [np.nan] * 3 for column in plots.REQUIRED_COLUMNS}).assign(step=[1, 2, 3])
    fig = build_dashboard(frame, [])
    assert "loss n/a" in fig.get_suptitle()
    render(fig)


def test_unsorted_and_duplicate_steps_keep_the_last_record() -> None:
    frame = metrics(4).iloc[[3, 0, 1, 2]]
    frame = pd.concat([frame, frame.iloc[[2]].assign(loss=99.0)])  # step 2 logged again
    raw = line(charts(build_dashboard(frame, []))[LOSS], "loss")
    assert list(raw.get_xdata()) == [1, 2, 3, 4]
    assert raw.get_ydata()[1] == 99.0


@pytest.mark.parametrize("dtype", ["int64", "float32", "Float64", "object"])
def test_dtype_variations(dtype: str) -> None:
    frame = metrics(50).astype({"loss": dtype, "accuracy": "float32" if dtype == "int64" else dtype,
                                "tokens_per_sec": dtype, "step": "int32" if dtype != "object" else "object"})
    if dtype == "Float64":
        frame.loc[3, "loss"] = pd.NA
    fig = build_dashboard(frame, [])
    assert line(charts(fig)[LOSS], "loss").get_ydata().dtype == np.float64


def test_missing_required_column_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="tokens_per_sec"):
        build_dashboard(metrics(5).drop(columns=["tokens_per_sec"]), [])


def test_decimation_bounds_points_and_keeps_the_extremes() -> None:
    frame = metrics(200_000)
    frame.loc[123_457, "loss"] = 42.0  # one spike and one dip that a stride would miss
    frame.loc[77_777, "loss"] = 0.5
    fig = build_dashboard(frame, [])
    for title in (LOSS, ACCURACY, THROUGHPUT, LR):
        for plotted in charts(fig)[title].get_lines():
            assert len(plotted.get_xdata()) <= plots.MAX_LINE_POINTS + 2, title
    raw = line(charts(fig)[LOSS], "loss")
    assert raw.get_ydata().max() == 42.0 and raw.get_ydata().min() == 0.5
    assert len(charts(fig)[SCATTER].collections[0].get_offsets()) <= plots.MAX_SCATTER_POINTS


def test_build_leaves_no_pyplot_figures(dashboard: Figure) -> None:
    assert plt.get_fignums() == []
    assert render(build_dashboard(metrics(20), samples(1))).startswith(b"\x89PNG")
    assert plt.get_fignums() == []


def test_plots_never_imports_pyplot() -> None:
    code = ("import sys, io; from slimtrack.dashboard.charts import build_dashboard, save_png; import pandas as pd; "
            "save_png(build_dashboard(pd.DataFrame(), []), io.BytesIO()); "
            "assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_save_png_to_a_path_has_the_figure_size(tmp_path) -> None:
    path = tmp_path / "dashboard.png"
    save_png(build_dashboard(metrics(30), [], figsize=(9, 6), dpi=50), path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (450, 300)


def test_save_png_writes_savefigs_pixels_without_the_alpha_channel(dashboard: Figure) -> None:
    ours, theirs = io.BytesIO(), io.BytesIO()
    save_png(dashboard, ours)
    dashboard.savefig(theirs, format="png", dpi=dashboard.dpi)
    with Image.open(ours) as mine, Image.open(theirs) as reference:
        assert mine.mode == "RGB" and reference.mode == "RGBA" and mine.size == reference.size
        assert reference.getextrema()[3] == (255, 255)  # opaque: dropping alpha loses nothing
        assert mine.tobytes() == reference.convert("RGB").tobytes()


def test_shorten() -> None:
    assert plots.shorten("a\nb\r\nc") == "a ⏎ b ⏎ c"
    assert plots.shorten("x" * 100) == "x" * 59 + "…"
    assert plots.shorten("  tab\there  ") == "tab here"
    assert plots.shorten(None) == "None"


def test_a_reused_dashboard_draws_exactly_what_a_fresh_one_does() -> None:
    """Dashboard.update removes the previous data: after other frames (empty, NaN-only,
    with validation points, longer), the pixels equal a fresh build's."""
    final = metrics(300).assign(val_loss=lambda f: f["loss"].where(f["step"] % 100 == 0))
    reused = plots.Dashboard(figsize=(9, 6), dpi=50)
    for frame, rows in [(metrics(1_200), samples(7)), (pd.DataFrame(), []), (metrics(1), samples(1)),
                        (pd.DataFrame({c: [np.nan] * 3 for c in plots.REQUIRED_COLUMNS}).assign(step=[1, 2, 3]), [])]:
        render(reused.update(frame, rows))
    figure = reused.update(final, samples(3))
    fresh = build_dashboard(final, samples(3), figsize=(9, 6), dpi=50)
    assert [len(ax.get_lines()) for ax in figure.axes] == [len(ax.get_lines()) for ax in fresh.axes]
    assert charts(figure)[SAMPLES].tables[0].get_celld().keys() == charts(fresh)[SAMPLES].tables[0].get_celld().keys()
    assert not charts(figure)[LOSS].texts  # the earlier "no data yet" note is gone
    with Image.open(io.BytesIO(render(figure))) as a, Image.open(io.BytesIO(render(fresh))) as b:
        assert a.size == b.size
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_save_png_at_another_dpi_scales_the_image() -> None:
    buffer = io.BytesIO()
    save_png(build_dashboard(metrics(30), [], figsize=(9, 6), dpi=50), buffer, dpi=100)
    with Image.open(buffer) as image:
        assert image.size == (900, 600)
