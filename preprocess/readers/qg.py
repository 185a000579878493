"""Quark–gluon jets of EnergyFlow (Zenodo 3164691, 3066475): ``QG_jets*.npz`` holding ``X`` and ``y``.

Layout (EnergyFlow's ``energyflow/datasets/qg_jets.py``):

- ``X``: float64 (N, M, 4), per particle (pT [GeV], rapidity y, φ [rad], PDG id), zero-padded to the
  file's largest multiplicity M; a slot is padding iff all four values are zero (``base.real_slots``,
  the rule of every reader), so a NaN or negative pT is a particle that ``--on-bad-jet`` judges.
  φ is not wrapped to a fixed range: the particles of a jet lie within π of the jet's φ.
- ``y``: (N,), 1 = quark, 0 = gluon; the class index here is ``y`` itself (``QG_CLASSES``).

Four-momenta [GeV] use the mass of the particle's |PDG id| from EnergyFlow's table
(``energyflow/utils/particle_utils.py``, ``PARTICLE_MASSES``): mT = sqrt(pT² + m²),
E = mT cosh y, pz = mT sinh y, px = pT cos φ, py = pT sin φ. Particles keep the file's order.

Memory: ``np.load`` reads a whole array, ~445 MB for ``X`` of a 100k-jet file with M = 139.
Instead each ``.npy`` member is opened inside the zip and its header parsed (``info`` reads
nothing else), and ``read`` streams the member up to row ``stop``, discarding the bytes before
row ``start``: memory holds one chunk whether the members are stored (``np.savez``) or deflated
(``np.savez_compressed``, which costs decompressing from row 0 up to ``stop``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from jjepa.common.errors import InputError
from jjepa.preprocess.readers._errors import wrap_io_errors
from jjepa.preprocess.readers.base import (
    QG_CLASSES,
    JetChunk,
    SourceInfo,
    check_range,
    flag_jets,
    offsets_from_counts,
    real_slots,
    require_file,
)

#: The arrays of a quark–gluon file.
ARRAYS: tuple[str, ...] = ("X", "y")
#: Columns of ``X``.
COLUMNS: tuple[str, ...] = ("pt", "rapidity", "phi", "pdgid")
#: Particle masses [GeV] by |PDG id|: EnergyFlow's ``PARTICLE_MASSES`` (from Pythia 8's particle data),
#: without its entry 0 ("void", the id of padding), which no real particle may carry.
PARTICLE_MASSES: dict[int, float] = {
    1: 0.33, 2: 0.33, 3: 0.50, 4: 1.50, 5: 4.80, 6: 171.0,  # quarks d, u, s, c, b, t
    11: 5.11e-4, 12: 0.0, 13: 0.10566, 14: 0.0, 15: 1.77682, 16: 0.0,  # leptons
    21: 0.0, 22: 0.0, 23: 91.1876, 24: 80.385, 25: 125.0,  # g, γ, Z, W, H
    111: 0.13498, 113: 0.77549, 130: 0.49761, 211: 0.13957, 213: 0.77549,  # π0, ρ0, K0L, π+, ρ+
    221: 0.54785,  # η
    223: 0.78265, 310: 0.49761, 321: 0.49368, 331: 0.95778, 333: 1.01946,  # ω, K0S, K+, η', φ
    2112: 0.93957, 2212: 0.93827, 1114: 1.232, 2114: 1.232, 2214: 1.232, 2224: 1.232,  # n, p, Δ
    3122: 1.11568, 3222: 1.18937, 3212: 1.19264, 3112: 1.19745, 3312: 1.32171, 3322: 1.31486,  # Λ, Σ, Ξ
    3334: 1.67245,  # Ω-
}
_KNOWN_IDS = np.array(sorted(PARTICLE_MASSES), dtype=np.float64)
_KNOWN_MASSES = np.array([PARTICLE_MASSES[int(i)] for i in _KNOWN_IDS], dtype=np.float64)
_LAYOUT = "X (jets, particles, 4) = (pT, rapidity, phi, PDG id) and y (jets,) = 1 quark / 0 gluon"
#: How to read files that are not in this layout.
HINT = "the qg format reads EnergyFlow's QG_jets*.npz; for other layouts write HDF5 and use --format generic"


@dataclass(frozen=True)
class _Member:
    """One ``.npy`` member of the zip: dtype, shape, and the offset of its data in the member's bytes."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    data_start: int


