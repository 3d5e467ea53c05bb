"""How long the seven-chart dashboard takes to render, by run length.

    python benchmarks/dashboard.py            # markdown table on stdout
    python benchmarks/dashboard.py --png out.png --steps 2000   # also write a sample image

Median of 3, on synthetic but realistic metrics: a decaying noisy loss, rising accuracy,
noisy throughput, a warmup + cosine learning rate, and 5 text samples. Two slimtrack
renders are timed: "reused" is what the training run does every viz interval (one
``plots.Dashboard`` kept for the run: ``update`` + PNG into memory), "fresh" is
``build_dashboard`` + PNG (a new figure: ``slimtrack report``, notebooks). A naive
dashboard (every point plotted, tight_layout, default ticks) runs side by side as the
baseline, so the ratio column holds even on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import statistics
import time

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from slimtrack.dashboard.charts import Dashboard, build_dashboard, save_png
from slimtrack.dashboard.manager import HISTORY_EXPORT_SHARE

SIZES = (1_000, 10_000, 100_000, 1_000_000)
REPEATS = 3
NAIVE_MAX_STEPS = 100_000  # the naive baseline takes ~20 s a render at 1M steps


def synthetic_metrics(n_steps: int, seed: int = 0) -> pd.DataFrame:
    """A run of ``n_steps`` TrainingMetrics rows that looks like a real one."""
    rng = np.random.default_rng(seed)
    step = np.arange(1, n_steps + 1)
    loss = 2.2 + 8.6 * np.exp(-step / max(n_steps / 8, 1)) + rng.normal(0, 0.12, n_steps)
    accuracy = np.clip(0.05 + 0.5 * (1 - np.exp(-step / max(n_steps / 6, 1))) + rng.normal(0, 0.02, n_steps), 0, 1)
    tokens_per_sec = 48_000 + rng.normal(0, 2_500, n_steps) - 9_000 * (rng.random(n_steps) < 0.01)
    warmup = max(n_steps // 20, 1)
    cosine = 6e-5 + 0.5 * (6e-4 - 6e-5) * (1 + np.cos(np.pi * np.clip((step - warmup) / max(n_steps - warmup, 1), 0, 1)))
    learning_rate = np.where(step < warmup, 6e-4 * step / warmup, cosine)
    val_loss = np.where(step % max(n_steps // 20, 1) == 0, loss - 0.05, np.nan)
    return pd.DataFrame({
        "step": step,
        "timestamp": 1.7e9 + 0.25 * step,
        "loss": loss,
        "accuracy": accuracy,
        "tokens_per_sec": tokens_per_sec,
        "learning_rate": learning_rate,
        "grad_norm": np.abs(rng.normal(1.0, 0.3, n_steps)),
        "step_time_ms": 250 + rng.normal(0, 10, n_steps),
        "tokens_seen": step * 12_288,
        "val_loss": val_loss,
    })


def synthetic_samples(last_step: int) -> list[dict]:
    """Five text samples, the kind the trainer records every viz interval."""
    texts = [
        ("The history of the Roman Empire spans", " more than a thousand years, from the founding of\nthe city to the fall of Constantinople in 1453."),
        ("def fibonacci(n):\n    ", "if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)"),
        ("Photosynthesis converts light energy", " into chemical energy stored in glucose, using $CO_2$ and water."),
        ("In 2019 the team released", " the first version of the library, which quickly became popular."),
        ("Q: What is the capital of France?\nA:", " Paris is the capital and largest city of France."),
    ]
    step0 = max(last_step - 4 * 25, 0)
    return [
        {"step": step0 + 25 * i, "input": prompt, "output": output, "accuracy": 0.3 + 0.05 * i}
        for i, (prompt, output) in enumerate(texts)
    ]


def naive_dashboard(frame: pd.DataFrame, samples: list[dict]) -> Figure:
    """The baseline: the same seven charts with every point plotted and tight_layout."""
    df = frame.sort_values("step").drop_duplicates("step", keep="last")
    step, loss, accuracy = df["step"], df["loss"], 100 * df["accuracy"]
    fig = Figure(figsize=(18, 12), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 3)
    axes = [fig.add_subplot(grid[i // 3, i % 3]) for i in range(6)] + [fig.add_subplot(grid[2, :])]
    for ax, values, colour in ((axes[0], loss, "tab:blue"), (axes[1], accuracy, "tab:green")):
        ax.plot(step, values, color=colour, alpha=0.4)
        ax.plot(step, values.rolling(50, min_periods=1).mean(), lw=2)
    axes[1].set_ylim(0, 100)
    axes[2].plot(step, df["tokens_per_sec"], color="tab:purple")
    axes[3].plot(step, df["learning_rate"].where(df["learning_rate"] > 0), color="tab:orange")
    axes[3].set_yscale("log")
    fig.colorbar(axes[4].scatter(loss, accuracy, c=step, s=8), ax=axes[4], label="step")
    recent = df[step > step.iloc[-1] - 500]
    axes[5].plot(recent["step"], recent["loss"])
    axes[5].twinx().plot(recent["step"], 100 * recent["accuracy"], color="tab:green")
    for ax, title in zip(axes, ("loss", "accuracy", "throughput", "lr", "loss vs accuracy", "recent", "samples")):
        ax.set(title=title, xlabel="step", ylabel=title)
    axes[6].axis("off")
    rows = [[s["step"], s["input"][:60], s["output"][:60], f"{100 * s['accuracy']:.1f} %"] for s in samples[-5:]]
    axes[6].table(cellText=rows, colLabels=["step", "input", "output", "accuracy"], loc="center")
    fig.tight_layout()
    return fig


def _time_once(build, frame: pd.DataFrame, samples: list[dict]) -> tuple[float, float]:
    start = time.perf_counter()
    fig = build(frame, samples)
    built = time.perf_counter()
    save_png(fig, io.BytesIO())
    return built - start, time.perf_counter() - built


TARGETS = {100_000: 0.7, 1_000_000: 1.5}  # seconds per render, from the dashboard issue


def render_times(sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS, naive_max_steps: int = NAIVE_MAX_STEPS) -> str:
    """Markdown table per run length (median of ``repeats`` seconds): the reused render
    (update, savefig, total), the fresh one, and the naive baseline, interleaved in one process."""
    lines = [
        f"Dashboard render time in seconds, median of {repeats} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
        f"{datetime.date.today().isoformat()})",
        "",
        "| steps | reused: update | savefig | **total** | fresh total | naive total | naive / reused | target |",
        "|------:|------:|--------:|------:|------:|------------:|--------------:|:--|",
    ]
    dashboard = Dashboard()
    for build in (dashboard.update, build_dashboard, naive_dashboard):  # warm up imports and font caches
        _time_once(build, synthetic_metrics(100), synthetic_samples(100))
    for n_steps in sizes:
        frame, samples = synthetic_metrics(n_steps), synthetic_samples(n_steps)
        reused, fresh, naive = [], [], []
        for _ in range(repeats):
            reused.append(_time_once(dashboard.update, frame, samples))
            fresh.append(sum(_time_once(build_dashboard, frame, samples)))
            if n_steps <= naive_max_steps:
                naive.append(sum(_time_once(naive_dashboard, frame, samples)))
        update = statistics.median(b for b, _ in reused)
        save = statistics.median(s for _, s in reused)
        total = statistics.median(b + s for b, s in reused)
        baseline = f"{statistics.median(naive):.3f} | {statistics.median(naive) / total:.1f}x" if naive else "— | —"
        target = TARGETS.get(n_steps)
        verdict = (f"< {target} s: {'met' if total < target else '**not met**'}" if target else "")
        lines.append(f"| {n_steps:,} | {update:.3f} | {save:.3f} | **{total:.3f}** | {statistics.median(fresh):.3f} "
                     f"| {baseline} | {verdict} |")
    return "\n".join(lines)


def history_costs(n_steps: int = 100_000) -> str:
    """What a render at step ``n_steps`` spends on the history besides the figure: the frame
    and the JSON export from MetricHistory's columns vs from a list of records (the way
    slimtrack did it before: O(steps) of Python objects on every render)."""
    from slimtrack.metrics import MetricHistory, TrainingMetrics, records_frame

    def records_json(records: list) -> str:  # the old export: a dict per record, json.dumps
        import json
        return json.dumps([record.as_row() for record in records], indent=1)

    frame = synthetic_metrics(n_steps)
    records = [TrainingMetrics(**row, loss_by_source={"PythonDocs": 2.0}) for row in frame.drop(columns="val_loss").to_dict("records")]
    history = MetricHistory(records)
    history.frame()  # moves the queued records into the columns, as the renders before this one did
    timings = {}
    for name, call in [("frame from records", lambda: records_frame(records)),
                       ("frame from MetricHistory", history.frame),
                       ("JSON from records", lambda: records_json(records)),
                       ("JSON from MetricHistory", history.to_json)]:
        started = time.perf_counter()
        call()
        timings[name] = time.perf_counter() - started
    return (f"at {n_steps:,} steps: frame {timings['frame from MetricHistory'] * 1e3:.1f} ms "
            f"(from a list of records: {timings['frame from records'] * 1e3:.0f} ms); "
            f"metrics_history.json {timings['JSON from MetricHistory']:.2f} s "
            f"(json.dumps of records: {timings['JSON from records']:.2f} s), rewritten at most "
            f"{100 * HISTORY_EXPORT_SHARE:.0f} % of wall time between checkpoints")


# --------------------------------------------------------------------------------------
# The training thread's cost per viz interval, with the render happening off-thread.
# --------------------------------------------------------------------------------------
def _simulated_loop(steps: int, interval: int, render: bool) -> tuple[float, list[float]]:
    """A loop of torch matmul "steps" feeding a VisualizationManager (renders off-thread when
    ``render``). Returns the loop's wall time and the per-interval time spent in viz.update()."""
    import tempfile

    import torch

    from slimtrack.metrics import TrainingMetrics
    from slimtrack.tracking import NullTracker
    from slimtrack.dashboard.manager import VisualizationManager

    a = torch.randn(384, 384)
    with tempfile.TemporaryDirectory() as tmp:
        viz = VisualizationManager(tmp, NullTracker(), interval if render else 10**9)
        viz.wait_for_renderer()  # its process starts and warms up during a run's set-up, not in its loop
        in_update, per_interval = 0.0, []
        started = time.perf_counter()
        for step in range(1, steps + 1):
            for _ in range(20):  # ~10-20 ms of real compute, like a small CPU step
                a = torch.tanh(a @ a * 1e-3)
            record = TrainingMetrics(step=step, loss=1.0 / step, accuracy=0.5, tokens_per_sec=1e4,
                                     learning_rate=1e-3, timestamp=time.time())
            t0 = time.perf_counter()
            viz.update(record, {"step": step, "input": "x", "output": "y", "accuracy": 0.5} if step % 10 == 0 else None)
            in_update += time.perf_counter() - t0
            if step % interval == 0:
                per_interval.append(in_update)
                in_update = 0.0
        wall = time.perf_counter() - started
        viz.close()
    return wall, per_interval


