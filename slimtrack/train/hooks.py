"""What the loop calls after each step: rank 0's console and tracking, the other ranks' share.

``fit`` (loop.py) calls ``on_step`` with each record, ``on_checkpoint`` every
``checkpoint_interval`` steps and ``stop_requested`` at each step; these classes supply
them. The order of side effects after a step is: the tracker (returns at once), the
dashboard bookkeeping (at each viz interval it continues the fixed validation prompts with
the model, then renders off the training thread), the console.
"""

from __future__ import annotations

import sys
from typing import Callable

from tqdm import tqdm

from slimtrack.config import Config
from slimtrack.dashboard.manager import VisualizationManager
from slimtrack.data.readers import SkipStats
from slimtrack.metrics import TrainingMetrics
from slimtrack.tracking import Tracker
from slimtrack.train.loop import LoopHooks
from slimtrack.train.signals import StopFlag


class WorkerHooks(LoopHooks):
    """Ranks other than 0: no tracking, no files, no console; they join checkpoints and stops."""

    def __init__(self, save: Callable[[int], None], stop: StopFlag) -> None:
        self.save, self.stop = save, stop

    def on_checkpoint(self, step: int) -> None:
        self.save(step)

    def stop_requested(self) -> bool:
        return self.stop.requested


class ConsoleAndTrackingHooks(LoopHooks):
    """After each step: MLflow (non-blocking), dashboard bookkeeping, progress bar, log line."""

    def __init__(self, config: Config, tracker: Tracker, viz: VisualizationManager, skips: SkipStats,
                 save: Callable[[int], None], stop: StopFlag) -> None:
        self.config, self.tracker, self.viz, self.skips, self.save = config, tracker, viz, skips, save
        self.stop = stop
        self.bar = tqdm(total=config.train.max_chunks, desc="train", unit="step", dynamic_ncols=True,
                        file=sys.stderr, mininterval=1.0,
                        disable=None)  # no bar when stderr is not a terminal (CI, logs)
        self.skips_logged = 0

    def on_step(self, record: TrainingMetrics) -> None:
        self.tracker.log_record(record)
        if self.skips.total != self.skips_logged:
            self.skips_logged = self.skips.total
            self.tracker.log_metrics({"data/skipped_records": float(self.skips_logged)}, record.step)
        self.viz.update(record)  # at a viz interval, the text samples are taken there
        self.bar.set_postfix(loss=f"{record.loss:.3f}", acc=f"{record.accuracy * 100:.1f}%",
                             tok_s=f"{record.tokens_per_sec:,.0f}", refresh=False)
        self.bar.update(1)
        if record.step % self.config.train.log_interval == 0 or record.val_loss is not None:
            self.bar.write(record.console_line(), file=sys.stderr)

    def on_checkpoint(self, step: int) -> None:
        self.save(step)

    def stop_requested(self) -> bool:
        return self.stop.requested

    def close(self) -> None:
        self.bar.close()
