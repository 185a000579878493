"""What every reader returns: a chunk of jets as flat constituent arrays plus offsets.

Readers are plain functions per format (``info`` and ``read``), so a Dask task needs only the
format name, the path and the options (all picklable) to read its own chunk on a worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from jjepa.common.errors import InputError

#: JetClass class names, index = label (order of the ``label_*`` branches).
JETCLASS_CLASSES: tuple[str, ...] = ("QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl")
#: Top Quark Tagging reference dataset class names (``is_signal_new``: 1 = top).
TOPTAGGING_CLASSES: tuple[str, ...] = ("QCD", "top")
#: Quark–gluon (EnergyFlow) class names, index = the file's ``y`` (0 = gluon, 1 = quark).
QG_CLASSES: tuple[str, ...] = ("gluon", "quark")


@dataclass
class JetChunk:
    """Jets ``[start, stop)`` of one input file, constituents flattened.

    Attributes:
        px, py, pz, energy: float64 (P,), constituent four-momenta in GeV, lab frame, jet by jet.
        offsets: int64 (J+1,), jet j owns constituents ``offsets[j]:offsets[j+1]``.
        labels: int64 (J,), class index, −1 when unlabeled.
        path: the input file.
        start, stop: the entry range in that file (``stop - start == J``).
        problems: object (J,) or None: what a reader found wrong with a jet in values the four-momenta
            cannot show (a negative pT or an unknown PDG id before conversion), '' where nothing;
            ``validate.check_chunk`` applies ``--on-bad-jet`` to these as to every other bad jet.
    """

    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    energy: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    path: str
    start: int
    stop: int
    problems: np.ndarray | None = None

    @property
    def n_jets(self) -> int:
        return len(self.offsets) - 1

    def source(self) -> dict:
        """The provenance record stored in the shard and the manifest."""
        return {"file": str(self.path), "start": int(self.start), "stop": int(self.stop)}


@dataclass(frozen=True)
class SourceInfo:
    """What a reader knows about a file before reading jets: jet count and class names."""

    n_jets: int
    classes: tuple[str, ...]


@dataclass(frozen=True)
class GenericOptions:
    """Branch / dataset names for the ``generic`` reader (and the tree name for ROOT).

    Either ``px, py, pz, energy`` or ``pt, eta, phi, energy`` must be given. ``label`` is optional
    (jets are unlabeled, −1, without it); ``classes`` names the label values and is required with
    ``label``. ``counts`` (HDF5 only) names a per-jet constituent count when the constituent
    datasets are flat 1-D arrays rather than zero-padded 2-D ``(jets, constituents)`` ones.
    """

    tree: str | None = None
    px: str | None = None
    py: str | None = None
    pz: str | None = None
    pt: str | None = None
    eta: str | None = None
    phi: str | None = None
    energy: str | None = None
    label: str | None = None
    classes: tuple[str, ...] = field(default_factory=tuple)
    #: HDF5 only: a 1-D dataset of constituents per jet, for flat (not padded) constituent datasets.
    counts: str | None = None


def real_slots(*blocks: np.ndarray) -> np.ndarray:
    """bool (J, M): which slots of zero-padded (J, M) constituent arrays hold a constituent.

    The one padding rule of every reader: a slot is padding iff *all* its stored values are exactly
    zero. Anything else -- including NaN, inf, a negative or zero energy next to a non-zero momentum --
    is a constituent, so that ``validate.check_chunk`` sees it and applies ``--on-bad-jet`` instead of
    the value silently vanishing as padding (which changes the jet). ``NaN != 0`` is true, so a NaN
    anywhere makes the slot real.
    """
    real = blocks[0] != 0
    for block in blocks[1:]:
        real |= block != 0
    return real


def flag_jets(problems: np.ndarray | None, n_jets: int, jets: np.ndarray, reason: str) -> np.ndarray:
    """Record ``reason`` for the jets at ``jets`` (indices into the chunk) that have no reason yet.

    Args:
        problems: object (J,) of reasons ('' where none), or None to start one.
        n_jets: J.
        jets: int (K,) chunk rows of the flagged jets (repeats allowed).
        reason: one sentence, worded like ``validate.REASONS``.

    Returns:
        The (new or updated) object (J,) array.
    """
    if problems is None:
        problems = np.full(n_jets, "", dtype=object)
    jets = np.asarray(jets, dtype=np.int64)
    free = jets[problems[jets] == ""]
    problems[free] = reason
    return problems


def jets_of(offsets: np.ndarray, flat_index: np.ndarray) -> np.ndarray:
    """int64 (K,) the jet (chunk row) owning each flat constituent index in ``flat_index``."""
    return np.searchsorted(offsets, flat_index, side="right") - 1


def offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    """int64 (J+1,) offsets from per-jet constituent counts."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


