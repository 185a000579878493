"""Target/context masks: which real subjets of each jet the predictor must predict.

A fraction (default 0.3) of each jet's *real* subjets, rounded, at least one and at most all but
one, are targets; the other real subjets are the context. Padded slots are neither. A jet with a
single real subjet has nothing to predict from and gets no target (it adds nothing to the loss).
Masks are drawn on the CPU from a generator seeded by (seed, rank, step), so a resumed or
repeated run draws the same masks, and DDP ranks draw different ones.
"""

from __future__ import annotations

import numpy as np
import torch


def mask_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator for the masks of ``step`` on ``rank``, independent of any other state."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def sample_targets(subjet_mask: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Draw the target subjets of every jet.

    Args:
        subjet_mask: (B, S) bool, true where a real subjet sits (on the CPU).
        fraction: share of the real subjets that are targets, in (0, 1).
        generator: CPU generator (``mask_generator``).

    Returns:
        (B, S) bool target mask; ``subjet_mask & ~targets`` is the context.
    """
    n_real = subjet_mask.sum(dim=1)
    n_target = torch.floor(fraction * n_real + 0.5).long().clamp(min=1)
    n_target = torch.minimum(n_target, n_real - 1).clamp(min=0)
    scores = torch.rand(subjet_mask.shape, generator=generator)
    scores = torch.where(subjet_mask, scores, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    return rank < n_target.unsqueeze(1)
