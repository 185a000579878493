"""SIGTERM and Ctrl-C as requests to stop at the next step boundary (checkpoint, then exit).

Batch systems (Slurm, HTCondor, Kubernetes) send SIGTERM some time before they kill a job. Python's
default is to die at once, losing everything since the last checkpoint; and a Ctrl-C raised in the
middle of a step (between the optimizer step and the step counter) would save a half-updated state
that resumes one step off. ``stop_requests`` installs handlers that only set a flag; the training
loop looks at it between steps, so the state it saves is never half-updated, then raises
``KeyboardInterrupt`` and takes the interrupt path. A second Ctrl-C stops at once, as before.
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
    """Yield an event that SIGTERM or a first Ctrl-C sets while the block runs; the previous handlers come
    back after. A second Ctrl-C raises ``KeyboardInterrupt`` at once.

    Outside the main thread (where Python cannot install handlers) the event is never set.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        if signum == signal.SIGINT and requested.is_set():
            raise KeyboardInterrupt
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        log.warning("%s received: stopping after this step with a checkpoint%s", name,
                    " (Ctrl-C again stops at once)" if signum == signal.SIGINT else "")
        requested.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield requested
    finally:
        for sig, handler_before in previous.items():
            if handler_before is not None:  # None: a handler installed from C, which Python cannot put back
                signal.signal(sig, handler_before)


def any_rank(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` is true on any rank (itself without DDP), so that all ranks stop at the same step."""
    if info.world_size == 1:
        return flag
    tensor = torch.tensor([int(flag)], device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
