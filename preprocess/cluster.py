"""Sequential-recombination reclustering (Cambridge–Aachen, kt, anti-kt) as a Numba kernel.

The kernel reproduces FastJet's ``N2Plain`` strategy step for step: the same rapidity and φ
definitions (``PseudoJet::_set_rap_phi``), the same geometric distance in (y, φ) with the φ wrap,
the same nearest-neighbour bookkeeping and the same strict ``<`` comparisons, E-scheme
recombination and inclusive jets (every jet that merges with the beam). It therefore gives the
identical constituent partition as FastJet, which the tests check against the ``fastjet`` package.
The one exception is exact distance ties (duplicated constituents, lattices): above about 30
constituents FastJet's default strategy is a tiled one, which may break such ties differently from
``N2Plain``; the tests pin those cases against ``N2Plain``. A (y, φ) grid restricting neighbour
searches to cells of side R was tried and was slower on Pythia jets (their dense cores keep about
half the constituents within the 3×3 cells at R = 0.2), so it was not kept (docs/performance.md).
All jets of a chunk are clustered in one call over flat arrays (content + offsets); there is no
per-jet Python.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

#: The generalised-kt exponent p of each algorithm: d_ij = min(pT_i^2p, pT_j^2p) ΔR²_ij / R².
ALGORITHM_POWER: dict[str, int] = {"kt": 1, "ca": 0, "antikt": -1}

_TWOPI = 2.0 * math.pi
_MAX_RAP = 1e5  # FastJet's MaxRap: rapidity given to zero-pT, lightlike momenta


@nb.njit(cache=True, inline="always")
def _rap_phi(px, py, pz, e):
    """(rapidity, φ in [0, 2π)) exactly as FastJet's ``PseudoJet::_set_rap_phi``."""
    kt2 = px * px + py * py
    phi = 0.0 if kt2 == 0.0 else math.atan2(py, px)
    if phi < 0.0:
        phi += _TWOPI
    if phi >= _TWOPI:
        phi -= _TWOPI
    if e == abs(pz) and kt2 == 0.0:
        rap = _MAX_RAP + abs(pz)
        if pz < 0.0:
            rap = -rap
    else:
        m2 = (e + pz) * (e - pz) - kt2
        effective_m2 = m2 if m2 > 0.0 else 0.0
        e_plus_pz = e + abs(pz)
        rap = 0.5 * math.log((kt2 + effective_m2) / (e_plus_pz * e_plus_pz))
        if pz > 0.0:
            rap = -rap
    return rap, phi


@nb.njit(cache=True, inline="always")
def _momentum_scale(px, py, power):
    """FastJet's ``jet_scale_for_algorithm``: kt², 1 or 1/kt² for kt, CA, anti-kt."""
    if power == 0:
        return 1.0
    kt2 = px * px + py * py
    if power == 1:
        return kt2
    return 1.0 / kt2 if kt2 > 1e-300 else 1e300


@nb.njit(cache=True, inline="always")
def _dist(rap, phi, a, b):
    dphi = abs(phi[a] - phi[b])
    deta = rap[a] - rap[b]
    dphi = _TWOPI - dphi if dphi > math.pi else dphi  # a select, not a branch
    return dphi * dphi + deta * deta


@nb.njit(cache=True, inline="always")
def _dij(slot, nn, nn_dist, scale):
    s = scale[slot]
    j = nn[slot]
    if j >= 0 and scale[j] < s:
        s = scale[j]
    return nn_dist[slot] * s