def training_thread_cost(steps: int = 200, interval: int = 50) -> str:
    """Training-thread time per viz interval, and the whole loop's slowdown from rendering in
    the background (the render process shares the cores), alternated over 2 repetitions."""
    with_render, without = [], []
    update_ms = []
    for _ in range(2):
        wall, per_interval = _simulated_loop(steps, interval, render=True)
        with_render.append(wall)
        update_ms.extend(t * 1000 for t in per_interval)
        without.append(_simulated_loop(steps, interval, render=False)[0])
    slowdown = statistics.median(with_render) / statistics.median(without)
    return (f"median time in viz.update() per {interval}-step interval: {statistics.median(update_ms):.3f} ms "
            f"(max {max(update_ms):.3f} ms); loop of {steps} compute steps with a render every {interval} "
            f"steps: {statistics.median(with_render):.2f} s vs {statistics.median(without):.2f} s without "
            f"rendering ({slowdown:.3f}x wall time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--png", help="also write a dashboard of --steps synthetic steps to this path")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    args = parser.parse_args()
    if args.png:
        save_png(build_dashboard(synthetic_metrics(args.steps), synthetic_samples(args.steps)), args.png)
        print(f"wrote {args.png}")
    print(render_times(tuple(args.sizes)))
    print()
    print("History per render:", history_costs())
    print()
    print("Training-thread cost per viz interval:", training_thread_cost())


if __name__ == "__main__":
    main()
