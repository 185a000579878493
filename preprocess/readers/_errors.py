"""Turning third-party I/O failures into ``InputError`` that names the file."""

from __future__ import annotations

import contextlib

from jjepa.common.errors import InputError


@contextlib.contextmanager
def wrap_io_errors(path: str, what: str):
    """Re-raise any non-jjepa exception from uproot/h5py/PyTables as ``InputError`` about ``path``."""
    try:
        yield
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any library failure becomes one clear message
        raise InputError(path, f"cannot {what}: {type(err).__name__}: {err}",
                         hint="the file may be truncated or corrupt; check it or fetch it again") from err
