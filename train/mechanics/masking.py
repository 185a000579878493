"""Target/context masks: which real subjets of each jet the predictor must predict.

A fraction (default 0.3) of each jet's *real* subjets, rounded, at least one and at most all but
one, are targets; the other real subjets are the context. Padded slots are neither. A jet with a
single real subjet has nothing to predict from and gets no target (it adds nothing to the loss).

Where the targets are drawn from (``selection``):

- ``random`` (jjepa's default): uniformly among all real subjets, soft ones included;
- ``hardest`` (an option, as the reference code's particle-level masks; its subjet-level draw is at
  random, as ours): among the ``pool``
  hardest real subjets only, i.e. the first ``pool`` real slots, since the shard schema stores
  subjets in decreasing pT. The number of targets is the same as for ``random``, capped at the
  pool's size; the context is still every other real subjet, soft ones included.

Both are one vectorised draw over the batch (no per-jet Python, unlike the reference). Masks are
drawn on the CPU from a generator seeded by (seed, rank, step), so a resumed or repeated run draws
the same masks, and DDP ranks draw different ones; ``random`` draws exactly what it always did.
"""

from __future__ import annotations

import numpy as np
import torch

SELECTIONS: tuple[str, ...] = ("random", "hardest")


def mask_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator for the masks of ``step`` on ``rank``, independent of any other state."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def target_pool(subjet_mask: torch.Tensor, pool: int) -> torch.Tensor:
    """(B, S) bool: the ``pool`` hardest real subjets of every jet (its first ``pool`` real slots).

    Slots are pT-ordered in the shards (schema v1), so hardness is the slot order among real slots.
    """
    return subjet_mask & (subjet_mask.cumsum(dim=1) <= pool)


def sample_targets(subjet_mask: torch.Tensor, fraction: float, generator: torch.Generator,
                   selection: str = "random", pool: int = 10) -> torch.Tensor:
    """Draw the target subjets of every jet.

    Args:
        subjet_mask: (B, S) bool, true where a real subjet sits (on the CPU).
        fraction: share of the real subjets that are targets, in (0, 1).
        generator: CPU generator (``mask_generator``).
        selection: ``random`` (among all real subjets) or ``hardest`` (among the ``pool`` hardest).
        pool: candidate subjets per jet for ``hardest``; ignored by ``random``.

    Returns:
        (B, S) bool target mask; ``subjet_mask & ~targets`` is the context.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, not {selection!r}")
    n_real = subjet_mask.sum(dim=1)
    n_target = torch.floor(fraction * n_real + 0.5).long().clamp(min=1)
    n_target = torch.minimum(n_target, n_real - 1).clamp(min=0)
    candidates = subjet_mask
    if selection == "hardest":
        candidates = target_pool(subjet_mask, pool)
        n_target = torch.minimum(n_target, candidates.sum(dim=1))
    scores = torch.rand(subjet_mask.shape, generator=generator)
    scores = torch.where(candidates, scores, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    return rank < n_target.unsqueeze(1)
