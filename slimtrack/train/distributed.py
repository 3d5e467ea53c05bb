"""Data-parallel training with torch.distributed, launched by torchrun.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; without them this
is a world of one and every function here is a no-op. The backend is gloo on CPU
and NCCL on CUDA. Only rank 0 talks to MLflow, renders dashboards and writes
checkpoints; metrics are reduced across ranks before rank 0 logs them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def world_from_env() -> World:
    return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                 int(os.environ.get("LOCAL_RANK", "0")))


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes; returns the world and this rank's device."""
    world = world_from_env()
    if not world.enabled:
        return world, device
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
        device = torch.device("cuda", world.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        store = restart_store(world)
        if store is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=store, rank=world.rank, world_size=world.world_size)
    return world, device


def restart_store(world: World) -> dist.Store | None:
    """The store of torchrun's agent, under a prefix of this restart; None outside torchrun's
    agent store (``env://`` then opens the store as usual).

    torchrun's agent keeps one store for all the restarts of a group, and the process group
    writes the same keys in it every time (each rank's address, the barriers' counters). A
    restarted rank could then read an address the killed group published and fail to
    connect, or wait on a counter the killed group left behind, forever. Each restart
    (TORCHELASTIC_RESTART_COUNT) gets keys of its own."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world.world_size,
                          is_master=False)
    return dist.PrefixStore(f"slimtrack/restart_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)


def shutdown(world: World) -> None:
    if world.enabled and dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class ReducedStep:
    loss: float  # token-weighted mean over ranks
    accuracy: float  # token-weighted mean over ranks
    tokens: int  # target tokens trained this step, all ranks
    tokens_per_sec: float  # sum of the ranks' throughputs
    by_source: dict[str, float]
    per_rank: dict[str, float]  # rank/<r>/loss, rank/<r>/tokens_per_sec (empty in a world of one)
    stop: bool  # any rank asked to stop (SIGTERM, Ctrl-C): all stop at the same step


def reduce_step(world: World, loss: float, accuracy: float, tokens: int, seconds: float,
                by_source: dict[str, tuple[float, int]], stop: bool) -> ReducedStep:
    """Combine one step's numbers across ranks (one all_gather of a small tensor, plus one
    object gather for the per-source sums, whose set names differ between ranks)."""
    rate = tokens / max(seconds, 1e-9)
    if not world.enabled:
        return ReducedStep(loss, accuracy, tokens, rate, _means(by_source), {}, stop)
    mine = torch.tensor([loss, accuracy, float(tokens), rate, float(stop)], dtype=torch.float64)
    gathered = [torch.zeros_like(mine) for _ in range(world.world_size)]
    dist.all_gather(gathered, mine)
    sources: list[dict[str, tuple[float, int]]] = [{} for _ in range(world.world_size)]
    dist.all_gather_object(sources, by_source)
    rows = torch.stack(gathered)  # [world, 5]
    weights = rows[:, 2] / rows[:, 2].sum()
    per_rank = {}
    for r in range(world.world_size):
        per_rank[f"rank/{r}/loss"] = float(rows[r, 0])
        per_rank[f"rank/{r}/tokens_per_sec"] = float(rows[r, 3])
    combined: dict[str, tuple[float, int]] = {}
    for part in sources:
        for name, (total, count) in part.items():
            old_total, old_count = combined.get(name, (0.0, 0))
            combined[name] = (old_total + total, old_count + count)
    return ReducedStep(float((rows[:, 0] * weights).sum()), float((rows[:, 1] * weights).sum()),
                       int(rows[:, 2].sum()), float(rows[:, 3].sum()), _means(combined), per_rank,
                       bool(rows[:, 4].max() > 0))


def _means(sums: dict[str, tuple[float, int]]) -> dict[str, float]:
    return {name: total / count for name, (total, count) in sums.items() if count}


def barrier(world: World) -> None:
    if world.enabled:
        dist.barrier()
