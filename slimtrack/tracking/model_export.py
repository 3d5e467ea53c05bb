"""The final model of a run as an MLflow model.

``log_pt2_model`` logs the model (``runs:/<id>/model``, also ``models:/<model_id>``) as an
exported program (torch.export, the 'pt2' format: loading it runs no pickled code) whose
batch and sequence dimensions are dynamic: any batch, any length from 1 to ``block_size``.

Given the run's tokenizer file, the one MLmodel carries two flavours over the same program:

- ``python_function``: text in, text out (pyfunc_model.py, stored as code in the model, which
  imports no slimtrack): ``mlflow.pyfunc.load_model(uri).predict(["prompt", ...])`` and
  ``mlflow models serve`` give continuations, with params ``max_new_tokens``, ``temperature``,
  ``top_k`` and ``seed``;
- ``pytorch``: ``mlflow.pytorch.load_model(uri)`` gives the raw module, token ids [B, T] ->
  logits [B, T, V].

The model's ``artifacts/`` folder holds ``model.pt2``, the tokenizer (its ``tokenizer.json``,
or the byte tokenizer's definition) and ``text_model.json`` (``block_size``, ``vocab_size``).
Without a tokenizer file the model is logged with the pytorch flavour only.

``--register-model NAME`` makes it a new version of NAME in the model registry, tagged with
the run's final metrics.

A run's model is logged from its final checkpoint (``log_checkpoint_model``) where the
sink runs, in the MLflow process, so the training process never imports MLflow or
``torch.export``. ``PreparedExport`` exports a model of the run's architecture in a
background thread while the run trains; the exported program shares its parameters with
that model, so at the end the final weights are copied in and the program is saved,
without a second export.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from slimtrack.runtime.priority import run_this_thread_when_idle, thread_cpu_seconds

VERSION_TAG_METRICS = ("val_loss", "val_accuracy", "val_bpb", "loss", "accuracy")  # tags of a registered version
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # the pyfunc's code, copied into the model
PROGRAM_FILE = "model.pt2"  # the name mlflow.pytorch loads from the pytorch flavour's folder
CONFIG_FILE = "text_model.json"
ARTIFACTS_DIR = "artifacts"  # where mlflow.pyfunc stores a model's artifacts


class ExportError(RuntimeError):
    """The model could not be rebuilt or exported (as opposed to the store failing)."""


class PreparedExport:
    """A model of the run's architecture and its ``torch.export``, made in a background thread.

    ``program_with(weights)`` waits for the thread, copies ``weights`` into the model and
    returns the model and the program, whose parameters are the model's own tensors (checked;
    a program that holds copies is exported again)."""

    def __init__(self, model_config: dict[str, Any], seq_len: int) -> None:
        self.model_config, self.seq_len = model_config, seq_len
        self._model: Any = None
        self._program: Any = None
        self._error: BaseException | None = None
        self._native_id: int | None = None
        self._cpu_seconds = 0.0  # the thread's CPU time, once it is done
        self._thread = threading.Thread(target=self._prepare, name="slimtrack-export", daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        """On the thread, at idle priority: it takes only CPU time the training leaves unused."""
        self._native_id = threading.get_native_id()
        run_this_thread_when_idle()
        try:
            self._model = build_model(self.model_config)
            self._program = export_program(self._model, example_ids(self.seq_len))
        except BaseException as exc:  # noqa: BLE001 — raised again where the program is wanted
            self._error = exc
        finally:
            self._cpu_seconds = time.thread_time()

    def cpu_seconds(self) -> float:
        """The CPU time the preparation took so far (the tracker leaves it out of its cost)."""
        running = thread_cpu_seconds(self._native_id) if self._thread.is_alive() and self._native_id else None
        return running if running is not None else self._cpu_seconds

    def matches(self, model_config: dict[str, Any], seq_len: int) -> bool:
        return (model_config, seq_len) == (self.model_config, self.seq_len)

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


def log_checkpoint_model(run_id: str, checkpoint: Path, model_config: dict[str, Any], seq_len: int,
                         tokenizer_file: Path | None = None, register_as: str = "",
                         prepared: PreparedExport | None = None) -> str | None:
    """Log the model whose weights the checkpoint holds (``log_pt2_model``), with the export
    ``prepared`` for this architecture when there is one. Returns the registered version.
    ExportError when the model cannot be rebuilt or exported."""
    import torch

    try:
        weights = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
        if prepared is not None and prepared.matches(model_config, seq_len):
            model, program = prepared.program_with(weights)
        else:
            model, program = build_model(model_config), None
            model.load_state_dict(weights)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 — a checkpoint that does not fit the config, a torch error
        raise ExportError(f"rebuilding the model from {checkpoint} failed: {exc}") from exc
    return log_pt2_model(run_id, model, example_ids(seq_len), register_as, tokenizer_file, program=program)


def log_pt2_model(run_id: str, model: Any, input_example: Any, register_as: str = "",
                  tokenizer_file: Path | None = None, program: Any = None) -> str | None:
    """Log the model into the run (with ``tokenizer_file``, as a text model with both
    flavours); with ``register_as``, also register it as a new version of that model, tagged
    with the run's final validation metrics. ``program``: the model's export, when it was
    made already. Returns the version."""
    import mlflow

    with mlflow.start_run(run_id=run_id):  # log_model wants an active run: ours
        if tokenizer_file is not None:
            info = log_text_model(model, input_example, Path(tokenizer_file), register_as, program)
        else:
            info = log_tensor_model(model, input_example, register_as)
    version = getattr(info, "registered_model_version", None)
    if register_as and version is not None:
        client = mlflow.MlflowClient()
        metrics = client.get_run(run_id).data.metrics
        for key in VERSION_TAG_METRICS:
            if key in metrics:
                client.set_model_version_tag(register_as, str(version), key, str(metrics[key]))
        client.set_model_version_tag(register_as, str(version), "run_id", run_id)
    return None if version is None else str(version)


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


def text_signature() -> Any:
    """Prompts (a string column ``prompt``) in, continuations (strings) out, with the
    decoding params and their defaults (pyfunc_model.PARAM_DEFAULTS)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    params = ParamSchema([ParamSpec("max_new_tokens", DataType.long, 200), ParamSpec("temperature", DataType.double, 0.8),
                          ParamSpec("top_k", DataType.long, 50), ParamSpec("seed", DataType.long, -1)])
    return ModelSignature(inputs=Schema([ColSpec(DataType.string)]),
                          outputs=Schema([ColSpec(DataType.string)]), params=params)


