"""Any ROOT tree or HDF5 file, with the branch (dataset) names given by the user.

Constituents are either (px, py, pz, E) or (pT, η, φ, E) in GeV and radians. ROOT branches are
jagged (one entry per jet); HDF5 datasets are 2-D ``(J, M)`` zero-padded arrays, a slot being
real iff its energy is > 0. The label is optional: without it jets are unlabeled (−1), the normal
case when pretraining on collision data.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import uproot
from jjepa.common.errors import InputError
from jjepa.preprocess.readers._errors import wrap_io_errors
from jjepa.preprocess.readers.base import GenericOptions, JetChunk, SourceInfo, offsets_from_counts

ROOT_SUFFIXES = (".root",)


def _kinematic_names(options: GenericOptions, path: str) -> tuple[str, tuple[str, ...]]:
    if options is None:
        options = GenericOptions()
    cartesian = (options.px, options.py, options.pz, options.energy)
    polar = (options.pt, options.eta, options.phi, options.energy)
    if all(cartesian):
        return "cartesian", cartesian
    if all(polar):
        return "polar", polar
    raise InputError(path, "the generic reader needs --px --py --pz --energy or --pt --eta --phi --energy",
                     hint="or a --branches YAML with those keys")


def _is_root(path: str) -> bool:
    return Path(path).suffix.lower() in ROOT_SUFFIXES


def _root_tree(path: str, options: GenericOptions):
    with wrap_io_errors(path, "open as ROOT"):
        file = uproot.open(path)
        trees = [k for k, c in file.classnames(cycle=False).items() if c == "TTree"]
    if options.tree:
        if options.tree not in file:
            raise InputError(path, f"no tree {options.tree!r}; trees here: {trees}")
        return file[options.tree]
    if len(trees) != 1:
        raise InputError(path, f"{len(trees)} TTrees ({trees}); name one with --tree")
    return file[trees[0]]


def _check_present(path: str, names, available) -> None:
    missing = [n for n in names if n not in available]
    if missing:
        raise InputError(path, f"missing branches/datasets {missing}; available: {sorted(available)}")


def _to_cartesian(kind: str, a, b, c):
    if kind == "cartesian":
        return a, b, c
    pt, eta, phi = a, b, c
    return pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)


def info(path: str, options: GenericOptions) -> SourceInfo:
    """Number of jets; class names from the options (none when unlabeled)."""
    _, names = _kinematic_names(options, path)
    wanted = list(names) + ([options.label] if options.label else [])
    if _is_root(path):
        tree = _root_tree(path, options)
        _check_present(path, wanted, tree.keys())
        n_jets = int(tree.num_entries)
    else:
        with wrap_io_errors(path, "open as HDF5"), h5py.File(path, "r") as f:
            available = []
            f.visit(available.append)
            _check_present(path, wanted, available)
            n_jets = int(f[names[0]].shape[0])
    classes = tuple(options.classes)
    if options.label and not classes:
        classes = ()
    return SourceInfo(n_jets=n_jets, classes=classes)


def read(path: str, start: int, stop: int, options: GenericOptions) -> JetChunk:
    """Read jets ``[start, stop)`` with the configured names; returns constituents in (px, py, pz, E)."""
    kind, names = _kinematic_names(options, path)
    n = stop - start
    if _is_root(path):
        tree = _root_tree(path, options)
        branches = list(names) + ([options.label] if options.label else [])
        with wrap_io_errors(path, f"read entries {start}-{stop - 1}"):
            arrays = tree.arrays(branches, entry_start=start, entry_stop=stop, library="ak")
        counts = ak.to_numpy(ak.num(arrays[names[0]], axis=1))
        a, b, c, e = (ak.to_numpy(ak.flatten(arrays[x], axis=None)).astype(np.float64) for x in names)
        labels = ak.to_numpy(arrays[options.label]).astype(np.int64) if options.label else np.full(n, -1, np.int64)
    else:
        with wrap_io_errors(path, f"read rows {start}-{stop - 1}"), h5py.File(path, "r") as f:
            blocks = [f[x][start:stop] for x in names]
            labels = f[options.label][start:stop].astype(np.int64) if options.label else np.full(n, -1, np.int64)
        if any(blk.ndim != 2 for blk in blocks):
            raise InputError(path, f"HDF5 datasets {list(names)} must be 2-D (jets, constituents), zero-padded")
        real = blocks[3] > 0
        counts = real.sum(axis=1)
        a, b, c, e = (blk[real].astype(np.float64) for blk in blocks)
    px, py, pz = _to_cartesian(kind, a, b, c)
    return JetChunk(px=px, py=py, pz=pz, energy=e, offsets=offsets_from_counts(counts), labels=labels,
                    path=str(path), start=start, stop=stop)
