"""The running mean of the training loss between two log rows, kept on the device and checkpointable."""

from __future__ import annotations

import torch


class RunningLoss:
    """Sum and count of the per-step losses since the last ``reset``.

    The sum is a float64 scalar on the training device and each step adds the loss tensor to it
    without reading it: ``float(loss)`` every step would wait for the device to finish the step (a
    CUDA sync per step, stalling the prefetch overlap). It is read once per log row (``mean``) or
    checkpoint (``total``); restoring that float continues the same float64 accumulation, so a resumed
    run logs exactly the averages of an uninterrupted one.
    """

    def __init__(self, device: torch.device):
        self.sum = torch.zeros((), dtype=torch.float64, device=device)
        self.steps = 0

    def add(self, loss: torch.Tensor) -> None:
        """Count one step's loss (a scalar tensor; detached here, never read)."""
        self.sum += loss.detach()
        self.steps += 1

    def total(self) -> float:
        """The sum as a float (a device sync), for checkpoints."""
        return float(self.sum)

    def mean(self) -> float:
        """The mean loss since the last ``reset`` (NaN before any step); a device sync."""
        return self.total() / self.steps if self.steps else float("nan")

    def restore(self, total: float, steps: int) -> None:
        """Continue from a checkpoint's ``total()`` and ``steps``."""
        self.sum.fill_(total)
        self.steps = int(steps)

    def reset(self) -> None:
        """Start a new interval."""
        self.sum.zero_()
        self.steps = 0
