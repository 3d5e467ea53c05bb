"""The final model's program: ``torch.export`` of the trained GPT, written as a ``.pt2`` file.

``write_program`` rebuilds the model from a checkpoint and exports it, in the calling
process. A tracked run does it ahead, in a process of its own: the MLflow process starts an
:class:`ExportProcess` for a run that logs its model. That process runs at idle priority
(Linux SCHED_IDLE: only on CPU time nothing else wants) and has its own interpreter, so
the MLflow process's deliveries never wait for it. It imports torch and the exporter, builds
a model of the run's architecture (known when the run starts) and exports it
(:class:`PreparedExport`). The exported program shares its parameters with that model, so
at the run's end ``write_program`` copies the final weights in and saves the program,
without exporting again. Once the run waits for that program, the process leaves the idle
class (``leave_idle_priority``), so a busy machine cannot starve the run's end.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from slimtrack.config import Config
from slimtrack.runtime.child import ChildGone, ChildProcess
from slimtrack.runtime.priority import leave_idle_priority

EXPORT_MODULE = "slimtrack.tracking.export"


def model_to_export(config: Config) -> tuple[dict[str, Any] | None, int]:
    """The model a run logs at its end (its ModelConfig fields) and its input length, for the
    MLflow process to export ahead; (None, 0) when the run logs no model, or the program
    cache holds its architecture's program (the training process then writes the program)."""
    from slimtrack.tracking.program_cache import ProgramCache

    if not (config.tracking.enabled and config.tracking.log_model):
        return None, 0
    cache, model_config, seq_len = ProgramCache.of_run(config)
    if cache.template(model_config, seq_len) is not None:
        return None, 0
    return model_config, seq_len


class ExportError(RuntimeError):
    """The model could not be rebuilt or exported (as opposed to the store failing)."""


class PreparedExport:
    """A model of ``model_config`` and its export, made on a thread of this process.

    ``program_with(weights)`` waits for the thread, copies ``weights`` into the model and
    returns the model and the program, whose parameters are the model's own tensors (checked;
    a program that holds copies is exported again)."""

    def __init__(self, model_config: dict[str, Any], seq_len: int) -> None:
        self.model_config, self.seq_len = model_config, seq_len
        self._model: Any = None
        self._program: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="slimtrack-export", daemon=True)
        self._thread.start()

    def matches(self, model_config: dict[str, Any], seq_len: int) -> bool:
        return (model_config, seq_len) == (self.model_config, self.seq_len)

    def _run(self) -> None:
        try:
            self._model = build_model(self.model_config)
            self._program = export_program(self._model, example_ids(self.seq_len))
        except BaseException as exc:  # noqa: BLE001 — raised again where the program is wanted
            self._error = exc

    def program_with(self, weights: dict[str, Any]) -> tuple[Any, Any]:
        self._thread.join()
        if self._error is not None:
            raise ExportError(f"exporting the model failed: {self._error}") from self._error
        model, program = self._model, self._program
        model.load_state_dict(weights)
        own = {name: tensor.data_ptr() for name, tensor in model.state_dict().items()}
        if any(own.get(name) != tensor.data_ptr() for name, tensor in program.state_dict.items()):
            program = export_program(model, example_ids(self.seq_len))
        return model, program


def build_model(model_config: dict[str, Any]) -> Any:
    """A GPT of ``model_config`` (the ModelConfig fields) on the CPU, in eval mode, torch kernels."""
    from slimtrack.config import ModelConfig
    from slimtrack.train.model import GPT

    return GPT(ModelConfig(**model_config), "torch").eval()


def example_ids(seq_len: int) -> Any:
    """[2, seq_len] token ids: with a batch of 1, torch.export specialises the batch dimension
    to 1 (and warns); with 2 it stays dynamic, so the logged model takes any batch."""
    import numpy as np

    return np.zeros((2, seq_len), dtype=np.int64)


