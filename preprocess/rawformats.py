"""Writers of the public datasets' own layouts, for simulated jets, tests and benchmarks.

- ``write_jetclass_root``: a JetClass-like ROOT file, TTree ``tree`` made with ``mktree`` +
  ``extend`` (a TTree like the real files, not the RNTuple that ``f["tree"] = {...}`` makes in
  uproot 5), jagged float32 ``part_*`` with the counter ``npart``, one-hot ``label_*`` branches in
  the real files' mixed dtypes, and the ``jet_*`` scalars.
- ``write_toptagging_h5``: the Top Quark Tagging pandas table/Blosc layout (``/table/table``
  with ``values_block_0`` float32[804] and ``values_block_1`` int64[2]).

Both write to a temporary name and rename, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import numpy as np
from jjepa.common.atomic import atomic_path
from jjepa.preprocess.readers.base import JetChunk
from jjepa.preprocess.readers.jetclass import CONSTITUENT_BRANCHES, LABEL_BRANCHES, TREE
from jjepa.preprocess.readers.toptagging import EXPECTED_COLUMNS, INT_COLUMNS, N_CONSTITUENTS, TABLE

#: The real JetClass files mix label dtypes; we write a float, a bool and int32 ones.
LABEL_DTYPES: dict[str, type] = {name: np.int32 for name in LABEL_BRANCHES} | {
    "label_QCD": np.float32, "label_Hbb": np.bool_}
#: JetClass jet-level branches, all float32 as in the real files.
JET_SCALARS: tuple[str, ...] = ("jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_nparticles", "jet_sdmass",
                                "jet_tau1", "jet_tau2", "jet_tau3", "jet_tau4")


def jet_kinematics(chunk: JetChunk) -> dict[str, np.ndarray]:
    """float64 (J,) jet pT [GeV], η, φ [rad], E [GeV] and constituent count: E-scheme constituent sums."""
    counts = np.diff(chunk.offsets)
    jet_of = np.repeat(np.arange(chunk.n_jets), counts)
    px, py, pz, e = (np.bincount(jet_of, weights=a, minlength=chunk.n_jets)
                     for a in (chunk.px, chunk.py, chunk.pz, chunk.energy))
    pt = np.hypot(px, py)
    return {"jet_pt": pt, "jet_eta": np.arcsinh(pz / np.where(pt > 0, pt, 1.0)), "jet_phi": np.arctan2(py, px),
            "jet_energy": e, "jet_nparticles": counts.astype(np.float64)}


def _jetclass_labels(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The ten one-hot ``label_*`` branches, or none when every label is −1 (unlabeled)."""
    labels = np.asarray(labels)
    if np.all(labels == -1):
        return {}
    if np.any((labels < 0) | (labels >= len(LABEL_BRANCHES))):
        raise ValueError(f"JetClass labels must all be in [0, {len(LABEL_BRANCHES)}) or all be -1; "
                         f"got values {np.unique(labels).tolist()}")
    return {name: (labels == index).astype(LABEL_DTYPES[name]) for index, name in enumerate(LABEL_BRANCHES)}


def write_jetclass_root(path, chunk: JetChunk, jet_scalars: dict[str, np.ndarray] | None = None,
                        basket_jets: int = 2_000) -> None:
    """Write ``chunk`` as a JetClass ROOT file (TTree ``tree``, one jet per entry).

    Args:
        path: output ``.root`` file (written to a temporary name, then renamed).
        chunk: constituents [GeV]; labels are JetClass class indices (0 = QCD … 9 = Tbl), or all
            −1 to write no ``label_*`` branches at all.
        jet_scalars: per-jet arrays (J,) written as float32 branches, replacing the computed
            ones; ``jet_sdmass`` and ``jet_tau1..4`` are zeros unless given here. ``jet_pt,
            jet_eta, jet_phi, jet_energy, jet_nparticles`` default to the constituent sums.
        basket_jets: jets per ROOT basket (one basket per branch per ``extend``): realistic
            basket sizes, so a reader of an entry range decompresses about that range only.
    """
    import awkward as ak
    import uproot

    n_jets = chunk.n_jets
    scalars = jet_kinematics(chunk) | {name: np.zeros(n_jets) for name in JET_SCALARS[5:]}
    for name, value in (jet_scalars or {}).items():
        if np.shape(value) != (n_jets,):
            raise ValueError(f"jet scalar {name!r} has shape {np.shape(value)}, expected ({n_jets},)")
        scalars[name] = value
    counts = np.diff(chunk.offsets)
    # A record of jagged fields named ``part`` becomes branches part_px… sharing the counter ``npart``.
    particles = ak.unflatten(ak.zip({name.removeprefix("part_"): np.asarray(getattr(chunk, attr), np.float32)
                                     for name, attr in zip(CONSTITUENT_BRANCHES, ("px", "py", "pz", "energy"),
                                                           strict=True)}), counts)
    flat_branches = _jetclass_labels(chunk.labels) | {k: np.asarray(v, np.float32) for k, v in scalars.items()}
    with atomic_path(path) as tmp:
        with uproot.recreate(tmp) as f:
            tree = f.mktree(TREE, {"part": particles.type.content} | {k: v.dtype for k, v in flat_branches.items()})
            for lo in range(0, max(n_jets, 1), basket_jets):
                hi = min(lo + basket_jets, n_jets)
                tree.extend({"part": particles[lo:hi]} | {k: v[lo:hi] for k, v in flat_branches.items()})


