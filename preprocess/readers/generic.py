"""Any ROOT tree or HDF5 file, with the branch (dataset) names given by the user (``GenericOptions``).

Constituents are either (px, py, pz, E) or (pT, η, φ, E), in GeV and radians; (pT, η, φ) are
converted with px = pT cos φ, py = pT sin φ, pz = pT sinh η. The container is told by the file's
first bytes, not its name.

Supported layouts:

- ROOT: a TTree (``options.tree``, or the only TTree in the file), one jet per entry, jagged
  branches (``std::vector<float>`` or ``float[]`` with a counter); fixed-size array branches
  (``float[M]``) are taken as zero-padded.
- HDF5, padded: 2-D datasets ``(jets, M)``, zero-padded.
- HDF5, flat: 1-D datasets ``(constituents,)`` jet after jet, plus a 1-D ``options.counts``
  dataset ``(jets,)`` of constituents per jet.

In the padded layouts a slot is padding iff all four of its values are zero (``base.real_slots``,
the rule of every reader); a NaN or a negative energy is a constituent that ``--on-bad-jet`` judges.
With (pT, η, φ, E) a negative pT is flagged before conversion (it would flip the direction).

The label is optional: without it jets are unlabeled (−1), the normal case when pretraining on
collision data. With it, ``options.classes`` names the classes; the label is an integer per jet
(``(jets,)``), or one-hot ``(jets, classes)`` in HDF5 or a fixed-size ROOT array.
"""

from __future__ import annotations

import contextlib

import awkward as ak
import h5py
import numpy as np
import uproot
from jjepa.common.errors import InputError
from jjepa.preprocess.readers._errors import wrap_io_errors
from jjepa.preprocess.readers.base import (
    GenericOptions,
    JetChunk,
    SourceInfo,
    check_range,
    check_root_complete,
    container_kind,
    flag_jets,
    jets_of,
    labels_from_onehot,
    offsets_from_counts,
    real_slots,
)

with contextlib.suppress(ImportError):  # registers Blosc, LZ4, Zstd… so h5py reads compressed datasets
    import hdf5plugin  # noqa: F401

_HDF5_LAYOUTS = ("2-D zero-padded datasets (jets, constituents), or 1-D flat datasets (constituents,) "
                 "plus a 1-D counts dataset (jets,) given as counts")


def _kinematic_names(options: GenericOptions | None, path: str) -> tuple[bool, tuple[str, str, str, str]]:
    """``(polar, names)``: whether the names are (pT, η, φ, E) rather than (px, py, pz, E)."""
    options = options or GenericOptions()
    cartesian = (options.px, options.py, options.pz, options.energy)
    polar = (options.pt, options.eta, options.phi, options.energy)
    if all(cartesian):
        return False, cartesian
    if all(polar):
        return True, polar
    raise InputError(path, "the generic reader needs the names of px, py, pz, energy or of pt, eta, phi, energy",
                     hint="pass --px --py --pz --energy or --pt --eta --phi --energy, or a --branches YAML")


def _check_label_options(options: GenericOptions, path: str) -> None:
    if options.label and not options.classes:
        raise InputError(path, f"a label ({options.label!r}) needs class names, index = label value",
                         hint="pass --classes, e.g. --classes QCD,top")


def _to_cartesian(polar: bool, a: np.ndarray, b: np.ndarray, c: np.ndarray):
    """(px, py, pz) [GeV] from (px, py, pz), or from (pT [GeV], η, φ [rad]) when ``polar``."""
    if not polar:
        return a, b, c
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN inputs give NaN, which check_chunk reports
        return a * np.cos(c), a * np.sin(c), a * np.sinh(b)