_ROOT_MAGIC = b"root"
_ZIP_MAGIC = b"PK\x03\x04"  # a zip archive's first local file header; an .npz is a zip of .npy files


def require_file(path) -> None:
    """Raise ``InputError`` unless ``path`` is an existing regular file."""
    p = Path(path)
    if not p.exists():
        raise InputError(str(path), "no such file")
    if not p.is_file():
        raise InputError(str(path), "not a regular file")


def container_kind(path) -> str | None:
    """``"root"``, ``"hdf5"`` or ``"npz"``, judged from the file's first bytes (not its name), else ``None``.

    ROOT files start with ``root``; HDF5 files carry their signature at byte 0 or after a user
    block (``h5py.is_hdf5`` knows where to look); NumPy ``.npz`` files are zip archives, which
    start with ``PK\\x03\\x04`` (whether ``np.savez`` or ``np.savez_compressed`` wrote them).
    """
    import h5py

    require_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head == _ROOT_MAGIC:
            return "root"
        if head == _ZIP_MAGIC:
            return "npz"
        return "hdf5" if h5py.is_hdf5(str(path)) else None
    except OSError as err:
        raise InputError(str(path), f"cannot read: {err}") from err


def check_root_complete(file, path) -> None:
    """Raise ``InputError`` if an open uproot file is shorter than its header says (``fEND``).

    uproot writes a tree's metadata near the start of the file, so a truncated file can open and
    list its entries, and fail only when a basket past the cut is read; this catches it up front.
    """
    size = Path(path).stat().st_size
    if size < file.file.fEND:
        raise InputError(str(path), f"truncated: the file has {size} bytes but its ROOT header says {file.file.fEND}",
                         hint="fetch the file again (compare its checksum with the published one)")


def check_range(path, start: int, stop: int, n_jets: int) -> None:
    """Raise ``InputError`` unless ``0 <= start <= stop <= n_jets`` (readers never clip silently)."""
    if not 0 <= start <= stop <= n_jets:
        raise InputError(str(path), f"entry range [{start}, {stop}) is not within the file's {n_jets} jets")


def labels_from_onehot(path, start: int, onehot: np.ndarray, names) -> np.ndarray:
    """int64 (J,) class indices from a bool (J, C) one-hot table; exactly one true per row.

    Args:
        path: the input file, for the error message.
        start: the file entry of row 0, so the error names the file's entry, not the row.
        onehot: bool (J, C), true where a label is set.
        names: the C label names (branches or classes), for the error message.
    """
    n_set = onehot.sum(axis=1)
    bad = np.flatnonzero(n_set != 1)
    if len(bad):
        first = int(bad[0])
        set_names = [str(names[i]) for i in np.flatnonzero(onehot[first])]
        what = f"{len(set_names)} labels are set ({', '.join(set_names)})" if set_names else "no label is set"
        more = f"; {len(bad) - 1} more such jets in entries [{start}, {start + len(onehot)})" if len(bad) > 1 else ""
        raise InputError(str(path), f"{what}, expected exactly one of {list(names)}{more}", entry=start + first)
    return np.argmax(onehot, axis=1).astype(np.int64)
