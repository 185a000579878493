"""Input readers, chosen by format name; each reads a bounded entry range into a ``JetChunk``.

A format is a module with ``info(path, options) -> SourceInfo`` and
``read(path, start, stop, options) -> JetChunk``. Everything a call needs (format name, path,
range, options) is picklable, so a Dask task reads its own chunk on its worker. Memory stays
bounded: every read is one entry range. All input problems raise ``InputError`` naming the file
(and the entry, when it is about one jet).
"""

from __future__ import annotations

import zipfile

from jjepa.common.errors import InputError
from jjepa.preprocess.readers import generic, jetclass, qg, toptagging
from jjepa.preprocess.readers._errors import wrap_io_errors
from jjepa.preprocess.readers.base import GenericOptions, JetChunk, SourceInfo, container_kind

FORMATS: tuple[str, ...] = ("auto", "jetclass", "toptagging", "qg", "generic")
_MODULES = {"jetclass": jetclass, "toptagging": toptagging, "qg": qg, "generic": generic}


def detect_format(path) -> str:
    """Tell the format of ``path`` from its content.

    ``jetclass`` for a ROOT file whose TTree ``tree`` has ``part_px``; ``toptagging`` for an
    HDF5 file with the compound dataset ``/table/table``; ``qg`` for a NumPy ``.npz`` holding
    arrays ``X`` and ``y``; ``generic`` for any other ROOT or HDF5 file (which then needs branch
    names). ROOT, HDF5 and npz (zip) are told by the first bytes, so a file's extension does not
    matter.

    Raises:
        InputError: the file is missing, unreadable, neither ROOT, HDF5 nor npz, or an npz
            without ``X`` and ``y``.
    """
    import h5py
    import uproot

    path = str(path)
    kind = container_kind(path)
    if kind == "root":
        with wrap_io_errors(path, "open as ROOT"), uproot.open(path) as file:
            is_tree = file.classnames(cycle=False).get(jetclass.TREE) == "TTree"
            return "jetclass" if is_tree and "part_px" in file[jetclass.TREE].keys() else "generic"
    if kind == "hdf5":
        with wrap_io_errors(path, "open as HDF5"), h5py.File(path, "r") as f:
            node = f.get(toptagging.TABLE)
            is_table = isinstance(node, h5py.Dataset) and node.dtype.names is not None
            return "toptagging" if is_table else "generic"
    if kind == "npz":
        with wrap_io_errors(path, "open as npz"), zipfile.ZipFile(path) as archive:
            arrays = qg.array_names(archive)
        if all(name in arrays for name in qg.ARRAYS):
            return "qg"
        raise InputError(path, f"an npz file with arrays {arrays}; the only npz layout read is the "
                         f"quark-gluon one, with arrays {list(qg.ARRAYS)}", hint=qg.HINT)
    raise InputError(path, "neither a ROOT nor an HDF5 file nor an npz archive (judged by its first bytes)",
                     hint="the file may be corrupt or incompletely downloaded")


def _module(fmt: str, path: str):
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in _MODULES:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    return _MODULES[fmt]


def source_info(fmt: str, path, options: GenericOptions | None = None) -> SourceInfo:
    """Jet count and class names of ``path`` read as ``fmt`` (``auto`` detects it).

    Args:
        fmt: one of ``FORMATS``.
        path: the input file.
        options: branch names, needed by ``generic`` only.
    """
    path = str(path)
    return _module(fmt, path).info(path, options or GenericOptions())


def read_chunk(fmt: str, path, start: int, stop: int, options: GenericOptions | None = None) -> JetChunk:
    """Jets ``[start, stop)`` of ``path`` read as ``fmt`` (``auto`` detects it).

    Args:
        fmt: one of ``FORMATS``.
        path: the input file.
        start, stop: entry (jet) range, ``0 <= start <= stop <= n_jets``; never clipped.
        options: branch names, needed by ``generic`` only.
    """
    path = str(path)
    return _module(fmt, path).read(path, int(start), int(stop), options or GenericOptions())


__all__ = ["FORMATS", "GenericOptions", "JetChunk", "SourceInfo", "detect_format", "read_chunk", "source_info"]