def export_program(model: Any, input_example: Any) -> Any:
    """``torch.export`` of ``model`` with a dynamic batch and a dynamic sequence length from 1
    to the model's ``block_size``. ``input_example``: token ids [B, T] (numpy or torch), B >= 2
    (torch.export specialises a dimension of size 1 to a constant)."""
    import torch
    from torch.export import Dim

    example = torch.as_tensor(input_example, dtype=torch.int64)
    block_size = int(model.config.block_size)
    dims = {0: Dim("batch", min=1), 1: Dim("seq", min=1, max=block_size)}
    return torch.export.export(model, (example,), dynamic_shapes=(dims,))


def load_model(checkpoint: Path, model_config: dict[str, Any]) -> Any:
    """The model whose weights the checkpoint's ``model`` entry holds (ExportError if they do
    not fit ``model_config``, or the file is no checkpoint)."""
    import torch

    try:
        model = build_model(model_config)
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"rebuilding the model from {checkpoint} failed: {exc}") from exc
    return model


def write_program(checkpoint: Path, model_config: dict[str, Any], seq_len: int, out: Path,
                  prepared: PreparedExport | None = None) -> None:
    """The checkpoint's model, exported (by ``prepared`` when it holds this architecture), into
    the ``.pt2`` file ``out``. ExportError when it cannot be rebuilt or exported."""
    import torch

    try:
        if prepared is not None and prepared.matches(model_config, seq_len):
            weights = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
            _, program = prepared.program_with(weights)
        else:
            program = export_program(load_model(checkpoint, model_config), example_ids(seq_len))
        torch.export.save(program, str(out))
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 — a checkpoint that does not fit, a model torch.export cannot trace
        raise ExportError(f"exporting the model failed: {exc}") from exc


class ExportProcess:
    """``write_program`` in a child process at idle priority, prepared from the start for a
    model of ``model_config`` (module docstring). When the child cannot start or dies, the
    program is written in this process instead."""

    def __init__(self, model_config: dict[str, Any], seq_len: int, awaited_nice: int = 10) -> None:
        self.awaited_nice = awaited_nice  # its priority once a program is awaited (the run's background_nice)
        try:
            self._child: ChildProcess | None = ChildProcess(EXPORT_MODULE, args=[json.dumps([model_config, seq_len])])
        except ChildGone:
            self._child = None

    def write_program(self, checkpoint: Path, model_config: dict[str, Any], seq_len: int, out: Path) -> None:
        if self._child is not None:
            # Now the run waits for it: it must not starve at idle priority behind a busy machine.
            leave_idle_priority(self._child.pid, self.awaited_nice)
            try:
                self._child.ask((str(checkpoint), model_config, seq_len, str(out)))
                return
            except ChildGone:
                self._child = None
        write_program(checkpoint, model_config, seq_len, out)

    def close(self) -> None:
        """End the process at once: every program asked for is written, and a process at idle
        priority could take long to get the CPU time to exit on its own."""
        if self._child is not None:
            self._child.kill()


# ---- in the child ------------------------------------------------------------------------------
def main(model_config: dict[str, Any], seq_len: int) -> None:
    import os

    from slimtrack.runtime.child import serve
    from slimtrack.runtime.priority import run_this_thread_when_idle

    run_this_thread_when_idle()  # before any thread starts: torch's and the export's inherit it
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # an export needs one thread; the training has the cores
    prepared = PreparedExport(model_config, seq_len)

    def answer(request: tuple[str, dict[str, Any], int, str]) -> None:
        checkpoint, config, length, out = request
        write_program(Path(checkpoint), config, length, Path(out), prepared)

    serve(answer)
    sys.stderr.flush()
    os._exit(0)  # every request was answered: the interpreter's teardown would only hold the parent


if __name__ == "__main__":
    # The module's own name, not __main__: ExportError pickles as slimtrack.tracking.export's.
    from slimtrack.tracking.export import main as serve_exports

    serve_exports(*json.loads(sys.argv[1]))
