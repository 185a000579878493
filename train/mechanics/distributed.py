"""Process group set-up for ``torchrun`` (DDP): one process per GPU, or gloo processes on the CPU.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process and
nothing is initialised.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, on ``device``."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is an error that says so."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device "
                               "(check the driver and that the installed torch is a CUDA build)")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full fp32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def init_distributed(device: str) -> DistInfo:
    """Join the process group if launched by ``torchrun``; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        log.info("rank %d of %d on %s", rank, world_size, resolved)
    return DistInfo(rank=rank, world_size=world_size, device=resolved)


def shutdown_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(value: float, info: DistInfo) -> float:
    """The mean of a scalar over all ranks (itself without DDP)."""
    if info.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / info.world_size
