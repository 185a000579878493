"""A full disk while writing shards: one line naming the path, never a traceback or a half-written file.

HDF5 reports a failed write as ``OSError`` with errno 28 and a multi-line message (or, when it
fails while closing the file, as ``RuntimeError`` with the same words); a quota gives EDQUOT. Both become ``DiskFullError`` ("no space left on device: <path> ..."), which the CLI prints
as one line with exit status 1. Shards are written under a temporary name (``common/atomic.py``),
so nothing half-written is left under a shard's name, and the manifest lists the complete shards:
``cluster --resume`` finishes once there is space.
"""

from __future__ import annotations

import contextlib
import errno

from jjepa.common.errors import JJepaError

_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_WORDS = ("No space left on device", "Disk quota exceeded", f"errno = {errno.ENOSPC},")


class DiskFullError(JJepaError):
    """No space left where a shard or the manifest is written; ``path`` is that file."""

    def __init__(self, path: str):
        self.path = str(path)
        super().__init__(f"no space left on device: {self.path} (complete shards are kept and listed in "
                         "manifest.json; free some space, then rerun the same command with --resume)")

    def __reduce__(self):  # keeps ``path`` when the error crosses a Dask/multiprocessing boundary
        return (type(self), (self.path,))


def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err``, or an error it was raised from or during, says the disk (or quota) is full.

    By errno for an ``OSError``; by HDF5's words for any type, since h5py reports a write that fails
    while it closes a file as ``RuntimeError("Can't decrement id ref count (... errno = 28 ...)")``.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if (isinstance(err, OSError) and err.errno in _NO_SPACE_ERRNOS) or any(w in str(err) for w in _NO_SPACE_WORDS):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def disk_full_as_error(path):
    """Turn a "no space left" error raised inside the block into ``DiskFullError(path)``."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - h5py may raise another type while closing after ENOSPC
        if is_disk_full(err):
            raise DiskFullError(str(path)) from None
        raise
