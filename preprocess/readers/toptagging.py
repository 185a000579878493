"""Top Quark Tagging reference dataset: the pandas *table* HDF5 layout, read directly (never via pandas).

The files are pandas ``format="table"`` under key ``table``, Blosc-compressed, with bytes-valued
pandas attributes that pandas 3 refuses ("a bytes-like object is required"). So the compound
dataset ``/table/table`` is read in row ranges:

- ``values_block_0`` float32 (J, 804): ``E_i, PX_i, PY_i, PZ_i`` for i = 0..199 [GeV], then
  ``truthE, truthPX, truthPY, truthPZ`` (not read);
- ``values_block_1`` int64 (J, 2): ``ttv, is_signal_new`` (1 = top, 0 = QCD).

Constituents are pT-ordered and zero-padded at the end. A slot is padding iff all four values are
zero (``base.real_slots``, the rule of every reader): a NaN or a negative energy is a constituent,
which ``--on-bad-jet`` then judges, never padding that silently changes the jet.

pandas records each block's column names as pickled attributes on the table node
(``values_block_0_kind``, protocol 0). PyTables unpickles *every* such attribute as soon as it
opens the node, so reading with PyTables runs whatever code a file's pickles hold. We read with
h5py (which returns the raw bytes) plus ``hdf5plugin`` (which gives h5py the Blosc filter), and
unpickle the column names with a loader that accepts lists and strings only. Without
``hdf5plugin`` the data are read with PyTables, with a warning.
"""

from __future__ import annotations

import io
import logging
import pickle

import h5py
import numpy as np
from jjepa.common.errors import InputError
from jjepa.preprocess.readers._errors import wrap_io_errors
from jjepa.preprocess.readers.base import (
    TOPTAGGING_CLASSES,
    JetChunk,
    SourceInfo,
    check_range,
    offsets_from_counts,
    real_slots,
    require_file,
)

try:
    import hdf5plugin  # noqa: F401 - registers the Blosc filter with h5py

    HAVE_HDF5PLUGIN = True
except ImportError:  # pragma: no cover - hdf5plugin is installed with jjepa
    HAVE_HDF5PLUGIN = False

log = logging.getLogger(__name__)

TABLE = "/table/table"
N_CONSTITUENTS = 200
#: The columns of ``values_block_0``, in order.
EXPECTED_COLUMNS: list[str] = [f"{c}_{i}" for i in range(N_CONSTITUENTS) for c in ("E", "PX", "PY", "PZ")] + [
    "truthE", "truthPX", "truthPY", "truthPZ"]
#: The columns of ``values_block_1``, in order.
INT_COLUMNS: list[str] = ["ttv", "is_signal_new"]
LABEL_COLUMN = "is_signal_new"
_LAYOUT = (f"values_block_0 float32[{len(EXPECTED_COLUMNS)}] = E_i, PX_i, PY_i, PZ_i (i = 0..199), "
           "truthE..truthPZ and values_block_1 int64[2] = ttv, is_signal_new")


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles lists and strings only: a data file must not run code when we read its column names."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _column_names(path: str, table: h5py.Dataset) -> dict[str, list[str]]:
    """The pandas column names per block (``values_block_0_kind``…); blocks without them are left out."""
    names: dict[str, list[str]] = {}
    for block in ("values_block_0", "values_block_1"):
        raw = table.attrs.get(f"{block}_kind")
        if raw is None:
            continue
        try:
            value = _PlainDataUnpickler(io.BytesIO(bytes(raw)), encoding="latin1").load()
            names[block] = [v.decode() if isinstance(v, bytes) else str(v) for v in value]
        except Exception as err:  # noqa: BLE001 - unreadable names: fall back to the shape check
            log.warning("%s: cannot read the column names of %s (%s); checking shapes only", path, block, err)
    return names


def _first_difference(found: list[str], expected: list[str]) -> str:
    for i, (a, b) in enumerate(zip(found, expected, strict=False)):
        if a != b:
            return f"column {i} is {a!r}, expected {b!r}"
    return f"it has {len(found)} columns, expected {len(expected)}"