def toptagging_block(chunk: JetChunk, max_particles: int = N_CONSTITUENTS) -> np.ndarray:
    """float32 (J, 200, 4) of (E, px, py, pz) [GeV]: each jet's ``max_particles`` highest-pT constituents,
    in decreasing pT, zero-padded at the end (the Top Tagging convention)."""
    if not 1 <= max_particles <= N_CONSTITUENTS:
        raise ValueError(f"max_particles must be in [1, {N_CONSTITUENTS}], not {max_particles}")
    n_jets = chunk.n_jets
    counts = np.diff(chunk.offsets)
    jet_of = np.repeat(np.arange(n_jets), counts)
    order = np.lexsort((-np.hypot(chunk.px, chunk.py), jet_of))  # jet by jet, then decreasing pT
    rank = np.arange(len(order)) - np.repeat(chunk.offsets[:-1], counts)  # slot within its jet
    keep = rank < max_particles
    block = np.zeros((n_jets, N_CONSTITUENTS, 4), dtype=np.float32)
    p4 = np.stack([chunk.energy, chunk.px, chunk.py, chunk.pz], axis=1)
    block[jet_of[keep], rank[keep]] = p4[order[keep]]
    return block


def write_toptagging_h5(path, chunk: JetChunk, max_particles: int = N_CONSTITUENTS) -> None:
    """Write ``chunk`` in the Top Quark Tagging layout: pandas table under key ``table``, Blosc level 5.

    Columns ``E_i, PX_i, PY_i, PZ_i`` (i < 200, float32) hold each jet's ``max_particles``
    highest-pT constituents, pT-ordered and zero-padded; ``truthE..truthPZ`` (float32) are zeros;
    ``ttv`` (int64) is 0 and ``is_signal_new`` (int64) the label (0 = QCD, 1 = top). Needs pandas.
    Padding is all-zero slots, so a constituent with NaN or E <= 0 reads back as a (bad) constituent.

    Raises:
        ValueError: labels other than 0/1, or ``max_particles`` outside [1, 200].
        RuntimeError: pandas did not produce the expected ``/table/table`` layout.
    """
    import h5py
    import pandas as pd

    labels = np.asarray(chunk.labels)
    if np.any((labels != 0) & (labels != 1)):
        raise ValueError(f"Top Tagging labels must be 0 (QCD) or 1 (top); got {np.unique(labels).tolist()}")
    if chunk.n_jets == 0:
        raise ValueError("cannot write a Top Tagging file with no jets (pandas writes no table for an empty frame)")
    n_jets = chunk.n_jets
    values = np.concatenate([toptagging_block(chunk, max_particles).reshape(n_jets, -1),
                             np.zeros((n_jets, 4), np.float32)], axis=1)
    frame = pd.concat([pd.DataFrame(values, columns=EXPECTED_COLUMNS),
                       pd.DataFrame({INT_COLUMNS[0]: np.zeros(n_jets, np.int64),
                                     INT_COLUMNS[1]: labels.astype(np.int64)})], axis=1)
    with atomic_path(path) as tmp:
        frame.to_hdf(tmp, key="table", format="table", complib="blosc", complevel=5)
        with h5py.File(tmp, "r") as f:
            fields = f[TABLE].dtype.fields
        expected = {"values_block_0": ("float32", (len(EXPECTED_COLUMNS),)), "values_block_1": ("int64", (2,))}
        found = {k: (str(fields[k][0].base), fields[k][0].shape) for k in expected if k in fields}
        if found != expected:
            raise RuntimeError(f"pandas wrote {TABLE} with fields {found}, expected {expected}")
