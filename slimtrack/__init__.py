"""slimtrack: train a GPT on SlimPajama and watch it learn in MLflow."""

import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"


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
