"""Bad-jet detection on a chunk: vectorised checks, one clear message per problem."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from jjepa.common.errors import InputError
from jjepa.preprocess.readers.base import JetChunk

log = logging.getLogger(__name__)

ON_BAD_JET = ("error", "skip")


def _per_jet_any(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """bool (J,): whether any constituent of each jet is flagged (empty jets give False)."""
    csum = np.zeros(len(flags) + 1, dtype=np.int64)
    np.cumsum(flags, out=csum[1:])
    return csum[offsets[1:]] > csum[offsets[:-1]]


def bad_jets(chunk: JetChunk) -> tuple[np.ndarray, np.ndarray]:
    """Find the jets that cannot be clustered.

    Returns:
        ``(bad, reason)``: bool (J,) and an object array (J,) of reasons ('' where good). A jet is
        bad if it has no constituents, or a constituent with non-finite momentum, negative
        energy, or zero transverse momentum (its pseudorapidity would be infinite).
    """
    px, py, pz, e, offsets = chunk.px, chunk.py, chunk.pz, chunk.energy, chunk.offsets
    finite = np.isfinite(px) & np.isfinite(py) & np.isfinite(pz) & np.isfinite(e)
    checks = (
        ("a constituent has a non-finite momentum or energy", ~finite),
        ("a constituent has negative energy", finite & (e < 0)),
        ("a constituent has zero transverse momentum", finite & (px * px + py * py == 0)),
    )
    reason = np.full(chunk.n_jets, "", dtype=object)
    empty = offsets[1:] == offsets[:-1]
    reason[empty] = "the jet has no constituents"
    for message, flags in checks:
        hit = _per_jet_any(flags, offsets) & (reason == "")
        reason[hit] = message
    return reason != "", reason


def check_chunk(chunk: JetChunk, on_bad_jet: str = "error") -> tuple[JetChunk, int]:
    """Apply the bad-jet policy to a chunk.

    Args:
        chunk: jets as read.
        on_bad_jet: ``error`` raises ``InputError`` naming the file and the first bad entry;
            ``skip`` drops bad jets and logs how many.

    Returns:
        ``(chunk, n_skipped)``: the chunk of good jets and the number dropped.
    """
    bad, reason = bad_jets(chunk)
    if not bad.any():
        return chunk, 0
    first = int(np.flatnonzero(bad)[0])
    if on_bad_jet == "error":
        raise InputError(chunk.path, f"{reason[first]}; {int(bad.sum())} bad jet(s) in entries "
                         f"{chunk.start}-{chunk.stop - 1}", entry=chunk.start + first,
                         hint="pass --on-bad-jet skip to drop such jets")
    keep = ~bad
    counts = np.diff(chunk.offsets)
    particle_keep = np.repeat(keep, counts)
    offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(counts[keep], out=offsets[1:])
    log.warning("%s: skipped %d bad jet(s) in entries %d-%d (first: entry %d, %s)", chunk.path, int(bad.sum()),
                chunk.start, chunk.stop - 1, chunk.start + first, reason[first])
    good = replace(chunk, px=chunk.px[particle_keep], py=chunk.py[particle_keep], pz=chunk.pz[particle_keep],
                   energy=chunk.energy[particle_keep], offsets=offsets, labels=chunk.labels[keep])
    return good, int(bad.sum())
