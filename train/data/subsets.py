"""Labelled subsets for label-efficiency studies: a seeded, class-stratified share of the training jets.

Only the training shards are ever reduced; validation and test sets are used whole. Each class keeps
the same share of its jets (rounded, at least one jet of every class present), drawn without
replacement from a generator seeded by ``seed``, so a (fraction, seed) pair always names the same jets.
"""

from __future__ import annotations

import numpy as np
from jjepa.common.errors import JJepaError


def stratified_subset(labels: list[np.ndarray], seed: int, fraction: float | None = None,
                      n_labels: int | None = None) -> list[np.ndarray]:
    """Choose jets per class.

    Args:
        labels: per shard, int64 (J_k,) class indices; −1 (unlabelled) is an error.
        seed: seeds the draw.
        fraction: share of each class to keep, in (0, 1].
        n_labels: total jets to keep instead (exactly), split over classes in proportion to their counts
            by largest remainder, at least one per class.

    Returns:
        Per shard, the sorted int64 positions of the chosen jets.
    """
    flat = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    if (flat < 0).any():
        raise JJepaError("the training shards hold unlabelled jets (label −1); finetuning needs labels")
    shard_of = np.repeat(np.arange(len(labels)), [len(x) for x in labels])
    position = np.concatenate([np.arange(len(x)) for x in labels]) if labels else np.zeros(0, np.int64)
    classes, counts = np.unique(flat, return_counts=True)
    if n_labels is not None:
        if n_labels > len(flat):
            raise JJepaError(f"n_labels is {n_labels} but the training shards hold only {len(flat)} jets")
        if n_labels < len(classes):
            raise JJepaError(f"n_labels is {n_labels} but the training jets hold {len(classes)} classes; a "
                             "stratified subset keeps at least one jet of each")
        keep = _split_count(n_labels, counts)
    else:
        keep = np.maximum(np.floor((1.0 if fraction is None else fraction) * counts + 0.5).astype(np.int64), 1)
    rng = np.random.default_rng([seed, 0x5EED])
    chosen = [rng.choice(np.flatnonzero(flat == c), size=k, replace=False) for c, k in zip(classes, keep, strict=True)]
    chosen_all = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    return [np.sort(position[chosen_all[shard_of[chosen_all] == k]]) for k in range(len(labels))]


def _split_count(n: int, counts: np.ndarray) -> np.ndarray:
    """``n`` jets over classes of ``counts`` jets (``len(counts) <= n <= counts.sum()``): proportional shares
    rounded by largest remainder, at least one per class, summing to exactly ``n``."""
    share = n * counts / counts.sum()
    keep = np.floor(share).astype(np.int64)
    remainder = np.where(keep > 0, share - keep, -1.0)  # a class raised to one jet gets no more
    keep = np.maximum(keep, 1)
    keep[np.argsort(-remainder, kind="stable")[:max(n - int(keep.sum()), 0)]] += 1
    while keep.sum() > n:
        keep[np.argmax(keep)] -= 1
    return keep