def _labels(raw: np.ndarray, path: str, start: int, options: GenericOptions) -> np.ndarray:
    """int64 (J,) class indices from an integer (J,) or one-hot (J, C) label array, checked against classes."""
    classes = tuple(options.classes)
    if raw.ndim == 2:
        if raw.shape[1] != len(classes):
            raise InputError(path, f"one-hot label {options.label!r} has {raw.shape[1]} columns but "
                             f"{len(classes)} classes are named ({list(classes)})")
        return labels_from_onehot(path, start, raw != 0, classes)
    if raw.ndim != 1:
        raise InputError(path, f"label {options.label!r} has shape {raw.shape}; expected (jets,) or (jets, classes)")
    labels = raw.astype(np.int64)
    bad = np.flatnonzero((labels != raw) | (labels < -1) | (labels >= len(classes)))
    if len(bad):
        raise InputError(path, f"label {options.label!r} is {raw[bad[0]]}, expected an integer in "
                         f"[0, {len(classes)}) for classes {list(classes)} (or -1 for unlabeled)",
                         entry=start + int(bad[0]))
    return labels


def _padded(blocks: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Counts (J,) and flat float64 (P,) arrays from zero-padded (J, M) arrays (padding: all four zero)."""
    real = real_slots(*blocks)
    return real.sum(axis=1).astype(np.int64), [np.asarray(b[real], dtype=np.float64) for b in blocks]


# ----------------------------------------------------------------------------------------------- ROOT

def _root_tree(file, path: str, options: GenericOptions):
    check_root_complete(file, path)
    trees = sorted(k for k, c in file.classnames(cycle=False).items() if c == "TTree")
    if options.tree:
        if options.tree not in trees:
            raise InputError(path, f"no TTree {options.tree!r}; TTrees here: {trees}")
        return file[options.tree]
    if len(trees) != 1:
        raise InputError(path, f"{len(trees)} TTrees ({trees}); say which one to read", hint="pass --tree NAME")
    return file[trees[0]]


def _check_present(path: str, names, available, what: str) -> None:
    missing = [n for n in names if n not in available]
    if missing:
        raise InputError(path, f"missing {what} {missing}; available: {sorted(available)}")


def _root_info(path: str, options: GenericOptions, wanted: list[str]) -> int:
    with wrap_io_errors(path, "open as ROOT"), uproot.open(path) as file:
        tree = _root_tree(file, path, options)
        _check_present(path, wanted, set(tree.keys()), "branches")
        return int(tree.num_entries)


def _check_same_width(path: str, names, columns) -> None:
    """Raise ``InputError`` unless the fixed-size (``float[M]``) constituent branches share one width M.

    Slot m of every branch is one constituent; with different widths there is no such pairing.
    """
    widths = {name: column.type.content.size for name, column in zip(names, columns, strict=True)}
    if len(set(widths.values())) != 1:
        raise InputError(path, f"fixed-size constituent branches differ in width: "
                         f"{', '.join(f'{n!r} float[{w}]' for n, w in widths.items())}; expected one width "
                         "(slot m of each branch is constituent m)")


def _root_read(path: str, start: int, stop: int, options: GenericOptions, names):
    with wrap_io_errors(path, f"read entries [{start}, {stop})"), uproot.open(path) as file:
        tree = _root_tree(file, path, options)
        wanted = list(names) + ([options.label] if options.label else [])
        _check_present(path, wanted, set(tree.keys()), "branches")
        check_range(path, start, stop, int(tree.num_entries))
        arrays = tree.arrays(wanted, entry_start=start, entry_stop=stop, library="ak")
    columns = [arrays[n] for n in names]
    for name, column in zip(names, columns, strict=True):
        if column.ndim != 2:
            raise InputError(path, f"branch {name!r} has type {column.type}; expected a list of constituents per jet")
    if all(isinstance(c.type.content, ak.types.RegularType) for c in columns):  # float[M]: zero-padded
        _check_same_width(path, names, columns)
        counts, flat = _padded([ak.to_numpy(c) for c in columns])
    else:
        counts = ak.to_numpy(ak.num(columns[0], axis=1)).astype(np.int64)
        for name, column in zip(names[1:], columns[1:], strict=True):
            n = ak.to_numpy(ak.num(column, axis=1))
            if np.any(n != counts):
                bad = int(np.flatnonzero(n != counts)[0])
                raise InputError(path, f"branch {name!r} has {n[bad]} constituents but {names[0]!r} has "
                                 f"{counts[bad]}", entry=start + bad)
        flat = [np.ascontiguousarray(ak.to_numpy(ak.flatten(c, axis=1)), dtype=np.float64) for c in columns]
    raw_labels = None
    if options.label:
        label = arrays[options.label]
        if label.ndim > 2 or (label.ndim == 2 and not isinstance(label.type.content, ak.types.RegularType)):
            raise InputError(path, f"label branch {options.label!r} has type {label.type}; expected one "
                             "integer per jet or a fixed-size one-hot array")
        raw_labels = ak.to_numpy(label)
    return counts, flat, raw_labels


# ----------------------------------------------------------------------------------------------- HDF5

def _dataset(f: h5py.File, path: str, name: str) -> h5py.Dataset:
    node = f.get(name)
    if not isinstance(node, h5py.Dataset):
        datasets: list[str] = []
        f.visititems(lambda n, obj: datasets.append(n) if isinstance(obj, h5py.Dataset) else None)
        raise InputError(path, f"no dataset {name!r}; datasets here: {sorted(datasets)}")
    return node


#: Counts read per step when summing a flat layout's counts dataset (8 MB as int64).
_COUNTS_BLOCK = 1 << 20


def _check_counts_total(path: str, counts: h5py.Dataset, counts_name: str, names, n_constituents: int) -> None:
    """Raise ``InputError`` unless the counts add up to exactly the ``n_constituents`` of the flat datasets.

    More constituents than counts would be silently dropped after the last jet, fewer would shift
    jets; either way the file's jets are not the ones stored. Read in blocks, so memory stays flat.
    """
    total = sum(int(counts[lo:lo + _COUNTS_BLOCK].astype(np.int64).sum())
                for lo in range(0, counts.shape[0], _COUNTS_BLOCK))
    if total != n_constituents:
        raise InputError(path, f"counts {counts_name!r} add up to {total} constituents but the flat datasets "
                         f"{list(names)} hold {n_constituents}",
                         hint="the counts must give every constituent to exactly one jet")


def _h5_layout(f: h5py.File, path: str, options: GenericOptions, names,
               check_total: bool = False) -> tuple[str, int]:
    """``("padded" | "flat", n_jets)`` after checking the datasets' shapes agree.

    With ``check_total`` (once per file, by ``info``), a flat layout's counts must also add up to the
    datasets' length; reading a chunk then needs only the counts before it.
    """
    datasets = [_dataset(f, path, n) for n in names]
    shapes = {n: d.shape for n, d in zip(names, datasets, strict=True)}
    if len(set(shapes.values())) != 1:
        raise InputError(path, f"constituent datasets differ in shape: {shapes}")
    shape = datasets[0].shape
    if len(shape) == 2 and not options.counts:
        layout, n_jets = "padded", shape[0]
    elif len(shape) == 1 and options.counts:
        counts = _dataset(f, path, options.counts)
        if counts.ndim != 1 or counts.dtype.kind not in "iu":
            raise InputError(path, f"counts dataset {options.counts!r} is {counts.dtype}{list(counts.shape)}; "
                             "expected 1-D integers (jets,)")
        layout, n_jets = "flat", counts.shape[0]
        if check_total:
            _check_counts_total(path, counts, options.counts, names, shape[0])
    else:
        given = f"with counts {options.counts!r}" if options.counts else "without counts"
        raise InputError(path, f"constituent datasets of shape {shape} {given} are not supported; "
                         f"supported: {_HDF5_LAYOUTS}")
    if options.label:
        label = _dataset(f, path, options.label)
        if label.ndim not in (1, 2) or label.shape[0] != n_jets:
            raise InputError(path, f"label dataset {options.label!r} has shape {label.shape}; expected "
                             f"({n_jets},) or ({n_jets}, classes)")
    return layout, n_jets


def _h5_info(path: str, options: GenericOptions, names) -> int:
    with wrap_io_errors(path, "open as HDF5"), h5py.File(path, "r") as f:
        return _h5_layout(f, path, options, names, check_total=True)[1]


def _h5_read(path: str, start: int, stop: int, options: GenericOptions, names):
    with wrap_io_errors(path, f"read rows [{start}, {stop})"), h5py.File(path, "r") as f:
        layout, n_jets = _h5_layout(f, path, options, names)
        check_range(path, start, stop, n_jets)
        if layout == "padded":
            counts, flat = _padded([f[n][start:stop] for n in names])
        else:
            # Offsets need the counts of every jet before ``stop``: 8 bytes per jet, not per constituent.
            all_counts = f[options.counts][:stop].astype(np.int64)
            if np.any(all_counts < 0):
                bad = int(np.flatnonzero(all_counts < 0)[0])
                raise InputError(path, f"counts {options.counts!r} is negative", entry=bad)
            lo, hi = int(all_counts[:start].sum()), int(all_counts.sum())
            if hi > f[names[0]].shape[0]:
                raise InputError(path, f"counts {options.counts!r} add up to {hi} constituents by jet {stop}, "
                                 f"but {names[0]!r} holds {f[names[0]].shape[0]}")
            counts = all_counts[start:]
            flat = [np.asarray(f[n][lo:hi], dtype=np.float64) for n in names]
        raw_labels = f[options.label][start:stop] if options.label else None
    return counts, flat, raw_labels


# ----------------------------------------------------------------------------------------------- API

def _container(path: str) -> str:
    kind = container_kind(path)
    if kind == "npz":
        raise InputError(path, "a NumPy .npz archive, which the generic reader does not read",
                         hint="quark-gluon files (arrays X and y) are read with --format qg")
    if kind is None:
        raise InputError(path, "neither a ROOT nor an HDF5 file (judged by its first bytes)",
                         hint="the file may be corrupt or incompletely downloaded")
    return kind


def info(path: str, options: GenericOptions) -> SourceInfo:
    """Number of jets, and the class names from the options (empty when unlabeled).

    Raises:
        InputError: names missing from the options, branches/datasets missing from the file (the
            message lists those that exist), or an unsupported HDF5 layout.
    """
    path = str(path)
    options = options or GenericOptions()
    _, names = _kinematic_names(options, path)
    _check_label_options(options, path)
    if _container(path) == "root":
        n_jets = _root_info(path, options, list(names) + ([options.label] if options.label else []))
    else:
        n_jets = _h5_info(path, options, names)
    return SourceInfo(n_jets=n_jets, classes=tuple(options.classes) if options.label else ())


def read(path: str, start: int, stop: int, options: GenericOptions) -> JetChunk:
    """Read jets ``[start, stop)`` with the names in ``options``.

    Args:
        path: a ROOT or HDF5 file (see the module docstring for the layouts).
        start, stop: jet range; must lie within the file (nothing is clipped).
        options: branch/dataset names; (pT, η, φ) are converted to (px, py, pz).

    Returns:
        A ``JetChunk`` with float64 (px, py, pz, E) in GeV; labels −1 without ``options.label``.
    """
    path = str(path)
    options = options or GenericOptions()
    polar, names = _kinematic_names(options, path)
    _check_label_options(options, path)
    reader = _root_read if _container(path) == "root" else _h5_read
    counts, (a, b, c, energy), raw_labels = reader(path, start, stop, options, names)
    offsets = offsets_from_counts(counts)
    problems = None
    if polar and np.any(a < 0):  # pT cos φ of a negative pT points the other way: never convert it
        problems = flag_jets(None, len(counts), jets_of(offsets, np.flatnonzero(a < 0)),
                             f"a constituent has negative pT ({names[0]!r})")
    px, py, pz = _to_cartesian(polar, a, b, c)
    if raw_labels is None:
        labels = np.full(stop - start, -1, dtype=np.int64)
    else:
        labels = _labels(np.asarray(raw_labels), path, start, options)
    return JetChunk(px=px, py=py, pz=pz, energy=energy, offsets=offsets, labels=labels,
                    path=path, start=start, stop=stop, problems=problems)
