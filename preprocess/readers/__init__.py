"""Input readers, chosen by format name; each reads a bounded entry range into a ``JetChunk``."""

from __future__ import annotations

from pathlib import Path

from jjepa.common.errors import InputError
from jjepa.preprocess.readers import generic, jetclass, toptagging
from jjepa.preprocess.readers._errors import wrap_io_errors
from jjepa.preprocess.readers.base import GenericOptions, JetChunk, SourceInfo

FORMATS = ("auto", "jetclass", "toptagging", "generic")
_MODULES = {"jetclass": jetclass, "toptagging": toptagging, "generic": generic}
_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def detect_format(path: str) -> str:
    """``jetclass`` for ROOT files with ``tree/part_px``, ``toptagging`` for HDF5 with ``/table/table``,
    else ``generic`` (which needs branch names)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".root":
        import uproot

        with wrap_io_errors(path, "open as ROOT"):
            file = uproot.open(path)
            is_jetclass = jetclass.TREE in file and "part_px" in file[jetclass.TREE]
        return "jetclass" if is_jetclass else "generic"
    if suffix in _HDF5_SUFFIXES:
        import h5py

        with wrap_io_errors(path, "open as HDF5"), h5py.File(path, "r") as f:
            return "toptagging" if "table/table" in f else "generic"
    raise InputError(path, f"cannot tell the format from the extension {suffix!r}",
                     hint="pass --format jetclass, toptagging or generic")


def source_info(fmt: str, path: str, options: GenericOptions | None) -> SourceInfo:
    """Jet count and class names of ``path`` read as ``fmt``."""
    return _MODULES[fmt].info(str(path), options or GenericOptions())


def read_chunk(fmt: str, path: str, start: int, stop: int, options: GenericOptions | None) -> JetChunk:
    """Jets ``[start, stop)`` of ``path`` read as ``fmt``."""
    return _MODULES[fmt].read(str(path), start, stop, options or GenericOptions())


__all__ = ["FORMATS", "GenericOptions", "JetChunk", "SourceInfo", "detect_format", "read_chunk", "source_info"]
