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
from jjepa.common.errors import JJepaError

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
            raise JJepaError("--device cuda was asked for, but torch sees no CUDA device "
                             "(check the driver and that the installed torch is a CUDA build; or use --device cpu)")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` on CUDA, ``fp32`` on the CPU; ``bf16``, ``fp16`` and ``fp32`` as given.

    Raises:
        JJepaError: bf16 asked for on a GPU without bf16 support (before Ampere): use fp16 there.
    """
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp16", "fp32"):
        raise JJepaError(f"precision must be auto, bf16, fp16 or fp32, not {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise JJepaError(f"{torch.cuda.get_device_name(device)} has no bf16; use --precision fp16 (with a "
                         "gradient scaler) or fp32")
    return precision


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context of ``precision`` (see ``resolve_precision``) on ``device``; fp32: none.

    Matmuls and attention run in bf16/fp16, reductions and norms stay fp32 (PyTorch's autocast lists);
    callers cast logits and losses to float32 before softmax, metrics and the loss.
    """
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for fp16 only (bf16 and fp32 have fp32's exponent range: a no-op).

    fp16 gradients underflow without loss scaling; the scaler multiplies the loss, unscales the
    gradients before clipping and skips steps whose gradients overflowed.
    """
    return torch.amp.GradScaler(device.type, enabled=resolve_precision(precision, device) == "fp16")


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


def check_world_size(saved: int, info: DistInfo, path) -> None:
    """Refuse to resume a checkpoint written by another number of processes, saying how to proceed.

    Each rank reads a contiguous share of every epoch (``rank_share``) and the checkpoint holds one
    loader position for all of them, the batch size is per process and the masks are seeded by the
    rank: with another process count the run would re-read some jets, skip others and follow another
    schedule, so it would not be the run that was started. Raises ``JJepaError`` when ``saved`` differs.
    """
    if saved == info.world_size:
        return
    launch = "without torchrun (one process)" if saved == 1 else \
        f"with {saved} processes in all (e.g. torchrun --nproc-per-node {saved} ...)"
    raise JJepaError(f"cannot resume {path}: it was written by {saved} process(es), this run has {info.world_size}; "
                     f"the split of the jets over processes and the per-process batch depend on that count. "
                     f"Relaunch {launch} to continue it, or start a new run with another --out")


def gather_objects(value, info: DistInfo) -> list:
    """``value`` of every rank, in rank order, on every rank (``[value]`` without DDP).

    Pickled through the process group (``all_gather_object``): for arrays of predictions, not for
    tensors in a training step.
    """
    if info.world_size == 1:
        return [value]
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered
