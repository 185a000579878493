"""Collapse diagnostics of the target representation.

J-JEPA can collapse: both encoders map every jet to the same point and the loss goes to zero.
Two numbers on the target encoder's jet-level representation (the mean over real subjets, (B, D))
show it: ``target_std``, the batch standard deviation averaged over the D dimensions, and
``target_rank``, the effective rank (Roy & Vetterli 2007: exp of the entropy of the normalised
singular values of the centred batch), between 1 and min(B, D). Both fall towards zero / one in a
collapse.
"""

from __future__ import annotations

import torch


def representation_std(reps: torch.Tensor) -> float:
    """Mean over dimensions of the batch standard deviation of (B, D) representations."""
    return float(reps.float().std(dim=0).mean())


def effective_rank(reps: torch.Tensor) -> float:
    """Effective rank of (B, D) representations (centred over the batch); 0 for a constant batch.

    NaN when ``reps`` holds non-finite values (a diverged run): the SVD would fail with a
    linear-algebra error that says nothing about the cause, which the trainer reports itself.
    """
    centred = reps.float() - reps.float().mean(dim=0, keepdim=True)
    if not bool(torch.isfinite(centred).all()):
        return float("nan")
    try:
        singular = torch.linalg.svdvals(centred)
    except torch.linalg.LinAlgError:  # no convergence on a pathological (e.g. huge-valued) batch
        return float("nan")
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
