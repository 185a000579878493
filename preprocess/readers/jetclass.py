"""JetClass ROOT files: TTree ``tree``, jagged ``part_*`` constituents, ten one-hot ``label_*``.

One jet per entry. Constituents are ``part_px, part_py, part_pz, part_energy`` in GeV (lab frame).
Real files hold ``std::vector<float>`` branches without counters; files written by uproot hold
``float[]`` branches with a counter (``npart``). ``tree.arrays`` reads both as ``var * float32``.
The labels are one-hot over ten branches of mixed dtypes (float, bool, int32), compared with
``!= 0``; a file with no ``label_*`` branches at all is unlabeled (−1). ``aux_*`` branches hold
truth information and are never read.
"""

from __future__ import annotations

import awkward as ak
import numpy as np
import uproot
from jjepa.common.errors import InputError
from jjepa.preprocess.readers._errors import wrap_io_errors
from jjepa.preprocess.readers.base import (
    JETCLASS_CLASSES,
    JetChunk,
    SourceInfo,
    check_range,
    check_root_complete,
    labels_from_onehot,
    offsets_from_counts,
    require_file,
)

TREE = "tree"
#: Constituent branches in the order (px, py, pz, E) of ``JetChunk``.
CONSTITUENT_BRANCHES: tuple[str, ...] = ("part_px", "part_py", "part_pz", "part_energy")
#: One-hot label branches, index = class index in ``JETCLASS_CLASSES``.
LABEL_BRANCHES: tuple[str, ...] = tuple(f"label_{c}" for c in JETCLASS_CLASSES)
_HINT_OTHER = "for other ROOT layouts use --format generic with --tree and the branch names"


def _tree(file, path: str):
    """The TTree ``tree`` of an open file, or an ``InputError`` saying what the file holds instead."""
    check_root_complete(file, path)
    classnames = file.classnames(cycle=False)
    kind = classnames.get(TREE)
    if kind is None:
        raise InputError(path, f"no TTree {TREE!r}; the file holds {classnames}", hint=_HINT_OTHER)
    if kind != "TTree":
        raise InputError(path, f"{TREE!r} is a {kind}, not a TTree like the JetClass files",
                         hint="uproot 5 writes an RNTuple for f['tree'] = {...}; write with f.mktree + extend")
    return file[TREE]


def _check_branches(tree, path: str) -> bool:
    """Check the constituent branches exist; return whether the file is labelled (all ten labels)."""
    keys = set(tree.keys())
    missing = [b for b in CONSTITUENT_BRANCHES if b not in keys]
    if missing:
        raise InputError(path, f"tree {TREE!r} lacks branches {missing}; it has {sorted(keys)}", hint=_HINT_OTHER)
    present = [b for b in LABEL_BRANCHES if b in keys]
    if present and len(present) != len(LABEL_BRANCHES):
        absent = [b for b in LABEL_BRANCHES if b not in keys]
        raise InputError(path, f"label branches {absent} are missing while {present} exist",
                         hint="a JetClass file has all ten label_* branches, or none when unlabeled")
    return bool(present)


def info(path: str, options=None) -> SourceInfo:
    """Number of jets and the JetClass class names of a JetClass file (``options`` is ignored)."""
    path = str(path)
    require_file(path)
    with wrap_io_errors(path, "open as ROOT"), uproot.open(path) as file:
        tree = _tree(file, path)
        _check_branches(tree, path)
        n_jets = int(tree.num_entries)
    return SourceInfo(n_jets=n_jets, classes=JETCLASS_CLASSES)


def _counts_and_values(column) -> tuple[np.ndarray, np.ndarray]:
    """Per-jet counts int64 (J,) and the flat values (P,) of a jagged ``var * number`` column.

    What uproot returns (a list-offset array over a flat NumPy buffer) is read off its offsets and
    buffer without copies; any other layout goes through ``ak.num`` and ``ak.flatten``.
    """
    layout = column.layout
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(layout.content, ak.contents.NumpyArray):
        offsets = np.asarray(layout.offsets.data)
        values = np.asarray(layout.content.data)
        if values.ndim == 1 and len(offsets) and offsets[-1] <= len(values):
            return np.diff(offsets).astype(np.int64), values[offsets[0]:offsets[-1]]
    return ak.to_numpy(ak.num(column, axis=1)).astype(np.int64), ak.to_numpy(ak.flatten(column, axis=1))


def _constituents(arrays, path: str, start: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-jet counts int64 (J,) and flat float64 (P,) px, py, pz, E from the jagged branches."""
    counts = None
    flat = []
    for name in CONSTITUENT_BRANCHES:
        column = arrays[name]
        if column.ndim != 2:
            raise InputError(path, f"branch {name} has type {column.type}, expected a list of numbers per jet")
        n, values = _counts_and_values(column)
        if counts is None:
            counts = n
        elif np.any(n != counts):
            bad = int(np.flatnonzero(n != counts)[0])
            raise InputError(path, f"{name} has {n[bad]} constituents but part_px has {counts[bad]}",
                             entry=start + bad)
        flat.append(np.ascontiguousarray(values, dtype=np.float64))  # one copy: float32 -> float64
    return counts, flat


def _labels(arrays, path: str, start: int) -> np.ndarray:
    """int64 (J,) class indices from the ten one-hot branches (any dtype; set means ``!= 0``)."""
    columns = []
    for name in LABEL_BRANCHES:
        column = arrays[name]
        if column.ndim != 1:
            raise InputError(path, f"branch {name} has type {column.type}, expected one number per jet")
        columns.append(ak.to_numpy(column) != 0)
    return labels_from_onehot(path, start, np.stack(columns, axis=1), LABEL_BRANCHES)


def read(path: str, start: int, stop: int, options=None) -> JetChunk:
    """Read jets ``[start, stop)`` of a JetClass file.

    Args:
        path: the ``.root`` file.
        start, stop: entry range; must lie within the file (nothing is clipped).
        options: ignored (the layout is fixed).

    Returns:
        A ``JetChunk`` with float64 constituents in GeV and labels from the one-hot branches
        (−1 when the file has no ``label_*`` branches).

    Raises:
        InputError: unreadable file, missing branches, an entry range outside the file, or a jet
            with zero or several labels set (naming the entry).
    """
    path = str(path)
    require_file(path)
    with wrap_io_errors(path, f"read entries [{start}, {stop})"), uproot.open(path) as file:
        tree = _tree(file, path)
        labelled = _check_branches(tree, path)
        check_range(path, start, stop, int(tree.num_entries))
        branches = list(CONSTITUENT_BRANCHES) + (list(LABEL_BRANCHES) if labelled else [])
        arrays = tree.arrays(branches, entry_start=start, entry_stop=stop, library="ak")
    counts, (px, py, pz, energy) = _constituents(arrays, path, start)
    labels = _labels(arrays, path, start) if labelled else np.full(stop - start, -1, dtype=np.int64)
    return JetChunk(px=px, py=py, pz=pz, energy=energy, offsets=offsets_from_counts(counts), labels=labels,
                    path=path, start=start, stop=stop)