class TextModelFlavor:
    """What ``mlflow.models.Model.log`` calls to write the model folder: the pyfunc (code and
    artifacts), then the pytorch flavour over the same ``artifacts/model.pt2``."""

    @staticmethod
    def save_model(path: str, mlflow_model: Any, artifacts: dict[str, str], signature: Any,
                   input_example: Any, pip_requirements: list[str], validate_serving_input: bool = False) -> None:
        """Write the model into ``path``. ``validate_serving_input`` is Model.log's own (passed
        on to every flavour); the pyfunc is not run while it is logged."""
        import mlflow.pyfunc
        import torch

        mlflow.pyfunc.save_model(path, python_model=str(PYFUNC_CODE), artifacts=artifacts, mlflow_model=mlflow_model,
                                 signature=signature, input_example=input_example, pip_requirements=pip_requirements)
        program_dir = Path(path, ARTIFACTS_DIR)
        if not (program_dir / PROGRAM_FILE).is_file():
            raise RuntimeError(f"the pyfunc model holds no {ARTIFACTS_DIR}/{PROGRAM_FILE}")
        mlflow_model.add_flavor("pytorch", model_data=ARTIFACTS_DIR, pytorch_version=str(torch.__version__), code=None)
        mlflow_model.save(os.path.join(path, "MLmodel"))


def log_text_model(model: Any, input_example: Any, tokenizer_file: Path, register_as: str,
                   exported: Any = None) -> Any:
    """Log the exported program (``exported``, else exported now), the tokenizer and the
    pyfunc code as one model (both flavours)."""
    import pandas as pd
    import torch
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="slimtrack-model-") as tmp:
        program = Path(tmp) / PROGRAM_FILE
        try:
            torch.export.save(exported if exported is not None else export_program(model, input_example), str(program))
        except Exception as exc:  # noqa: BLE001 — a model torch.export cannot trace
            raise ExportError(f"exporting the model failed: {exc}") from exc
        config = Path(tmp) / CONFIG_FILE
        config.write_text(json.dumps({"block_size": int(model.config.block_size),
                                      "vocab_size": int(model.config.vocab_size)}) + "\n", encoding="utf-8")
        artifacts = {"program": str(program), "tokenizer": str(tokenizer_file), "config": str(config)}
        return Model.log(artifact_path=None, name="model", flavor=TextModelFlavor, flavor_name="python_function",
                         registered_model_name=register_as or None,
                         artifacts=artifacts, signature=text_signature(),
                         input_example=pd.DataFrame({"prompt": ["The "]}),
                         pip_requirements=requirements(needs_tokenizers=not _is_byte_definition(tokenizer_file)),
                         validate_serving_input=False)


def requirements(needs_tokenizers: bool) -> list[str]:
    """The pip requirements of the text model: torch (and tokenizers for a tokenizer.json)."""
    import torch

    reqs = [f"torch=={torch.__version__.split('+')[0]}"]
    if needs_tokenizers:
        import tokenizers

        reqs.append(f"tokenizers=={tokenizers.__version__}")
    return reqs


def _is_byte_definition(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") == "byte"


def log_tensor_model(model: Any, input_example: Any, register_as: str) -> Any:
    """Log the exported program alone, as an MLflow PyTorch model (token ids in, logits out)."""
    import mlflow.pytorch
    import torch

    # The signature comes from one forward pass of the model in memory: MLflow would
    # otherwise infer it, and check the serving example, by saving, loading and running
    # the exported model, which gives the same signature and the same files.
    return mlflow.pytorch.log_model(model, name="model", serialization_format="pt2", input_example=input_example,
                                    signature=model_signature(model, input_example),
                                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                    registered_model_name=register_as or None, validate_serving_input=False)


def model_signature(model: Any, input_example: Any) -> Any:
    """The MLflow signature of ``model`` on ``input_example`` (token ids in, logits out)."""
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.from_numpy(input_example))
    if isinstance(output, tuple):
        output = output[0]
    return infer_signature(input_example, output.detach().cpu().numpy())
