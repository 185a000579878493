"""JetClass ROOT files: TTree ``tree``, jagged ``part_*`` constituents, ten one-hot ``label_*``.

Real files hold ``std::vector<float>`` branches without counters; files written by uproot hold
``float[]`` branches with a counter. ``tree.arrays`` reads both the same way. ``aux_*`` branches
are truth information and are never read.
"""

from __future__ import annotations

import awkward as ak
import numpy as np
import uproot
from jjepa.common.errors import InputError
from jjepa.preprocess.readers._errors import wrap_io_errors
from jjepa.preprocess.readers.base import JETCLASS_CLASSES, JetChunk, SourceInfo, offsets_from_counts

TREE = "tree"
CONSTITUENT_BRANCHES = ("part_px", "part_py", "part_pz", "part_energy")
LABEL_BRANCHES = tuple(f"label_{c}" for c in JETCLASS_CLASSES)


def _tree(path: str):
    with wrap_io_errors(path, "open as ROOT"):
        file = uproot.open(path)
    if TREE not in file:
        raise InputError(path, f"no TTree {TREE!r}; it holds {sorted(file.keys(cycle=False))}",
                         hint="use --format generic --tree NAME for other layouts")
    return file[TREE]


def _labelled(tree, path: str) -> bool:
    present = [b for b in LABEL_BRANCHES if b in tree]
    if present and len(present) != len(LABEL_BRANCHES):
        missing = sorted(set(LABEL_BRANCHES) - set(present))
        raise InputError(path, f"label branches {missing} missing (it has {present})")
    return bool(present)


def info(path: str, options=None) -> SourceInfo:
    """Number of jets and class names (JetClass order) of a JetClass file."""
    tree = _tree(path)
    missing = [b for b in CONSTITUENT_BRANCHES if b not in tree]
    if missing:
        raise InputError(path, f"tree {TREE!r} lacks branches {missing}; it has {sorted(tree.keys())}")
    _labelled(tree, path)
    return SourceInfo(n_jets=int(tree.num_entries), classes=JETCLASS_CLASSES)


def read(path: str, start: int, stop: int, options=None) -> JetChunk:
    """Read jets ``[start, stop)``: constituents (GeV) and the class index from the one-hot labels."""
    tree = _tree(path)
    labelled = _labelled(tree, path)
    branches = list(CONSTITUENT_BRANCHES) + (list(LABEL_BRANCHES) if labelled else [])
    with wrap_io_errors(path, f"read entries {start}-{stop - 1}"):
        arrays = tree.arrays(branches, entry_start=start, entry_stop=stop, library="ak")
    counts = ak.to_numpy(ak.num(arrays["part_px"], axis=1))
    flat = {b: ak.to_numpy(ak.flatten(arrays[b], axis=None)).astype(np.float64) for b in CONSTITUENT_BRANCHES}
    n = stop - start
    labels = np.full(n, -1, dtype=np.int64)
    if labelled:
        onehot = np.stack([ak.to_numpy(arrays[b]) != 0 for b in LABEL_BRANCHES], axis=1)
        n_set = onehot.sum(axis=1)
        if np.any(n_set != 1):
            bad = int(np.flatnonzero(n_set != 1)[0])
            raise InputError(path, f"{int(n_set[bad])} of the label_* branches are set (expected exactly one)",
                             entry=start + bad)
        labels = onehot.argmax(axis=1).astype(np.int64)
    return JetChunk(px=flat["part_px"], py=flat["part_py"], pz=flat["part_pz"], energy=flat["part_energy"],
                    offsets=offsets_from_counts(counts), labels=labels, path=str(path), start=start, stop=stop)
