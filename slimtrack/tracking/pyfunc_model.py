"""The pyfunc flavour of a run's model: prompts in, continuations out, without slimtrack.

MLflow loads this file as the model's code ("models from code": the file is copied into the
model's folder and run at load time, and once when the model is saved), so it imports only
pandas and mlflow, and torch (plus ``tokenizers`` for a model trained with a
``tokenizer.json``) where the model is loaded and run, not where it is saved. It never
imports slimtrack: the logged model loads where slimtrack is not installed.

The model's artifacts (model_export.py writes them):

- ``program``: ``model.pt2``, the exported GPT (torch.export): token ids [B, T] -> logits
  [B, T, V], for any B and any T from 1 to ``block_size``;
- ``tokenizer``: the run's ``tokenizer.json``, or the byte tokenizer's definition (a small
  JSON with ``"kind": "byte"``);
- ``config``: ``text_model.json``, the model's ``block_size`` and ``vocab_size``.

``predict`` takes prompts (a list of strings, or a DataFrame with a ``prompt`` column) and
returns one continuation per prompt (a list of strings). Each prompt is continued on its own,
one token at a time: every step runs the last ``block_size`` tokens through the program and
draws the next token from the last position's logits (no KV cache). ``temperature`` 0 takes
the argmax; otherwise the logits are divided by the temperature, cut to the ``top_k`` most
likely tokens (0: all) and sampled, with ``seed`` (-1: unseeded) seeding one generator for
the whole call. Generation of a prompt stops at the end-of-document token, which the
continuation does not include; an empty prompt starts after one (a new document).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

if TYPE_CHECKING:
    import torch

# The params of ``predict`` and their defaults (the model signature's ParamSchema).
PARAM_DEFAULTS: dict[str, Any] = {"max_new_tokens": 200, "temperature": 0.8, "top_k": 50, "seed": -1}
# Special tokens that end a document in a tokenizer.json, most specific first; a tokenizer
# with none of them gets "<|endoftext|>" added (as slimtrack's training did).
EOS_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]", "<|im_end|>")
EOS_MARKER = "<|endoftext|>"


class ByteCodec:
    """UTF-8 bytes as tokens 0-255, end of document 256 (the byte tokenizer's definition)."""

    def __init__(self, definition: dict[str, Any]) -> None:
        self.eos_id = int(definition.get("eos_id", 256))
        self.size = 256 if self.eos_id < 256 else self.eos_id + 1  # the ids it ever produces

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", errors="replace"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HuggingFaceCodec:
    """A ``tokenizers`` tokenizer.json, with its end-of-document token (found or added)."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(path)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.eos_id = self._eos_id()
        self.size = max(max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1, self.eos_id + 1)

    def _eos_id(self) -> int:
        for token in EOS_TOKENS:
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:
                return int(token_id)
        self.tokenizer.add_special_tokens([EOS_MARKER])
        return int(self.tokenizer.token_to_id(EOS_MARKER))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if 0 <= i < self.size], skip_special_tokens=False)


def load_codec(path: str) -> ByteCodec | HuggingFaceCodec:
    """The tokenizer stored at ``path``: the byte definition, or a tokenizer.json."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and data.get("kind") == "byte":
        return ByteCodec(data)
    return HuggingFaceCodec(path)


def prompts_of(model_input: Any) -> list[str]:
    """The prompts of a list (or array) of strings, a string, or a DataFrame whose ``prompt``
    column (or only column) holds them."""
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):  # a pandas DataFrame
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return ["" if value is None else str(value) for value in model_input[column].tolist()]
    if hasattr(model_input, "tolist"):  # a numpy array or a pandas Series
        model_input = model_input.tolist()
    return ["" if value is None else str(value) for value in model_input]


def settings_of(params: dict[str, Any] | None) -> dict[str, Any]:
    """The decoding settings: ``params`` over the defaults, checked."""
    merged = {**PARAM_DEFAULTS, **{k: v for k, v in (params or {}).items() if v is not None}}
    settings = {"max_new_tokens": int(merged["max_new_tokens"]), "temperature": float(merged["temperature"]),
                "top_k": int(merged["top_k"]), "seed": int(merged["seed"])}
    if settings["max_new_tokens"] < 0:
        raise ValueError(f"max_new_tokens must not be negative, got {settings['max_new_tokens']}")
    if not settings["temperature"] >= 0:
        raise ValueError(f"temperature must be >= 0, got {settings['temperature']}")
    if settings["top_k"] < 0:
        raise ValueError(f"top_k must be >= 0 (0: all tokens), got {settings['top_k']}")
    return settings


def pick_next(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> int:
    """The next token from one position's logits ([V], padding ids already at -inf)."""
    import torch

    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, num_samples=1, generator=generator))


def continue_ids(module: Any, ids: list[int], settings: dict[str, Any], block_size: int, size: int,
                 eos_id: int, generator: torch.Generator | None) -> list[int]:
    """The new token ids after ``ids``, up to ``max_new_tokens`` and before the first EOS.
    ``size`` is the number of ids the tokenizer produces: the padding ids above it are never drawn."""
    import torch

    idx = torch.tensor([ids], dtype=torch.int64)  # [1, T]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(settings["max_new_tokens"]):
            out = module(idx[:, -block_size:])  # the window the model sees: [1, T', V]
            logits = (out[0] if isinstance(out, tuple) else out)[0, -1]  # [V]
            logits[size:] = float("-inf")
            token = pick_next(logits, settings["temperature"], settings["top_k"], generator)
            if token == eos_id:
                break
            new.append(token)
            idx = torch.cat([idx, torch.tensor([[token]], dtype=torch.int64)], dim=1)
    return new


def continuation_text(codec: ByteCodec | HuggingFaceCodec, prompt: list[int], new: list[int]) -> str:
    """The text the new ids add after the prompt's: decoded together, so a character or a
    word that spans the boundary comes out whole."""
    head = codec.decode(prompt)
    full = codec.decode(prompt + new)
    return full[len(head):] if full.startswith(head) else codec.decode(new)


class TextModel(PythonModel):
    """Prompts in, continuations out (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        import torch

        self.module = torch.export.load(context.artifacts["program"]).module()
        with open(context.artifacts["config"], encoding="utf-8") as f:
            config = json.load(f)
        self.block_size = int(config["block_size"])
        self.codec = load_codec(context.artifacts["tokenizer"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        """One continuation per prompt of ``model_input`` (MLflow hands a list of prompts over
        as a one-column DataFrame), decoded with ``params``."""
        import torch

        settings = settings_of(params)
        generator = None
        if settings["seed"] >= 0:
            generator = torch.Generator().manual_seed(settings["seed"])
        codec = self.codec
        continuations = []
        for prompt in prompts_of(model_input):
            ids = codec.encode(prompt) or [codec.eos_id]  # an empty prompt starts a new document
            new = continue_ids(self.module, ids, settings, self.block_size, codec.size, codec.eos_id, generator)
            continuations.append(continuation_text(codec, ids, new))
        return continuations


set_model(TextModel())
