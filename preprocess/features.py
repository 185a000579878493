"""From clustered constituents to the fixed (S, N) subjet arrays of a shard, in one Numba kernel.

Per jet: the jet axis is the E-scheme sum of all constituents; subjets are pT-ordered and the
hardest S kept; within each subjet the constituents are pT-ordered and the hardest N kept. Each
constituent and subjet is described by (pT [GeV], Δη, sin(Δφ/2), E [GeV]) relative to the jet
axis, with η the pseudorapidity and Δφ wrapped to (−π, π]. Counts before truncation are kept.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from jjepa.common.schema import DATASET_NAMES, ClusterConfig, ShardArrays


@nb.njit(cache=True, inline="always")
def _pt_eta_phi(px, py, pz):
    """(pT, pseudorapidity η, φ in (−π, π]) of a momentum; η = asinh(pz/pT)."""
    pt = math.sqrt(px * px + py * py)
    return pt, math.asinh(pz / pt), math.atan2(py, px)


@nb.njit(cache=True, inline="always")
def _wrap(dphi):
    """Wrap an angle difference [rad] into (−π, π]."""
    while dphi > math.pi:
        dphi -= 2.0 * math.pi
    while dphi <= -math.pi:
        dphi += 2.0 * math.pi
    return dphi


@nb.njit(cache=True, inline="always")
def _sort_desc(index, key, n):
    """Stable insertion sort of ``index[:n]`` by decreasing ``key[index]`` (n is small: no allocation)."""
    for a in range(1, n):
        item = index[a]
        value = key[item]
        b = a - 1
        while b >= 0 and key[index[b]] < value:
            index[b + 1] = index[b]
            b -= 1
        index[b + 1] = item


@nb.njit(cache=True, nogil=True)
def features_kernel(px, py, pz, e, offsets, assign, n_subjets, particles, particle_mask, subjets,
                    subjet_mask, subjet_nparticles, jets):
    """Fill the shard arrays (zero-initialised, shapes as in the schema) for every jet.

    Args:
        px, py, pz, e: float64 (P,) constituent four-momenta [GeV].
        offsets: int64 (J+1,) jet boundaries.
        assign: int32 (P,) subjet number of each constituent within its jet (from the clustering).
        n_subjets: int32 (J,) subjets per jet.
        particles: float32 (J, S, N, 4) out; particle_mask: bool (J, S, N) out;
        subjets: float32 (J, S, 4) out; subjet_mask: bool (J, S) out;
        subjet_nparticles: int16 (J, S) out; jets: float32 (J, 6) out.
    """
    n_jets = offsets.shape[0] - 1
    max_s = particles.shape[1]
    max_n = particles.shape[2]
    max_sub = 1
    max_const = 1
    for j in range(n_jets):
        max_sub = max(max_sub, n_subjets[j])
        max_const = max(max_const, offsets[j + 1] - offsets[j])
    sub_p4 = np.empty((max_sub, 4), dtype=np.float64)
    sub_pt = np.empty(max_sub, dtype=np.float64)
    sub_count = np.empty(max_sub, dtype=np.int64)
    sub_start = np.empty(max_sub + 1, dtype=np.int64)
    grouped = np.empty(max_const, dtype=np.int64)
    fill = np.empty(max_sub, dtype=np.int64)
    order = np.empty(max_sub, dtype=np.int64)
    const_pt = np.empty(max_const, dtype=np.float64)

    for j in range(n_jets):
        lo = offsets[j]
        hi = offsets[j + 1]
        ns = n_subjets[j]
        jpx = 0.0
        jpy = 0.0
        jpz = 0.0
        je = 0.0
        sub_p4[:ns] = 0.0
        sub_count[:ns] = 0
        for k in range(lo, hi):
            jpx += px[k]
            jpy += py[k]
            jpz += pz[k]
            je += e[k]
            s = assign[k]
            sub_p4[s, 0] += px[k]
            sub_p4[s, 1] += py[k]
            sub_p4[s, 2] += pz[k]
            sub_p4[s, 3] += e[k]
            sub_count[s] += 1
            const_pt[k - lo] = math.sqrt(px[k] * px[k] + py[k] * py[k])
        jet_pt, jet_eta, jet_phi = _pt_eta_phi(jpx, jpy, jpz)
        m2 = je * je - jpx * jpx - jpy * jpy - jpz * jpz
        jets[j, 0] = jet_pt
        jets[j, 1] = jet_eta
        jets[j, 2] = jet_phi
        jets[j, 3] = je
        jets[j, 4] = math.sqrt(m2) if m2 > 0.0 else 0.0
        jets[j, 5] = hi - lo

        # Group constituents by subjet (counting sort), keeping input order within a subjet.
        sub_start[0] = 0
        for s in range(ns):
            sub_start[s + 1] = sub_start[s] + sub_count[s]
            fill[s] = sub_start[s]
            sub_pt[s] = math.sqrt(sub_p4[s, 0] ** 2 + sub_p4[s, 1] ** 2)
            order[s] = s
        for k in range(lo, hi):
            s = assign[k]
            grouped[fill[s]] = k - lo
            fill[s] += 1

        _sort_desc(order, sub_pt, ns)
        for slot in range(min(ns, max_s)):
            s = order[slot]
            spt, seta, sphi = _pt_eta_phi(sub_p4[s, 0], sub_p4[s, 1], sub_p4[s, 2])
            subjets[j, slot, 0] = spt
            subjets[j, slot, 1] = seta - jet_eta
            subjets[j, slot, 2] = math.sin(0.5 * _wrap(sphi - jet_phi))
            subjets[j, slot, 3] = sub_p4[s, 3]
            subjet_mask[j, slot] = True
            subjet_nparticles[j, slot] = min(sub_count[s], 32767)
            members = grouped[sub_start[s]:sub_start[s + 1]]
            _sort_desc(members, const_pt, members.shape[0])
            for c in range(min(members.shape[0], max_n)):
                k = lo + members[c]
                cpt, ceta, cphi = _pt_eta_phi(px[k], py[k], pz[k])
                particles[j, slot, c, 0] = cpt
                particles[j, slot, c, 1] = ceta - jet_eta
                particles[j, slot, c, 2] = math.sin(0.5 * _wrap(cphi - jet_phi))
                particles[j, slot, c, 3] = e[k]
                particle_mask[j, slot, c] = True


def fill_features(px, py, pz, e, offsets, assign, n_subjets, labels, out: ShardArrays) -> None:
    """Overwrite ``out`` (J jets, any previous content) with the features of a clustered block.

    Args:
        px, py, pz, e: float64 (P,) constituent four-momenta [GeV].
        offsets: int64 (J+1,) jet boundaries, starting at 0.
        assign, n_subjets: the clustering's output (``jjepa.preprocess.cluster.cluster``).
        labels: int64 (J,) class indices (−1 unlabeled).
        out: ``ShardArrays`` of exactly J jets; padded slots are set to zero.
    """
    for name in DATASET_NAMES:
        getattr(out, name).fill(0)
    features_kernel(px, py, pz, e, offsets, assign, n_subjets, out.particles, out.particle_mask, out.subjets,
                    out.subjet_mask, out.subjet_nparticles, out.jets)
    out.labels[:] = labels


def build_features(px, py, pz, e, offsets, assign, n_subjets, labels, cluster: ClusterConfig) -> ShardArrays:
    """The shard arrays of a clustered chunk, newly allocated (see ``fill_features``).

    Returns:
        ``ShardArrays`` with (J, S, N, 4) particles etc., zero-padded; S and N from ``cluster``.
    """
    out = ShardArrays.empty(len(offsets) - 1, cluster.n_subjets, cluster.n_particles)
    fill_features(px, py, pz, e, offsets, assign, n_subjets, labels, out)
    return out
