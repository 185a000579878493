"""SIGTERM as a request to stop at the next step boundary (checkpoint, then exit), like Ctrl-C.

Batch systems (Slurm, HTCondor, Kubernetes) send SIGTERM some time before they kill a job. Python's
default is to die at once, losing everything since the last checkpoint. ``stop_requests`` installs
a handler that only sets a flag; the training loop looks at it between steps, so the state it saves
is never half-updated, then raises ``KeyboardInterrupt`` and takes the Ctrl-C path.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import torch
import torch.distributed as dist
from jjepa.train.mechanics.distributed import DistInfo

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stop_requests() -> Iterator[threading.Event]:
    """Yield an event that SIGTERM sets while the block runs; the previous handler comes back after.

    Outside the main thread (where Python cannot install handlers) the event is never set.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        log.warning("SIGTERM received: stopping after this step with a checkpoint")
        requested.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield requested
    finally:
        if previous is not None:  # None: a handler installed from C, which Python cannot put back
            signal.signal(signal.SIGTERM, previous)


def any_rank(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` is true on any rank (itself without DDP), so that all ranks stop at the same step."""
    if info.world_size == 1:
        return flag
    tensor = torch.tensor([int(flag)], device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
