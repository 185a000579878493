"""Toy jets for the preprocessing tests and benchmarks: fast, seeded, no physics beyond the geometry.

Not a simulation (``jjepa-preprocess simulate`` runs Pythia 8): random massless constituents around
a random jet axis, enough to exercise readers, clustering, validation and shard writing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jjepa.preprocess.readers.base import JetChunk, offsets_from_counts


def toy_chunk(n_jets: int, seed: int = 0, labels: Sequence[int] = (0, 8),
              constituents: tuple[int, int] = (5, 60)) -> JetChunk:
    """``n_jets`` jets of massless constituents around random axes, vectorised over jets.

    Args:
        n_jets: jets to make.
        seed: seeds everything.
        labels: jet k gets ``labels[k % len(labels)]`` (default: QCD and Tbqq of JetClass, alternating).
        constituents: [low, high) of the constituent count per jet.

    Returns:
        Constituents with pT ~ 0.5 + Exp(15) GeV, spread by 0.3 in η and φ around an axis with
        |η| < 1.5 and any φ; E = |p| (massless).
    """
    rng = np.random.default_rng(seed)
    counts = rng.integers(*constituents, n_jets)
    n = counts.sum()
    pt = rng.exponential(15.0, n) + 0.5
    eta = rng.normal(0, 0.3, n) + np.repeat(rng.uniform(-1.5, 1.5, n_jets), counts)
    phi = rng.normal(0, 0.3, n) + np.repeat(rng.uniform(-np.pi, np.pi, n_jets), counts)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return JetChunk(px=px, py=py, pz=pz, energy=np.sqrt(px**2 + py**2 + pz**2), offsets=offsets_from_counts(counts),
                    labels=np.asarray(labels, dtype=np.int64)[np.arange(n_jets) % len(labels)], path="toy",
                    start=0, stop=n_jets)
