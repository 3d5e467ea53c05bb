"""The baseline: the plain PyTorch loop a nanoGPT user would write for the same job.

    python benchmarks/reference_loop.py [--preset small] [--tokenizer byte|PATH] [--max-chunks 30]
                                        [--out steps.json]

Same model (slimtrack.train.model.GPT with the preset's ModelConfig), same data (ChunkStream over
the embedded corpus's train split, same tokenizer, batch and sequence length), same
optimizer (torch AdamW, two param groups, the preset's lr/betas/eps/weight decay, warmup +
cosine from slimtrack.train.loop.learning_rate, grad clip 1.0), F.cross_entropy + argmax
accuracy, the same thread count. No tracking, no dashboards, no samples, no evaluation.

Each step's row has the keys end_to_end.py reads from slimtrack's metrics_history.json
(step, tokens_per_sec, timestamp, tokens_seen, step_time_ms, data_wait_ms, loss,
accuracy), written as JSON to --out or printed one line per step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from slimtrack.config import Config, build_config
from slimtrack.data.chunks import ChunkStream
from slimtrack.data.documents import SkipStats, iter_documents
from slimtrack.train.model import GPT
from slimtrack.native.threads import configure_threads
from slimtrack.data.tokenizer import load_tokenizer
from slimtrack.train.loop import learning_rate, resolve_device


def build_model_and_optimizer(config: Config) -> tuple[GPT, torch.optim.Optimizer]:
    torch.manual_seed(config.train.seed)
    model = GPT(config.model)
    cfg = config.train
    optimizer = torch.optim.AdamW(model.param_groups(cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    return model, optimizer


def train_step(model: GPT, optimizer: torch.optim.Optimizer, tokens: torch.Tensor, lr: float,
               grad_clip: float) -> tuple[float, float]:
    """One optimizer step on tokens [B, T+1]; returns (loss, accuracy)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    tokens = tokens.to(next(model.parameters()).device, non_blocking=True)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # [B, T] each
    # bf16 autocast on CUDA as nanoGPT (and slimtrack) do; CPU stays fp32.
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=tokens.is_cuda):
        logits = model(inputs)  # [B, T, V]
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
    accuracy = (logits.detach().argmax(dim=-1) == targets).float().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item(), accuracy.item()


def train(config: Config) -> Iterator[dict]:
    """The loop; one row per step, timed like slimtrack's trainer times its steps."""
    tokenizer = load_tokenizer(config.data.tokenizer)
    config.model.vocab_size = tokenizer.vocab_size
    model, optimizer = build_model_and_optimizer(config)
    model.to(resolve_device(config.train.device)).train()
    documents = iter_documents(config.data.dataset, "train", SkipStats())
    chunks = iter(ChunkStream(documents, tokenizer, config.data.batch_size, config.data.seq_len,
                              max_chunks=config.train.max_chunks))
    tokens_seen = 0
    for step in range(1, config.train.max_chunks + 1):
        wait_started = time.perf_counter()
        chunk = next(chunks, None)
        started = time.perf_counter()
        if chunk is None:
            break
        loss, accuracy = train_step(model, optimizer, chunk.tokens, learning_rate(step, config.train),
                                    config.train.grad_clip)
        seconds = time.perf_counter() - started
        tokens = chunk.tokens[:, 1:].numel()
        tokens_seen += tokens
        yield {"step": step, "tokens_per_sec": tokens / seconds, "timestamp": time.time(),
               "tokens_seen": tokens_seen, "step_time_ms": seconds * 1e3,
               "data_wait_ms": (started - wait_started) * 1e3, "loss": loss, "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--tokenizer", default="byte")
    parser.add_argument("--max-chunks", type=int, default=30)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda, as slimtrack's --device")
    parser.add_argument("--num-threads", type=int, default=None, help="default: slimtrack's default")
    parser.add_argument("--out", type=Path, help="write the per-step rows here as JSON (else print them)")
    args = parser.parse_args()
    configure_threads(args.num_threads)
    config = build_config(args.preset, tokenizer=args.tokenizer, max_chunks=args.max_chunks, device=args.device)
    rows = []
    for row in train(config):
        rows.append(row)
        if not args.out:
            print(f"step {row['step']}: {row['tokens_per_sec']:,.0f} tok/s, loss {row['loss']:.4f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
