"""Writers of the public datasets' own layouts, for simulated jets, tests and benchmarks.

``write_jetclass_root`` writes a JetClass-like ROOT TTree (``mktree`` + ``extend``: a TTree like
the real files, not the RNTuple that ``f["tree"] = {...}`` makes in uproot 5);
``write_toptagging_h5`` writes the Top Quark Tagging pandas table/Blosc layout. Both write to a
temporary name and rename.
"""

from __future__ import annotations

import numpy as np
from jjepa.common.atomic import atomic_path
from jjepa.preprocess.readers.base import JetChunk
from jjepa.preprocess.readers.jetclass import LABEL_BRANCHES
from jjepa.preprocess.readers.toptagging import EXPECTED_COLUMNS, N_CONSTITUENTS

#: The real files mix label dtypes; we reproduce a float, a bool and int32 ones.
_LABEL_DTYPES = {"label_QCD": np.float32, "label_Hbb": np.bool_}


def _jet_kinematics(chunk: JetChunk) -> dict[str, np.ndarray]:
    """Jet pT, η, φ, E [GeV, rad] and constituent count: the E-scheme sum of the constituents."""
    counts = np.diff(chunk.offsets)
    idx = np.repeat(np.arange(chunk.n_jets), counts)
    px, py, pz, e = (np.bincount(idx, weights=a, minlength=chunk.n_jets)
                     for a in (chunk.px, chunk.py, chunk.pz, chunk.energy))
    pt = np.hypot(px, py)
    return {"jet_pt": pt, "jet_eta": np.arcsinh(pz / np.where(pt > 0, pt, 1.0)), "jet_phi": np.arctan2(py, px),
            "jet_energy": e, "jet_nparticles": counts.astype(np.float32)}


def write_jetclass_root(path, chunk: JetChunk, jet_scalars: dict[str, np.ndarray] | None = None) -> None:
    """Write ``chunk`` as a JetClass ROOT file (TTree ``tree``).

    Args:
        path: output ``.root`` file.
        chunk: constituents [GeV]; labels are JetClass class indices (0 = QCD … 8 = Tbqq), or −1
            for no label branches at all.
        jet_scalars: optional extra per-jet branches (e.g. ``jet_sdmass``, ``jet_tau1``…);
            missing JetClass scalars are written as zeros.
    """
    import awkward as ak
    import uproot

    counts = np.diff(chunk.offsets)
    branches = {name: ak.unflatten(getattr(chunk, attr).astype(np.float32), counts)
                for name, attr in (("part_px", "px"), ("part_py", "py"), ("part_pz", "pz"), ("part_energy", "energy"))}
    scalars = _jet_kinematics(chunk)
    for name in ("jet_sdmass", "jet_tau1", "jet_tau2", "jet_tau3", "jet_tau4"):
        scalars[name] = np.zeros(chunk.n_jets)
    scalars.update(jet_scalars or {})
    branches.update({k: np.asarray(v, dtype=np.float32) for k, v in scalars.items()})
    if np.any(chunk.labels >= 0):
        for index, name in enumerate(LABEL_BRANCHES):
            branches[name] = (chunk.labels == index).astype(_LABEL_DTYPES.get(name, np.int32))
    with atomic_path(path) as tmp:
        with uproot.recreate(tmp) as f:
            tree = f.mktree("tree", {k: ("var * float32" if isinstance(v, ak.Array) else v.dtype)
                                     for k, v in branches.items()}, counter_name=lambda _: "npart")
            tree.extend(branches)


def write_toptagging_h5(path, chunk: JetChunk, max_particles: int = N_CONSTITUENTS) -> None:
    """Write ``chunk`` in the Top Quark Tagging layout (pandas table, key ``table``, Blosc).

    Keeps the ``max_particles`` highest-pT constituents of each jet, pT-ordered, zero-padded to
    200 slots; labels 0 = QCD, 1 = top (``is_signal_new``). Needs pandas (the ``sim`` extra).
    """
    import pandas as pd

    n_jets = chunk.n_jets
    counts = np.diff(chunk.offsets)
    jet_of = np.repeat(np.arange(n_jets), counts)
    pt = np.hypot(chunk.px, chunk.py)
    order = np.lexsort((-pt, jet_of))  # by jet, then decreasing pT
    rank = np.arange(len(order)) - np.repeat(chunk.offsets[:-1], counts)
    keep = rank < min(max_particles, N_CONSTITUENTS)
    block = np.zeros((n_jets, N_CONSTITUENTS, 4), dtype=np.float32)
    src = order[keep]
    block[jet_of[src], rank[keep]] = np.stack([chunk.energy, chunk.px, chunk.py, chunk.pz], axis=1)[src]
    values = np.concatenate([block.reshape(n_jets, -1), np.zeros((n_jets, 4), np.float32)], axis=1)
    frame = pd.DataFrame(values, columns=EXPECTED_COLUMNS)
    frame["ttv"] = np.zeros(n_jets, dtype=np.int64)
    frame["is_signal_new"] = chunk.labels.astype(np.int64)
    with atomic_path(path) as tmp:
        frame.to_hdf(tmp, key="table", format="table", complib="blosc", complevel=5)
