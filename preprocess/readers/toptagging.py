"""Top Quark Tagging reference dataset: pandas *table* HDF5 read directly with PyTables.

The real files are pandas ``format="table"`` with Blosc compression and bytes-valued pandas
attributes that pandas 3 refuses, so the compound dataset ``/table/table`` is read in row
ranges: ``values_block_0`` float32[804] = ``E_i, PX_i, PY_i, PZ_i`` for i = 0..199 then
``truthE, truthPX, truthPY, truthPZ``; ``values_block_1`` int64[2] = ``ttv, is_signal_new``.
Constituents are pT-ordered and zero-padded at the end (real iff E > 0).
"""

from __future__ import annotations

import numpy as np
import tables
from jjepa.common.errors import InputError
from jjepa.preprocess.readers._errors import wrap_io_errors
from jjepa.preprocess.readers.base import TOPTAGGING_CLASSES, JetChunk, SourceInfo, offsets_from_counts

N_CONSTITUENTS = 200
N_FLOAT_COLUMNS = 4 * N_CONSTITUENTS + 4
EXPECTED_COLUMNS = [f"{c}_{i}" for i in range(N_CONSTITUENTS) for c in ("E", "PX", "PY", "PZ")] + [
    "truthE", "truthPX", "truthPY", "truthPZ"]
LABEL_COLUMN = "is_signal_new"


def _names(value) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in value]


def _open_table(path: str):
    with wrap_io_errors(path, "open as HDF5"):
        h5 = tables.open_file(path, mode="r")
    try:
        table = h5.get_node("/table/table")
    except tables.NoSuchNodeError:
        nodes = sorted(n._v_pathname for n in h5.walk_nodes("/", classname="Leaf"))
        h5.close()
        raise InputError(path, f"no /table/table dataset (the pandas table layout); it holds {nodes[:10]}",
                         hint="use --format generic for other HDF5 layouts") from None
    fields = table.dtype.fields or {}
    shape0 = fields.get("values_block_0", (np.dtype("V1"),))[0].shape
    shape1 = fields.get("values_block_1", (np.dtype("V1"),))[0].shape
    problem = None
    if shape0 != (N_FLOAT_COLUMNS,) or shape1 != (2,):
        problem = (f"/table/table has values_block_0 {shape0} and values_block_1 {shape1}; "
                   f"expected ({N_FLOAT_COLUMNS},) and (2,)")
    elif "values_block_0_kind" in table.attrs._v_attrnames:
        if _names(table.attrs.values_block_0_kind) != EXPECTED_COLUMNS:
            problem = "values_block_0 columns are not E_i, PX_i, PY_i, PZ_i (i = 0..199), truthE..truthPZ"
        elif _names(table.attrs.values_block_1_kind)[1] != LABEL_COLUMN:
            problem = f"values_block_1 columns are {_names(table.attrs.values_block_1_kind)}, expected ttv, {LABEL_COLUMN}"
    if problem:
        h5.close()
        raise InputError(path, problem)
    return h5, table


def info(path: str, options=None) -> SourceInfo:
    """Number of jets of a Top Tagging file; classes QCD and top."""
    h5, table = _open_table(path)
    with h5:
        return SourceInfo(n_jets=int(table.nrows), classes=TOPTAGGING_CLASSES)


def read(path: str, start: int, stop: int, options=None) -> JetChunk:
    """Read jets ``[start, stop)``; padding (E = 0) dropped without a per-jet loop."""
    h5, table = _open_table(path)
    with h5, wrap_io_errors(path, f"read rows {start}-{stop - 1}"):
        rows = table.read(start, stop)
    values = rows["values_block_0"][:, : 4 * N_CONSTITUENTS].reshape(-1, N_CONSTITUENTS, 4)
    real = values[:, :, 0] > 0
    constituents = values[real].astype(np.float64)  # (P, 4) = E, PX, PY, PZ, jet by jet
    labels = rows["values_block_1"][:, 1].astype(np.int64)
    if np.any((labels != 0) & (labels != 1)):
        bad = int(np.flatnonzero((labels != 0) & (labels != 1))[0])
        raise InputError(path, f"{LABEL_COLUMN} is {labels[bad]}, expected 0 or 1", entry=start + bad)
    return JetChunk(px=constituents[:, 1], py=constituents[:, 2], pz=constituents[:, 3], energy=constituents[:, 0],
                    offsets=offsets_from_counts(real.sum(axis=1)), labels=labels, path=str(path), start=start,
                    stop=stop)
