"""What every reader returns: a chunk of jets as flat constituent arrays plus offsets.

Readers are plain functions per format (``info`` and ``read``), so a Dask task needs only the
format name, the path and the options (all picklable) to read its own chunk on a worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: JetClass class names, index = label (order of the ``label_*`` branches).
JETCLASS_CLASSES: tuple[str, ...] = ("QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl")
#: Top Quark Tagging reference dataset class names (``is_signal_new``: 1 = top).
TOPTAGGING_CLASSES: tuple[str, ...] = ("QCD", "top")


@dataclass
class JetChunk:
    """Jets ``[start, stop)`` of one input file, constituents flattened.

    Attributes:
        px, py, pz, energy: float64 (P,), constituent four-momenta in GeV, lab frame, jet by jet.
        offsets: int64 (J+1,), jet j owns constituents ``offsets[j]:offsets[j+1]``.
        labels: int64 (J,), class index, −1 when unlabeled.
        path: the input file.
        start, stop: the entry range in that file (``stop - start == J``).
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
    (jets are unlabeled, −1, without it); ``classes`` names the label values.
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


def offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    """int64 (J+1,) offsets from per-jet constituent counts."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets
