"""Pythia jets: in the window, physical, reproducible whatever the number of workers."""

from __future__ import annotations

import numpy as np
import pytest
from jjepa.preprocess.readers import read_chunk
from jjepa.preprocess.simulate import SimConfig, simulate_jets, simulate_to_file


def jet_sums(chunk):
    idx = np.repeat(np.arange(chunk.n_jets), np.diff(chunk.offsets))
    px, py, pz, e = (np.bincount(idx, weights=a, minlength=chunk.n_jets)
                     for a in (chunk.px, chunk.py, chunk.pz, chunk.energy))
    pt = np.hypot(px, py)
    return pt, np.arcsinh(pz / pt), np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0))


def test_jets_in_window_physical_and_pt_ordered(simulated_jets):
    chunk = simulated_jets
    pt, eta, mass = jet_sums(chunk)
    # constituents sum to the anti-kT jet: its pT window and |eta| cut hold
    assert np.all((pt >= 550 - 1e-6) & (pt <= 650 + 1e-6)) and np.all(np.abs(eta) < 2)
    assert np.all(chunk.energy > 0)
    cpt = np.hypot(chunk.px, chunk.py)
    same_jet = np.diff(np.repeat(np.arange(chunk.n_jets), np.diff(chunk.offsets))) == 0
    assert np.all(np.diff(cpt)[same_jet] <= 0)
    top, qcd = chunk.labels == 1, chunk.labels == 0
    assert top.sum() == 1000 and qcd.sum() == 1000
    assert 150 < np.median(mass[top]) < 200  # the top mass peak
    assert np.median(mass[qcd]) < 120


def test_same_seed_same_jets_whatever_the_workers():
    config = SimConfig(process="qcd", n_jets=24, seed=5, chunk_size=8)
    one = simulate_jets(config, workers=1, progress=False)
    two = simulate_jets(config, workers=2, progress=False)
    np.testing.assert_array_equal(one.px, two.px)
    np.testing.assert_array_equal(one.offsets, two.offsets)
    other = simulate_jets(SimConfig(process="qcd", n_jets=8, seed=6, chunk_size=8), workers=1, progress=False)
    assert not np.array_equal(other.px[:10], one.px[:10])


@pytest.mark.parametrize(("fmt", "suffix", "label"), [("jetclass", ".root", 8), ("toptagging", ".h5", 1)])
def test_simulate_to_file_reads_back(tmp_path, fmt, suffix, label):
    config = SimConfig(process="top", n_jets=6, seed=3, chunk_size=6)
    out = tmp_path / f"top{suffix}"
    simulate_to_file(config, out, fmt, progress=False)
    back = read_chunk(fmt, str(out), 0, 6, None)
    assert back.n_jets == 6 and np.all(back.labels == label)
    pt, _, _ = jet_sums(back)
    assert np.all((pt > 549) & (pt < 651))
    # The file holds exactly the simulated constituents (as float32; a format may reorder them in a jet).
    made = simulate_jets(config, workers=1, progress=False)
    np.testing.assert_array_equal(back.offsets, made.offsets)
    np.testing.assert_array_equal(in_jet_pt_order(back), in_jet_pt_order(made))


def in_jet_pt_order(chunk) -> np.ndarray:
    """(4, P) float32 px, py, pz, E of a chunk's constituents, ordered by pT within each jet."""
    p4 = np.stack([np.asarray(getattr(chunk, k)).astype(np.float32) for k in ("px", "py", "pz", "energy")])
    jet = np.repeat(np.arange(chunk.n_jets), np.diff(chunk.offsets))
    return p4[:, np.lexsort((np.hypot(p4[0], p4[1]), jet))]


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="process"):
        SimConfig(process="higgs", n_jets=1)