@nb.njit(cache=True)
def _cluster_one(px, py, pz, e, power, r2, assign, work_f, work_i):
    """Cluster one jet's n constituents; write each constituent's subjet number into ``assign``.

    Slots 0..n-1 hold the current pseudojets (FastJet's BriefJet array): the merged jet takes the
    lower slot of the pair and the removed slot is refilled from the tail, the smallest d_iJ is
    searched in slot order with a strict ``<``, exactly as in FastJet's ``_simple_N2_cluster``.
    Constituent membership is kept as linked lists (head/next/last per slot), so a merge is O(1).
    Returns the number of subjets (inclusive jets).
    """
    n = px.shape[0]
    jpx = work_f[0, :n]
    jpy = work_f[1, :n]
    jpz = work_f[2, :n]
    je = work_f[3, :n]
    rap = work_f[4, :n]
    phi = work_f[5, :n]
    scale = work_f[6, :n]
    nn_dist = work_f[7, :n]
    dij = work_f[8, :n]
    nn = work_i[0, :n]
    head = work_i[1, :n]
    last = work_i[2, :n]
    nxt = work_i[3, :n]

    for i in range(n):
        jpx[i] = px[i]
        jpy[i] = py[i]
        jpz[i] = pz[i]
        je[i] = e[i]
        rap[i], phi[i] = _rap_phi(px[i], py[i], pz[i], e[i])
        scale[i] = _momentum_scale(px[i], py[i], power)
        nn_dist[i] = r2
        nn[i] = -1
        head[i] = i
        last[i] = i
        nxt[i] = -1

    # Initial nearest neighbours (FastJet's _bj_set_NN_crosscheck over the preceding jets).
    for a in range(1, n):
        best = r2
        best_j = -1
        for b in range(a):
            d = _dist(rap, phi, a, b)
            if d < best:
                best = d
                best_j = b
            if d < nn_dist[b]:
                nn_dist[b] = d
                nn[b] = a
        nn[a] = best_j
        nn_dist[a] = best
    for i in range(n):
        dij[i] = _dij(i, nn, nn_dist, scale)

    n_sub = 0
    tail = n
    # The first smallest d_iJ in slot order; later steps find it while updating the table.
    best = dij[0]
    next_a = 0
    for i in range(1, tail):
        if dij[i] < best:
            best = dij[i]
            next_a = i
    while tail > 0:
        ia = next_a
        ib = nn[ia]
        if ib < 0 and power == 0:
            # CA: d_iB = R² for all, so once the smallest d_iJ has no neighbour, no pair is
            # within R any more and every remaining pseudojet is a subjet.
            for s in range(tail):
                k = head[s]
                while k >= 0:
                    assign[k] = n_sub
                    k = nxt[k]
                n_sub += 1
            return n_sub
        if ib >= 0:
            if ia < ib:
                ia, ib = ib, ia
            # E-scheme merge into the lower slot ib; append a's constituents to b's list.
            jpx[ib] = jpx[ia] + jpx[ib]
            jpy[ib] = jpy[ia] + jpy[ib]
            jpz[ib] = jpz[ia] + jpz[ib]
            je[ib] = je[ia] + je[ib]
            rap[ib], phi[ib] = _rap_phi(jpx[ib], jpy[ib], jpz[ib], je[ib])
            scale[ib] = _momentum_scale(jpx[ib], jpy[ib], power)
            nn_dist[ib] = r2
            nn[ib] = -1
            nxt[last[ib]] = head[ia]
            last[ib] = last[ia]
        else:
            # Beam merge: slot ia becomes a subjet.
            k = head[ia]
            while k >= 0:
                assign[k] = n_sub
                k = nxt[k]
            n_sub += 1

        # Move the tail pseudojet into slot ia.
        tail -= 1
        jpx[ia] = jpx[tail]
        jpy[ia] = jpy[tail]
        jpz[ia] = jpz[tail]
        je[ia] = je[tail]
        rap[ia] = rap[tail]
        phi[ia] = phi[tail]
        scale[ia] = scale[tail]
        nn_dist[ia] = nn_dist[tail]
        nn[ia] = nn[tail]
        dij[ia] = dij[tail]
        head[ia] = head[tail]
        last[ia] = last[tail]

        best = np.inf
        next_a = -1
        for i in range(tail):
            # FastJet also rescans jets without a neighbour after a beam merge (NULL == NULL);
            # removing a jet cannot give them one, so skipping that is exact and avoids O(n³).
            if nn[i] == ia or (ib >= 0 and nn[i] == ib):
                best_d = r2
                best_j = -1
                for j in range(tail):
                    if j != i:
                        d = _dist(rap, phi, i, j)
                        if d < best_d:
                            best_d = d
                            best_j = j
                nn_dist[i] = best_d
                nn[i] = best_j
                dij[i] = _dij(i, nn, nn_dist, scale)
            if ib >= 0 and i != ib:
                d = _dist(rap, phi, i, ib)
                if d < nn_dist[i]:
                    nn_dist[i] = d
                    nn[i] = ib
                    dij[i] = _dij(i, nn, nn_dist, scale)
                if d < nn_dist[ib]:
                    nn_dist[ib] = d
                    nn[ib] = i
            if nn[i] == tail:
                nn[i] = ia
            if i != ib and dij[i] < best:
                best = dij[i]
                next_a = i
        if ib >= 0:
            dij[ib] = _dij(ib, nn, nn_dist, scale)
            if dij[ib] < best or (dij[ib] == best and ib < next_a):
                best = dij[ib]
                next_a = ib
    return n_sub


