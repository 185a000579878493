"""Toy jets with physics-like subjet structure, written as schema-v1 shards, for tests and benchmarks.

Not a simulation (``jjepa-preprocess simulate`` runs Pythia 8): a fast, seeded stand-in whose two
classes differ the way top and QCD jets do. A "top" jet (label 1) has three hard prongs about
0.25–0.55 apart from the axis sharing ~85% of the jet pT, plus soft subjets spread over the cone; a
"QCD" jet (label 0) has one hard core carrying ~85% and soft subjets clustered around it. Each subjet
holds constituents with exponentially falling pT shares spread by ~0.04 around its axis; the
subjet four-vectors and jet quantities are computed from the constituents that are kept, so
the arrays obey every rule of the schema (pT-ordered, zero padding, masks consistent with counts).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from jjepa.common.schema import ClusterConfig, ShardArrays, ShardAttrs
from jjepa.common.shards import Manifest, record_for, shard_name, write_manifest, write_shard

CLASSES: tuple[str, ...] = ("qcd", "top")


def _wrap(phi: np.ndarray) -> np.ndarray:
    """Angles wrapped to (−π, π]."""
    return np.pi - np.mod(np.pi - phi, 2 * np.pi)


def toy_jets(n_jets: int, label: int, n_subjets: int, n_particles: int, seed: int) -> ShardArrays:
    """``n_jets`` toy jets of one class, vectorised over jets.

    Args:
        n_jets: J.
        label: 0 (QCD-like, one prong) or 1 (top-like, three prongs).
        n_subjets, n_particles: S and N of the arrays.
        seed: seeds ``np.random.default_rng``.

    Returns:
        Arrays shaped as in the shard schema: particles (J, S, N, 4) of (pT [GeV], Δη, sin(Δφ/2), E [GeV]), ….
    """
    rng = np.random.default_rng(seed)
    J, S, N = n_jets, n_subjets, n_particles
    slot = np.arange(S)
    jet_pt = rng.uniform(550.0, 650.0, J)
    jet_eta = rng.uniform(-2.0, 2.0, J)
    jet_phi = rng.uniform(-np.pi, np.pi, J)

    # Subjets: hard prongs first, then soft ones; shares of the jet pT.
    n_hard = 3 if label == 1 else 1
    n_soft = rng.poisson(3.0 if label == 1 else 4.0, J)
    n_sub = np.minimum(n_hard + n_soft, S)
    real = slot[None, :] < n_sub[:, None]
    hard = slot[None, :] < n_hard
    hard_shape = np.array([4.0, 3.0, 2.0]) if label == 1 else np.array([8.0])
    weight = np.where(hard, rng.gamma(np.pad(hard_shape, (0, max(S - n_hard, 0)), constant_values=1.0)[:S],
                                      size=(J, S)), rng.exponential(size=(J, S))) * real
    hard_sum = (weight * hard).sum(1, keepdims=True)
    soft_sum = (weight * ~hard).sum(1, keepdims=True)
    hard_frac = np.where(soft_sum > 0, 0.85, 1.0)
    share = np.where(hard, hard_frac * weight / hard_sum, (1 - hard_frac) * weight / np.maximum(soft_sum, 1e-12))
    sub_pt = share * jet_pt[:, None]

    theta0 = rng.uniform(0, 2 * np.pi, (J, 1))
    if label == 1:
        radius = np.where(hard, rng.uniform(0.25, 0.55, (J, S)), rng.uniform(0.0, 0.7, (J, S)))
        angle = np.where(hard, theta0 + slot * 2 * np.pi / 3 + rng.normal(0, 0.3, (J, S)),
                         rng.uniform(0, 2 * np.pi, (J, S)))
    else:
        radius = np.where(hard, np.abs(rng.normal(0, 0.03, (J, S))), np.abs(rng.normal(0, 0.25, (J, S))))
        angle = rng.uniform(0, 2 * np.pi, (J, S))
    sub_deta = np.clip(radius * np.cos(angle), -0.75, 0.75)
    sub_dphi = np.clip(radius * np.sin(angle), -0.75, 0.75)

    # Constituents: counts grow with the subjet pT; shares fall exponentially, pT-ordered.
    n_const = np.where(real, 1 + rng.poisson(1.0 + 0.6 * np.sqrt(sub_pt)), 0)
    kept = np.minimum(n_const, N)
    pmask = np.arange(N)[None, None, :] < kept[..., None]
    frac = -np.sort(-(rng.exponential(size=(J, S, N)) * pmask), axis=2)
    frac /= np.maximum(frac.sum(2, keepdims=True), 1e-12)
    pt = frac * sub_pt[..., None]
    deta = sub_deta[..., None] + rng.normal(0, 0.04, (J, S, N))
    dphi = sub_dphi[..., None] + rng.normal(0, 0.04, (J, S, N))
    eta = jet_eta[:, None, None] + deta
    phi = jet_phi[:, None, None] + dphi
    energy = pt * np.cosh(eta)

    px, py, pz = pt * np.cos(phi) * pmask, pt * np.sin(phi) * pmask, pt * np.sinh(eta) * pmask
    energy = energy * pmask
    sx, sy, sz, se = px.sum(2), py.sum(2), pz.sum(2), energy.sum(2)
    s_pt = np.hypot(sx, sy)
    s_eta = np.arcsinh(sz / np.maximum(s_pt, 1e-12))
    s_phi = np.arctan2(sy, sx)
    jx, jy, jz, je = sx.sum(1), sy.sum(1), sz.sum(1), se.sum(1)
    j_pt = np.hypot(jx, jy)
    j_eta = np.arcsinh(jz / j_pt)
    j_phi = np.arctan2(jy, jx)
    j_mass = np.sqrt(np.maximum(je**2 - jx**2 - jy**2 - jz**2, 0.0))

    # Features relative to the jet axis, then subjets in pT order.
    particles = np.stack([pt, eta - j_eta[:, None, None], np.sin(_wrap(phi - j_phi[:, None, None]) / 2), energy], -1)
    particles = np.where(pmask[..., None], particles, 0.0)
    subjets = np.stack([s_pt, s_eta - j_eta[:, None], np.sin(_wrap(s_phi - j_phi[:, None]) / 2), se], -1)
    subjets = np.where(real[..., None], subjets, 0.0)
    order = np.argsort(-np.where(real, s_pt, -1.0), axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)  # noqa: E731
    return ShardArrays(
        particles=take(particles).astype(np.float32),
        particle_mask=take(pmask),
        subjets=take(subjets).astype(np.float32),
        subjet_mask=take(real),
        subjet_nparticles=take(n_const).astype(np.int16),
        jets=np.stack([j_pt, j_eta, j_phi, je, j_mass, kept.sum(1)], -1).astype(np.float32),
        labels=np.full(J, label, dtype=np.int64),
    )


def write_toy_shards(folder: str | os.PathLike, n_shards: int, jets_per_shard: int, n_subjets: int,
                     n_particles: int, seed: int, particle_dtype: str = "float32") -> Manifest:
    """Write ``n_shards`` shards of toy jets plus ``manifest.json`` into ``folder``.

    Like real inputs (one file per process), each shard holds one class: even shards QCD-like,
    odd shards top-like. Shard k is seeded with ``seed + k``. ``particle_dtype`` (``float32`` or
    ``float16``) is how ``particles`` are stored; the jets are the same either way.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cluster = ClusterConfig(n_subjets=n_subjets, n_particles=n_particles)
    manifest = Manifest(cluster=cluster, classes=CLASSES)
    for k in range(n_shards):
        arrays = toy_jets(jets_per_shard, k % 2, n_subjets, n_particles, seed + k)
        source = {"generator": "jjepa.common.testing", "seed": seed + k}
        path = folder / shard_name(k)
        write_shard(path, arrays, ShardAttrs(cluster=cluster, classes=CLASSES, source=source,
                                             particle_dtype=particle_dtype))
        manifest.shards.append(record_for(path, arrays.labels, CLASSES, source))
    write_manifest(folder, manifest)
    return manifest
