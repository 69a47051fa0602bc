"""Distributed data parallel set-up from the environment ``torchrun`` provides.

One process per device; rank 0 logs, evaluates and saves. On CPU the gloo backend is used, so the
same code path is tested without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def default_device(local_rank: int = 0) -> torch.device:
    """Where a model runs when the user does not say: this process's GPU if there is one, else the CPU. The one
    place that decides it (training, extraction, UNIT and the service all ask here)."""
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_distributed() -> DistInfo:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun); a single process needs none of them."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = default_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def all_reduce_mean(values: list[float], info: DistInfo) -> list[float]:
    """Mean of scalars over all processes (the same answer on every rank)."""
    if not info.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return (t / info.world_size).tolist()


T = TypeVar("T")


def shard(items: Sequence[T], info: DistInfo) -> Sequence[T]:
    """This rank's share of ``items``: every world_size-th item from position rank (sizes differ by at most 1)."""
    return items[info.rank :: info.world_size] if info.distributed else items


def gather_shards(local: np.ndarray, total: int, info: DistInfo) -> np.ndarray | None:
    """Rows computed on the :func:`shard` of every rank -> all ``total`` rows in the original order, on rank 0
    (``None`` on the others). ``local`` is (rows, dim) float32; a rank with no rows may pass any (0, d) array."""
    if not info.distributed:
        return local
    comm = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
    shape = torch.tensor([local.shape[0], local.shape[1] if local.shape[0] else 0], device=comm)
    shapes = [torch.zeros_like(shape) for _ in range(info.world_size)]
    dist.all_gather(shapes, shape)
    counts = [int(s[0]) for s in shapes]
    dim = max(int(s[1]) for s in shapes)
    padded = torch.zeros((max(counts), dim), dtype=torch.float32, device=comm)
    if local.shape[0]:
        padded[: local.shape[0]] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).to(comm)
    parts = [torch.empty_like(padded) for _ in range(info.world_size)] if info.is_main else None
    dist.gather(padded, parts, dst=0)
    if not info.is_main:
        return None
    out = np.empty((total, dim), dtype=np.float32)
    for rank, (part, count) in enumerate(zip(parts, counts, strict=True)):
        out[rank::info.world_size] = part[:count].cpu().numpy()
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