@nb.njit(cache=True, nogil=True)
def cluster_kernel(px, py, pz, e, offsets, power, radius, assign, n_subjets):
    """Cluster every jet of a chunk into inclusive subjets.

    Args:
        px, py, pz, e: float64 (P,), constituent four-momenta [GeV], jet after jet.
        offsets: int64 (J+1,), jet j owns constituents ``offsets[j]:offsets[j+1]``.
        power: generalised-kt exponent (1 kt, 0 CA, −1 anti-kt).
        radius: R in (y, φ).
        assign: int32 (P,), output: each constituent's subjet number within its jet (0-based,
            in the order the inclusive jets are found, not pT-ordered).
        n_subjets: int32 (J,), output: the number of subjets of each jet.
    """
    n_jets = offsets.shape[0] - 1
    max_n = 1
    for j in range(n_jets):
        max_n = max(max_n, offsets[j + 1] - offsets[j])
    work_f = np.empty((9, max_n), dtype=np.float64)
    work_i = np.empty((4, max_n), dtype=np.int64)
    r2 = radius * radius
    for j in range(n_jets):
        lo = offsets[j]
        hi = offsets[j + 1]
        n_subjets[j] = _cluster_one(px[lo:hi], py[lo:hi], pz[lo:hi], e[lo:hi], power, r2, assign[lo:hi],
                                    work_f, work_i)


def cluster(px, py, pz, e, offsets, algorithm: str = "ca", radius: float = 0.2):
    """Recluster jets into inclusive subjets with the Numba kernel.

    Args:
        px, py, pz, e: (P,) constituent four-momenta [GeV] (converted to float64, as FastJet does).
        offsets: (J+1,) jet boundaries into the constituent arrays.
        algorithm: ``ca``, ``kt`` or ``antikt``.
        radius: subjet radius R.

    Returns:
        ``(assign, n_subjets)``: int32 (P,) subjet number of each constituent within its jet, and
        int32 (J,) subjets per jet.
    """
    f64 = [np.ascontiguousarray(a, dtype=np.float64) for a in (px, py, pz, e)]
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    assign = np.empty(f64[0].shape[0], dtype=np.int32)
    n_subjets = np.empty(offsets.shape[0] - 1, dtype=np.int32)
    cluster_kernel(*f64, offsets, ALGORITHM_POWER[algorithm], float(radius), assign, n_subjets)
    return assign, n_subjets


_FASTJET_ALGORITHMS = {"kt": "kt_algorithm", "ca": "cambridge_algorithm", "antikt": "antikt_algorithm"}


def cluster_fastjet(px, py, pz, e, offsets, algorithm: str = "ca", radius: float = 0.2,
                    strategy: str | None = None):
    """The same as ``cluster`` through FastJet's vectorised awkward interface (backend and test oracle).

    Args:
        strategy: a FastJet strategy name such as ``N2Plain``; the default is FastJet's ``Best``.
            Both give our kernel's partition except where distances tie exactly: ``N2Plain``
            breaks ties as the kernel does.

    Returns:
        ``(assign, n_subjets)`` as ``cluster`` does; subjet numbers follow FastJet's inclusive-jet order.
    """
    import awkward as ak
    import fastjet

    counts = np.diff(np.asarray(offsets, dtype=np.int64))
    particles = ak.unflatten(
        ak.zip({"px": np.asarray(px, np.float64), "py": np.asarray(py, np.float64),
                "pz": np.asarray(pz, np.float64), "E": np.asarray(e, np.float64)}), counts)
    algorithm_id = getattr(fastjet, _FASTJET_ALGORITHMS[algorithm])
    if strategy is None:
        jet_def = fastjet.JetDefinition(algorithm_id, float(radius))
    else:  # the full constructor; 1 = the number of parameters (R) of these algorithms
        jet_def = fastjet.JetDefinition(algorithm_id, float(radius), fastjet.E_scheme, getattr(fastjet, strategy), 1)
    index = fastjet.ClusterSequence(particles, jet_def).constituent_index()  # (J, subjet, constituent)
    n_subjets = ak.to_numpy(ak.num(index, axis=1)).astype(np.int32)
    subjet_of = ak.flatten(ak.broadcast_arrays(ak.local_index(index, axis=1), index)[0], axis=None)
    local = ak.to_numpy(ak.flatten(index, axis=None)).astype(np.int64)
    jet_of = np.repeat(np.arange(len(counts)), ak.to_numpy(ak.sum(ak.num(index, axis=2), axis=1)))
    assign = np.empty(int(counts.sum()), dtype=np.int32)
    assign[np.asarray(offsets, dtype=np.int64)[jet_of] + local] = ak.to_numpy(subjet_of)
    return assign, n_subjets
