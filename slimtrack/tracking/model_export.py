"""The final model of a run as an MLflow model.

``log_pt2_model`` logs an MLflow PyTorch model (``runs:/<id>/model``) in the 'pt2'
(torch.export) format: loading it runs no pickled code.
"""

from __future__ import annotations

from typing import Any


def log_pt2_model(run_id: str, model: Any, input_example: Any) -> None:
    import mlflow
    import mlflow.pytorch
    import torch

    with mlflow.start_run(run_id=run_id):  # log_model wants an active run: ours
        mlflow.pytorch.log_model(model, name="model", serialization_format="pt2", input_example=input_example,
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