def array_names(archive: zipfile.ZipFile) -> list[str]:
    """The names of the arrays in an open ``.npz`` (its ``*.npy`` members, without the suffix)."""
    return sorted(n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy"))


def _member(archive: zipfile.ZipFile, path: str, name: str) -> _Member:
    """Parse the ``.npy`` header of array ``name``; refuse pickled (object) and Fortran-ordered arrays."""
    present = array_names(archive)
    if name not in present:
        raise InputError(path, f"no array {name!r}; the file holds {present}; expected {_LAYOUT}", hint=HINT)
    with archive.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise InputError(path, f"array {name!r} is in .npy format {version}; only 1.0 and 2.0 are read")
        data_start = f.tell()
    if dtype.hasobject or fortran_order:
        what = "holds Python objects (pickles)" if dtype.hasobject else "is stored in Fortran order"
        raise InputError(path, f"array {name!r} {what}; expected a plain C-ordered numeric array", hint=HINT)
    return _Member(name=name, dtype=dtype, shape=tuple(shape), data_start=data_start)


def _layout(archive: zipfile.ZipFile, path: str) -> tuple[_Member, _Member]:
    """``X`` and ``y`` checked against the quark–gluon layout."""
    x, y = (_member(archive, path, name) for name in ARRAYS)
    if len(x.shape) != 3 or x.shape[2] != len(COLUMNS) or x.dtype.kind != "f":
        raise InputError(path, f"X is {x.dtype}{list(x.shape)}; expected float {_LAYOUT}", hint=HINT)
    if len(y.shape) != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "biuf":
        raise InputError(path, f"y is {y.dtype}{list(y.shape)} while X holds {x.shape[0]} jets; "
                         f"expected {_LAYOUT}", hint=HINT)
    return x, y


def _rows(archive: zipfile.ZipFile, path: str, member: _Member, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of an array; a deflated member is decompressed up to row ``stop`` only."""
    row_bytes = member.dtype.itemsize * int(np.prod(member.shape[1:], dtype=np.int64))
    size = (stop - start) * row_bytes
    with archive.open(f"{member.name}.npy") as f:
        f.seek(member.data_start + start * row_bytes)
        data = f.read(size)
    if len(data) != size:
        raise InputError(path, f"array {member.name!r} ends before row {stop}: the file is truncated",
                         hint="fetch the file again (compare its checksum with the published one)")
    return np.frombuffer(data, dtype=member.dtype).reshape((stop - start, *member.shape[1:]))


def _refuse(path: str, start: int, bad: np.ndarray, problem: Callable[[int], str]) -> None:
    """Raise ``InputError`` about the first jet flagged in ``bad`` (bool (J,) over the chunk's rows).

    ``problem(row)`` words what is wrong with that jet; the message adds how many more jets are bad.
    """
    if bad.any():
        first, count, stop = int(np.argmax(bad)), int(bad.sum()), start + len(bad)
        more = "" if count == 1 else f"; {count - 1} more jet(s) like it in entries [{start}, {stop})"
        raise InputError(path, problem(first) + more, entry=start + first)


def _flag(problems, x: np.ndarray, real: np.ndarray, bad: np.ndarray, reason: str,
          detail: Callable[[int, int], str]) -> np.ndarray | None:
    """Flag the jets with a real particle marked in ``bad`` (bool (J, M)) for ``validate.check_chunk``.

    The first such jet gets ``detail(row, slot)`` (the particle and its values), the others ``reason``:
    one formatted string per call, not per jet. Jets flagged before keep their first reason.
    """
    bad = bad & real
    rows = np.flatnonzero(bad.any(axis=1))
    if not len(rows):
        return problems
    first = int(rows[0])
    problems = flag_jets(problems, len(x), rows[1:], reason)
    return flag_jets(problems, len(x), rows[:1], detail(first, int(np.argmax(bad[first]))))


def masses(pdgid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Particle masses by |PDG id| from ``PARTICLE_MASSES``.

    Args:
        pdgid: (P,) PDG ids as stored in ``X`` (floats); a non-integer id counts as unknown.

    Returns:
        ``(mass, known)``: float64 (P,) masses [GeV] (meaningless where unknown) and bool (P,)
        whether the id is in the table.
    """
    abs_id = np.abs(pdgid)
    index = np.minimum(np.searchsorted(_KNOWN_IDS, abs_id), len(_KNOWN_IDS) - 1)
    return _KNOWN_MASSES[index], _KNOWN_IDS[index] == abs_id


def info(path: str, options=None) -> SourceInfo:
    """Number of jets of a quark–gluon file (read from the ``.npy`` headers only); classes gluon, quark."""
    path = str(path)
    require_file(path)
    with wrap_io_errors(path, "open as npz"), zipfile.ZipFile(path) as archive:
        x, _ = _layout(archive, path)
    return SourceInfo(n_jets=x.shape[0], classes=QG_CLASSES)


def read(path: str, start: int, stop: int, options=None) -> JetChunk:
    """Read jets ``[start, stop)`` of a quark–gluon file.

    Args:
        path: the ``.npz`` file.
        start, stop: jet range; must lie within the file (nothing is clipped).
        options: ignored (the layout is fixed).

    Returns:
        A ``JetChunk`` with float64 (px, py, pz, E) [GeV] of the real (not all-zero) particles in file
        order, and labels ``y`` (0 = gluon, 1 = quark). Memory: the rows read (M × 32 bytes per
        jet for float64 ``X``) plus the result.

    Jets with a non-finite value, a negative pT or an unknown PDG id are flagged in
    ``JetChunk.problems`` (their four-momenta are meaningless), for ``validate.check_chunk`` to stop
    on or skip as ``--on-bad-jet`` says.

    Raises:
        InputError: not a zip, ``X`` or ``y`` missing or of the wrong shape, an entry range outside
            the file, or a label other than 0/1 (naming the entry).
    """
    path = str(path)
    require_file(path)
    with wrap_io_errors(path, f"read jets [{start}, {stop})"), zipfile.ZipFile(path) as archive:
        x_member, y_member = _layout(archive, path)
        check_range(path, start, stop, x_member.shape[0])
        x = _rows(archive, path, x_member, start, stop)
        y = _rows(archive, path, y_member, start, stop)
    _refuse(path, start, ~np.isin(y, (0, 1)),
            lambda row: f"label y is {y[row]}, expected 0 (gluon) or 1 (quark)")
    real = real_slots(*(x[:, :, i] for i in range(4)))
    offsets = offsets_from_counts(real.sum(axis=1))
    particles = x[real]  # (P, 4): jet by jet, each jet's particles in file order
    mass, known = masses(particles[:, 3])
    problems = _flag(None, x, real, ~np.isfinite(x).all(axis=2), "a particle has a non-finite value",
                     lambda row, slot: f"particle {slot} has a non-finite value (pT, y, phi, PDG id) = "
                                       f"{x[row, slot].tolist()}")
    problems = _flag(problems, x, real, x[:, :, 0] < 0, "a particle has negative pT",
                     lambda row, slot: f"particle {slot} has negative pT {x[row, slot, 0]:g} GeV")
    unknown = np.zeros(real.shape, dtype=bool)
    unknown[real] = ~known
    problems = _flag(problems, x, real, unknown, "a particle has a PDG id with no known mass",
                     lambda row, slot: f"particle {slot} has PDG id {x[row, slot, 3]:g}, which has no known "
                                       f"mass (known |ids|: {sorted(PARTICLE_MASSES)})")
    pt, rapidity, phi = (np.asarray(particles[:, i], dtype=np.float64) for i in range(3))
    with np.errstate(invalid="ignore", over="ignore"):  # flagged jets' values may be inf/NaN: they are bad anyway
        mt = np.hypot(pt, mass)  # transverse mass [GeV]
        px, py, pz, energy = pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(rapidity), mt * np.cosh(rapidity)
    return JetChunk(px=px, py=py, pz=pz, energy=energy, offsets=offsets, labels=y.astype(np.int64),
                    path=path, start=start, stop=stop, problems=problems)
