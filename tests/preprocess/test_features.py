"""Subjet features on hand-built jets with known answers."""

from __future__ import annotations

import math

import numpy as np
from jjepa.common.schema import ClusterConfig
from jjepa.preprocess.cluster import cluster
from jjepa.preprocess.features import build_features


def make_jet(pt, eta, phi, mass=0.0):
    pt, eta, phi = (np.asarray(v, dtype=np.float64) for v in (pt, eta, phi))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    return px, py, pz, e, np.array([0, len(pt)], dtype=np.int64)


def features(px, py, pz, e, offsets, labels=None, **config):
    cfg = ClusterConfig(**config)
    assign, n_subjets = cluster(px, py, pz, e, offsets, cfg.algorithm, cfg.radius)
    labels = np.zeros(len(offsets) - 1, dtype=np.int64) if labels is None else labels
    return build_features(px, py, pz, e, offsets, assign, n_subjets, labels, cfg)


def test_two_prongs_give_two_subjets_with_exact_four_vectors():
    # Prong A: two constituents near (η, φ) = (0.5, 0.3); prong B: three near (-0.4, -0.6). ΔR(A, B) ≈ 1.27.
    pt = [300.0, 100.0, 150.0, 80.0, 20.0]
    eta = [0.50, 0.55, -0.40, -0.42, -0.35]
    phi = [0.30, 0.32, -0.60, -0.55, -0.65]
    px, py, pz, e, offsets = make_jet(pt, eta, phi)
    out = features(px, py, pz, e, offsets)

    assert out.subjet_mask[0].tolist() == [True, True] + [False] * 18
    assert out.subjet_nparticles[0, :3].tolist() == [2, 3, 0]
    jet = np.array([px.sum(), py.sum(), pz.sum(), e.sum()])
    jet_eta = math.asinh(jet[2] / math.hypot(jet[0], jet[1]))
    jet_phi = math.atan2(jet[1], jet[0])
    for slot, members in ((0, [0, 1]), (1, [2, 3, 4])):  # prong A is harder: slot 0
        p4 = np.array([px[members].sum(), py[members].sum(), pz[members].sum(), e[members].sum()])
        sub_pt = math.hypot(p4[0], p4[1])
        expected = [sub_pt, math.asinh(p4[2] / sub_pt) - jet_eta,
                    math.sin(0.5 * (math.atan2(p4[1], p4[0]) - jet_phi)), p4[3]]
        np.testing.assert_allclose(out.subjets[0, slot], expected, rtol=1e-6, atol=1e-6)
        # constituents pT-ordered within the subjet
        kept = out.particles[0, slot, : len(members)]
        order = sorted(members, key=lambda i: -pt[i])
        np.testing.assert_allclose(kept[:, 0], [pt[i] for i in order], rtol=1e-6)
        np.testing.assert_allclose(kept[:, 3], [e[i] for i in order], rtol=1e-6)
        np.testing.assert_allclose(kept[:, 1], [eta[i] - jet_eta for i in order], atol=1e-6)
    np.testing.assert_allclose(out.jets[0], [math.hypot(jet[0], jet[1]), jet_eta, jet_phi, jet[3],
                                             math.sqrt(jet[3] ** 2 - (jet[:3] ** 2).sum()), 5], rtol=1e-5)
    assert out.particle_mask[0, 0].sum() == 2 and out.particle_mask[0, 1].sum() == 3
    assert not out.particle_mask[0, 2:].any()
    assert np.all(out.particles[0][~out.particle_mask[0]] == 0) and np.all(out.subjets[0, 2:] == 0)


def test_delta_phi_wraps_across_pi():
    """A jet at φ ≈ π with constituents on both sides: Δφ is small, not ≈ 2π."""
    px, py, pz, e, offsets = make_jet([100.0, 100.0], [0.0, 0.0], [math.pi - 0.3, -math.pi + 0.3])
    out = features(px, py, pz, e, offsets)
    assert out.subjet_mask[0, :2].all()
    # jet axis at φ = π; constituents at Δφ = ∓0.3
    np.testing.assert_allclose(sorted(out.subjets[0, :2, 2]), [math.sin(-0.15), math.sin(0.15)], atol=1e-6)
    np.testing.assert_allclose(abs(out.jets[0, 2]), math.pi, atol=1e-6)


def test_truncation_to_s_subjets_and_n_constituents_keeps_the_hardest():
    # 5 isolated constituents (5 subjets at R=0.2), and one subjet of 6 collinear-ish constituents.
    pt = [10.0, 20.0, 30.0, 40.0, 50.0] + [5.0, 6.0, 7.0, 8.0, 9.0, 100.0]
    eta = [-1.0, -0.5, 0.0, 0.5, 1.0] + [1.8] * 6
    phi = [0.0, 0.0, 0.0, 0.0, 0.0] + [0.0, 0.01, 0.02, 0.03, 0.04, 0.05]
    px, py, pz, e, offsets = make_jet(pt, eta, phi)
    out = features(px, py, pz, e, offsets, n_subjets=3, n_particles=4)
    assert out.particles.shape == (1, 3, 4, 4)
    assert out.subjet_mask[0].all()
    assert out.subjet_nparticles[0].tolist() == [6, 1, 1]  # counts before truncation
    np.testing.assert_allclose(out.particles[0, 0, :, 0], [100.0, 9.0, 8.0, 7.0], rtol=1e-6)
    np.testing.assert_allclose(out.particles[0, 1:, 0, 0], [50.0, 40.0], rtol=1e-6)
    assert out.particle_mask[0].sum(axis=1).tolist() == [4, 1, 1]


def test_several_jets_and_labels_stay_in_order():
    a = make_jet([100.0, 50.0], [0.1, 0.9], [0.0, 0.5])
    b = make_jet([70.0], [-0.3], [2.0])
    px, py, pz, e = (np.concatenate([x, y]) for x, y in zip(a[:4], b[:4], strict=True))
    offsets = np.array([0, 2, 3])
    out = features(px, py, pz, e, offsets, labels=np.array([1, 0]))
    assert out.labels.tolist() == [1, 0]
    assert out.jets[:, 5].tolist() == [2, 1]
    assert out.subjet_mask.sum(axis=1).tolist() == [2, 1]
    np.testing.assert_allclose(out.subjets[1, 0], [70.0, 0.0, 0.0, e[2]], atol=1e-5)
