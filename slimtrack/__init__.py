"""slimtrack: train a GPT on SlimPajama and watch it learn in MLflow."""

__version__ = "0.1.0"
