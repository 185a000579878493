"""Bad-jet detection on a chunk: one compiled pass over the constituents, one clear message per problem.

This is the one rule every reader's jets go through: readers keep every slot that is not pure
zero padding (``readers.base.real_slots``) and flag what the four-momenta cannot show
(``JetChunk.problems``); here a jet is judged bad and ``--on-bad-jet`` decides (error or skip).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numba as nb
import numpy as np
from jjepa.common.errors import InputError
from jjepa.preprocess.readers.base import JetChunk

log = logging.getLogger(__name__)

ON_BAD_JET = ("error", "skip")


#: Reasons a jet cannot be clustered, by code (0: good); a jet gets the first that applies.
REASONS: tuple[str, ...] = (
    "",
    "the jet has no constituents",
    "a constituent has a non-finite momentum or energy",
    "a constituent has negative energy",
    "a constituent has zero transverse momentum",
    "a constituent has zero energy but non-zero momentum",
    "the jet's constituents are too energetic for the float32 shards (their summed pT or |E| exceeds 3.4e38 GeV)",
    "the jet's constituents sum to zero transverse momentum (the jet axis has no direction)",
)

#: The largest finite float32 [GeV]: shards store pT, E and mass as float32, so larger values would be inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)


@nb.njit(cache=True, nogil=True)
def _reason_codes(px, py, pz, e, offsets, codes):
    """Fill ``codes`` (J,) with each jet's index into ``REASONS``, in one pass over the constituents.

    The jet sums bound what ``features.features_kernel`` writes: every stored pT (constituent, subjet,
    jet) is at most the jet's summed constituent pT, every stored E and the mass at most its summed
    |E|, so a jet within ``FLOAT32_MAX`` on both never overflows a float32 shard. The jet (px, py)
    sums are taken in the kernel's order, so a zero here is exactly the zero pT it would divide by.
    """
    for j in range(offsets.shape[0] - 1):
        lo = offsets[j]
        hi = offsets[j + 1]
        if hi == lo:
            codes[j] = 1
            continue
        nonfinite = False
        negative = False
        zero_pt = False
        zero_e = False
        jpx = 0.0
        jpy = 0.0
        sum_pt = 0.0
        sum_e = 0.0
        for k in range(lo, hi):
            if not (math.isfinite(px[k]) and math.isfinite(py[k]) and math.isfinite(pz[k]) and math.isfinite(e[k])):
                nonfinite = True
            else:
                negative |= e[k] < 0
                zero_pt |= px[k] * px[k] + py[k] * py[k] == 0
                zero_e |= e[k] == 0
                jpx += px[k]
                jpy += py[k]
                sum_pt += math.sqrt(px[k] * px[k] + py[k] * py[k])
                sum_e += abs(e[k])
        too_large = not (sum_pt <= FLOAT32_MAX and sum_e <= FLOAT32_MAX)
        zero_jet_pt = jpx == 0.0 and jpy == 0.0
        codes[j] = (2 if nonfinite else 3 if negative else 4 if zero_pt else 5 if zero_e else 6 if too_large
                    else 7 if zero_jet_pt else 0)


def bad_jets(chunk: JetChunk) -> tuple[np.ndarray, np.ndarray]:
    """Find the jets that cannot be clustered.

    Returns:
        ``(bad, reason)``: bool (J,) and an object array (J,) of reasons ('' where good). A jet is
        bad if the reader flagged it (``chunk.problems``, e.g. a negative pT before conversion), or
        it has no constituents, or a constituent with non-finite momentum, negative energy, zero
        transverse momentum (its pseudorapidity would be infinite) or zero energy with non-zero
        momentum, or its constituents' summed pT or |E| is beyond float32 (the shard would hold
        inf), or they sum to zero pT (no jet axis); the reader's reason comes first, then the first
        of these that applies.
    """
    codes = np.empty(chunk.n_jets, dtype=np.int8)
    _reason_codes(chunk.px, chunk.py, chunk.pz, chunk.energy, np.asarray(chunk.offsets, dtype=np.int64), codes)
    reason = np.array(REASONS, dtype=object)[codes]
    if chunk.problems is not None:
        flagged = chunk.problems != ""
        reason[flagged] = chunk.problems[flagged]
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
                   energy=chunk.energy[particle_keep], offsets=offsets, labels=chunk.labels[keep], problems=None)
    return good, int(bad.sum())
