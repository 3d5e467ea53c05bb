"""slimtrack: train a GPT on SlimPajama and watch it learn in MLflow."""

import importlib.util
import os
import sys
from pathlib import Path

__version__ = "0.1.0"

# numba's threading layer is slimtrack's choice (native/threads.py) unless the user set
# NUMBA_THREADING_LAYER, which is then kept. Nothing is written to the environment: a child
# process (a benchmark's `slimtrack train`, a torchrun worker) makes its own choice instead
# of inheriting ours as if the user had made it.
NUMBA_THREADING_LAYER_FROM_USER = os.environ.get("NUMBA_THREADING_LAYER")


def _load_native_from_checkout() -> None:
    """Installed, setuptools maps the repo's ``native/`` to ``slimtrack.native``.
    Run from a source checkout (``mlflow run .``, ``python -m slimtrack`` in the
    repo root) there is no such mapping, so point ``slimtrack.native`` at
    ``../native`` ourselves."""
    if "slimtrack.native" in sys.modules or importlib.util.find_spec("slimtrack.native") is not None:
        return
    native = Path(__file__).resolve().parent.parent / "native"
    if not (native / "__init__.py").is_file():
        return
    spec = importlib.util.spec_from_file_location(
        "slimtrack.native", native / "__init__.py", submodule_search_locations=[str(native)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["slimtrack.native"] = module
    spec.loader.exec_module(module)


_load_native_from_checkout()
