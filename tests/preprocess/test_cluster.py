"""The Numba clustering kernel against FastJet itself: identical constituent partitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jjepa.preprocess.cluster import cluster, cluster_fastjet


def partitions(assign: np.ndarray, n_subjets: np.ndarray, offsets: np.ndarray) -> list[set[frozenset[int]]]:
    """Per jet, the set of subjets, each the frozenset of its constituents' indices within the jet."""
    out = []
    for j in range(len(offsets) - 1):
        a = assign[offsets[j]:offsets[j + 1]]
        out.append({frozenset(np.flatnonzero(a == k).tolist()) for k in range(n_subjets[j])})
    return out


def assert_same_as_fastjet(px, py, pz, e, offsets, algorithm, radius, strategy=None):
    ours = partitions(*cluster(px, py, pz, e, offsets, algorithm, radius), offsets)
    theirs = partitions(*cluster_fastjet(px, py, pz, e, offsets, algorithm, radius, strategy=strategy), offsets)
    mismatched = [j for j, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert not mismatched, f"{len(mismatched)} of {len(ours)} jets differ from FastJet, first: jet {mismatched[0]}"
    for j, subjets in enumerate(ours):  # every constituent in exactly one subjet
        assert sorted(i for s in subjets for i in s) == list(range(offsets[j + 1] - offsets[j]))


def jets_from_pt_eta_phi(pt, eta, phi, counts, mass=0.0):
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return px, py, pz, e, offsets


def random_jets(seed, n_jets, max_const=120, spread=0.4, phi0=0.0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_const, n_jets)
    n = counts.sum()
    pt = rng.exponential(10.0, n) + 0.05
    eta = rng.normal(0.0, spread, n) + np.repeat(rng.uniform(-2, 2, n_jets), counts)
    phi = rng.normal(phi0, spread, n)
    return jets_from_pt_eta_phi(pt, eta, phi, counts, mass=rng.choice([0.0, 0.1396], n))


@pytest.mark.parametrize("algorithm", ["ca", "kt", "antikt"])
@pytest.mark.parametrize("radius", [0.2, 0.4, 1.0])
def test_random_jets_match_fastjet(algorithm, radius):
    assert_same_as_fastjet(*random_jets(seed=7, n_jets=400), algorithm, radius)


def test_jets_straddling_phi_pi_match_fastjet():
    """Jets centred on φ = π: constituents on both sides of the ±π (FastJet: 0/2π) boundary."""
    for algorithm in ("ca", "kt", "antikt"):
        assert_same_as_fastjet(*random_jets(seed=3, n_jets=300, phi0=math.pi, spread=0.3), algorithm, 0.2)
        assert_same_as_fastjet(*random_jets(seed=4, n_jets=300, phi0=0.0, spread=0.3), algorithm, 0.2)


def test_simulated_jets_match_fastjet(simulated_jets):
    """≥ 2,000 Pythia top and QCD jets: every partition identical to FastJet's, for all three algorithms."""
    chunk = simulated_jets
    assert chunk.n_jets >= 2000
    for algorithm in ("ca", "kt", "antikt"):
        assert_same_as_fastjet(chunk.px, chunk.py, chunk.pz, chunk.energy, chunk.offsets, algorithm, 0.2)


momenta = st.tuples(
    st.floats(0.01, 500.0),  # pT
    st.floats(-3.0, 3.0),  # eta
    st.floats(-math.pi, math.pi),  # phi
    st.sampled_from([0.0, 0.1396, 0.4937]),  # mass
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jet=st.lists(momenta, min_size=1, max_size=40), algorithm=st.sampled_from(["ca", "kt", "antikt"]),
       radius=st.sampled_from([0.1, 0.2, 0.4, 0.8, 1.5]))
def test_hypothesis_jets_match_fastjet(jet, algorithm, radius):
    pt, eta, phi, mass = (np.array(v, dtype=np.float64) for v in zip(*jet, strict=True))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    assert_same_as_fastjet(px, py, pz, e, np.array([0, len(jet)]), algorithm, radius)


def test_single_constituent_is_one_subjet():
    px, py, pz, e, offsets = jets_from_pt_eta_phi(np.array([50.0]), np.array([0.3]), np.array([1.0]), [1])
    assign, n_subjets = cluster(px, py, pz, e, offsets)
    assert n_subjets.tolist() == [1] and assign.tolist() == [0]


def test_two_collinear_constituents_merge():
    """Exactly collinear (ΔR = 0) constituents always end in the same subjet."""
    px, py, pz, e, offsets = jets_from_pt_eta_phi(np.array([50.0, 20.0, 30.0]), np.array([0.3, 0.3, -0.5]),
                                                  np.array([1.0, 1.0, 1.0]), [3])
    assign, n_subjets = cluster(px, py, pz, e, offsets)
    assert n_subjets.tolist() == [2]
    assert assign[0] == assign[1] != assign[2]
    assert_same_as_fastjet(px, py, pz, e, offsets, "ca", 0.2)


def test_phi_wrap_merges_across_pi():
    """Two constituents at φ = π − 0.05 and −π + 0.05 are ΔR = 0.1 apart and must merge at R = 0.2."""
    px, py, pz, e, offsets = jets_from_pt_eta_phi(np.array([40.0, 60.0]), np.array([0.0, 0.0]),
                                                  np.array([math.pi - 0.05, -math.pi + 0.05]), [2])
    assign, n_subjets = cluster(px, py, pz, e, offsets, "ca", 0.2)
    assert n_subjets.tolist() == [1]
    assign, n_subjets = cluster(px, py, pz, e, offsets, "ca", 0.09)
    assert n_subjets.tolist() == [2]


def test_zero_pt_lightlike_constituent_matches_fastjet():
    """FastJet gives a zero-pT massless momentum rapidity ±(1e5 + |pz|); it must stay alone."""
    px = np.array([30.0, 0.0, 10.0])
    py = np.array([5.0, 0.0, 1.0])
    pz = np.array([3.0, 7.0, 1.0])
    e = np.sqrt(px**2 + py**2 + pz**2)
    offsets = np.array([0, 3])
    assert_same_as_fastjet(px, py, pz, e, offsets, "ca", 0.4)
    assert_same_as_fastjet(px, py, pz, e, offsets, "antikt", 0.4)


def lattice_jets(seed, n_jets, radius, phi0=0.0):
    """Jets of 60–200 massless constituents on a 9×9 (y, φ) lattice: many exact ties.

    The spacing is R/2, R or R (1 + 1e-6) (neighbours exactly at the R boundary), the lattice sits
    at φ0, and constituents share sites and one of three pTs: ties in ΔR and in d_ij everywhere.
    """
    rng = np.random.default_rng(seed)
    counts = rng.integers(60, 201, n_jets)
    pt, eta, phi = [], [], []
    for k in counts:
        step = radius * rng.choice([0.5, 1.0, 1.0 + 1e-6])
        eta.append(rng.uniform(-2, 2) + step * rng.integers(-4, 5, k))
        phi.append(phi0 + step * rng.integers(-4, 5, k))
        pt.append(rng.choice([1.0, 2.0, 5.0], k))
    return jets_from_pt_eta_phi(np.concatenate(pt), np.concatenate(eta), np.concatenate(phi), counts)


@pytest.mark.parametrize("algorithm", ["ca", "kt", "antikt"])
@pytest.mark.parametrize("radius", [0.2, 0.4, 1.0])
def test_lattice_ties_match_fastjet_n2plain(algorithm, radius):
    """Duplicated constituents on a lattice, straddling φ = 0/2π and ±π: N2Plain's tie-breaking.

    With exact ties the partition depends on FastJet's strategy: its default (``Best``) takes a
    tiled strategy for jets this large and breaks some ties differently, so the oracle here is
    ``N2Plain``, the strategy the kernel follows step for step.
    """
    for phi0 in (0.0, math.pi):
        jets = lattice_jets(seed=int(radius * 10), n_jets=60, radius=radius, phi0=phi0)
        assert_same_as_fastjet(*jets, algorithm, radius, strategy="N2Plain")


def test_identical_constituents_match_fastjet_n2plain():
    """One momentum repeated 100 times: every pair ties at ΔR = 0."""
    same = jets_from_pt_eta_phi(np.full(100, 7.0), np.full(100, 0.3), np.full(100, 1.0), [100])
    for algorithm in ("ca", "kt", "antikt"):
        assert_same_as_fastjet(*same, algorithm, 0.2, strategy="N2Plain")
