"""Shared fixtures: realistic simulated jets, generated once per test session."""

from __future__ import annotations

import numpy as np
import pytest
from jjepa.preprocess.readers.base import JetChunk


def concat_chunks(chunks: list[JetChunk], path: str = "simulated") -> JetChunk:
    """One chunk holding the jets of several, in order."""
    counts = np.concatenate([np.diff(c.offsets) for c in chunks])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cat = lambda name: np.concatenate([getattr(c, name) for c in chunks])  # noqa: E731
    return JetChunk(px=cat("px"), py=cat("py"), pz=cat("pz"), energy=cat("energy"), offsets=offsets,
                    labels=cat("labels"), path=path, start=0, stop=len(counts))


@pytest.fixture(scope="session")
def simulated_jets() -> JetChunk:
    """2,000 Pythia 8 jets (1,000 top, label 1; 1,000 QCD, label 0), anti-kT R=0.8, 550–650 GeV."""
    from jjepa.preprocess.simulate import SimConfig, simulate_jets

    top = simulate_jets(SimConfig(process="top", n_jets=1000, seed=11), workers=2, progress=False)
    qcd = simulate_jets(SimConfig(process="qcd", n_jets=1000, seed=12), workers=2, progress=False)
    return concat_chunks([top, qcd])