def _table(f: h5py.File, path: str) -> tuple[h5py.Dataset, int]:
    """``/table/table`` checked against the Top Tagging layout, and the column of ``is_signal_new``."""
    table = f.get(TABLE)
    if not isinstance(table, h5py.Dataset) or table.dtype.names is None:
        datasets: list[str] = []  # leaving out PyTables' column indexes (``_i_table/...``)
        f.visititems(lambda n, obj: datasets.append("/" + n)
                     if isinstance(obj, h5py.Dataset) and "/_i_" not in "/" + n else None)
        raise InputError(path, f"no compound dataset {TABLE} (the pandas table layout under key 'table'); "
                         f"it holds {sorted(datasets)[:20]}", hint="use --format generic for other HDF5 layouts")
    fields = table.dtype.fields
    if "values_block_0" not in fields or "values_block_1" not in fields:
        raise InputError(path, f"{TABLE} has fields {list(fields)}; expected {_LAYOUT}",
                         hint="use --format generic for other HDF5 layouts")
    dtype0, dtype1 = fields["values_block_0"][0], fields["values_block_1"][0]
    names = _column_names(path, table)
    if "values_block_0" in names and names["values_block_0"] != EXPECTED_COLUMNS:
        found = names["values_block_0"]
        raise InputError(path, f"values_block_0 holds {len(found)} columns ({', '.join(found[:6])}, …) and "
                         f"{_first_difference(found, EXPECTED_COLUMNS)}; expected {_LAYOUT}")
    if dtype0.shape != (len(EXPECTED_COLUMNS),) or dtype0.base.kind != "f":
        raise InputError(path, f"values_block_0 is {dtype0.base}{list(dtype0.shape)}; expected {_LAYOUT}")
    label_column = INT_COLUMNS.index(LABEL_COLUMN)
    if "values_block_1" in names:
        found = names["values_block_1"]
        if LABEL_COLUMN not in found or len(found) != dtype1.shape[0]:
            raise InputError(path, f"values_block_1 holds {found}; expected {_LAYOUT}")
        label_column = found.index(LABEL_COLUMN)
    elif dtype1.shape != (len(INT_COLUMNS),):
        raise InputError(path, f"values_block_1 is {dtype1.base}{list(dtype1.shape)}; expected {_LAYOUT}")
    if dtype1.base.kind not in "iu":
        raise InputError(path, f"values_block_1 is {dtype1.base}{list(dtype1.shape)}; expected {_LAYOUT}")
    return table, label_column


def _read_rows_pytables(path: str, start: int, stop: int) -> np.ndarray:
    """Rows with PyTables, which decodes Blosc by itself but unpickles the node's attributes."""
    import tables

    log.warning("%s: hdf5plugin is not installed, reading with PyTables, which unpickles the file's "
                "attributes (pip install hdf5plugin to avoid it)", path)
    with tables.open_file(path, mode="r") as h5:
        return h5.get_node(TABLE).read(start, stop)


def info(path: str, options=None) -> SourceInfo:
    """Number of jets of a Top Tagging file; classes QCD and top (``options`` is ignored)."""
    path = str(path)
    require_file(path)
    with wrap_io_errors(path, "open as HDF5 (pandas table layout)"), h5py.File(path, "r") as f:
        table, _ = _table(f, path)
        n_jets = int(table.shape[0])
    return SourceInfo(n_jets=n_jets, classes=TOPTAGGING_CLASSES)


def read(path: str, start: int, stop: int, options=None) -> JetChunk:
    """Read jets ``[start, stop)`` of a Top Tagging file; all-zero padding is dropped without a per-jet loop.

    Args:
        path: the ``.h5`` file.
        start, stop: row range; must lie within the file (nothing is clipped).
        options: ignored (the layout is fixed).

    Returns:
        A ``JetChunk`` with float64 constituents in GeV, in the file's (pT) order, and labels
        ``is_signal_new`` (0 = QCD, 1 = top). Memory: the rows read, 3.2 kB per jet, plus the result.

    Raises:
        InputError: unreadable file, a layout other than the Top Tagging one, an entry range
            outside the file, or a label other than 0/1 (naming the entry).
    """
    path = str(path)
    require_file(path)
    with wrap_io_errors(path, f"read rows [{start}, {stop})"):
        with h5py.File(path, "r") as f:
            table, label_column = _table(f, path)
            check_range(path, start, stop, int(table.shape[0]))
            rows = table[start:stop] if HAVE_HDF5PLUGIN else None
        if rows is None:
            rows = _read_rows_pytables(path, start, stop)
    p4 = rows["values_block_0"][:, : 4 * N_CONSTITUENTS].reshape(-1, N_CONSTITUENTS, 4)  # E, PX, PY, PZ
    real = real_slots(*(p4[:, :, i] for i in range(4)))
    constituents = p4[real]  # (P, 4), jet by jet, slots in file order
    labels = rows["values_block_1"][:, label_column].astype(np.int64)
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        raise InputError(path, f"{LABEL_COLUMN} is {labels[bad[0]]}, expected 0 (QCD) or 1 (top)",
                         entry=start + int(bad[0]))
    px, py, pz, energy = (np.ascontiguousarray(constituents[:, i], dtype=np.float64) for i in (1, 2, 3, 0))
    return JetChunk(px=px, py=py, pz=pz, energy=energy, offsets=offsets_from_counts(real.sum(axis=1)),
                    labels=labels, path=path, start=start, stop=stop)
