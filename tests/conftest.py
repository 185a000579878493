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


def _check_figure(path, min_size=(400, 300)) -> None:
    """The PNG at ``path`` decodes, is at least ``min_size`` pixels (w, h) and is not blank: drawn lines and
    text give many distinct colours, an empty canvas one."""
    import matplotlib.image

    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width >= min_size[0] and height >= min_size[1], f"{path}: {width}x{height} pixels"
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    assert len(colours) > 20, f"{path}: {len(colours)} distinct colours, the figure is (nearly) blank"


@pytest.fixture(scope="session")
def check_figure():
    """A function asserting that a PNG is a real, non-blank figure (not just a non-empty file)."""
    return _check_figure
