"""Input fingerprints for ``cluster --resume``: which file a shard folder was made from, by content.

A fingerprint is ``{"path", "size", "mtime_ns", "sha256"}`` of one input: the resolved path, the
size in bytes, the modification time in ns, and the sha256 of the whole file. The content hash is
what identifies the input -- a file given by another path (a symlink, a relative path, a copy on
scratch) is the same input when its bytes are; a file whose content was replaced is another one,
whatever its name. The path, size and mtime only spare the hash: on ``--resume`` an input whose
resolved path, size and mtime all equal the record is taken to be unchanged without reading it
(the rule of make, rsync and DVC), so resuming costs a ``stat`` per input; anything else is
hashed again and compared. The hash costs one read of each input on the first run, done by a few
threads in parallel (``hashlib`` releases the GIL): a few % of the clustering time
(docs/performance.md).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from jjepa.common.atomic import sha256_files
from jjepa.common.errors import InputError, JJepaError

log = logging.getLogger(__name__)

#: The keys of a fingerprint record.
KEYS: tuple[str, ...] = ("path", "size", "mtime_ns", "sha256")


def _stat(path: str) -> tuple[str, int, int]:
    """(resolved path, size [bytes], mtime [ns]) of an input, or ``InputError`` if it cannot be read."""
    try:
        resolved = Path(path).resolve(strict=True)
        st = resolved.stat()
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None
    return str(resolved), int(st.st_size), int(st.st_mtime_ns)


def _unchanged(record: dict | None, resolved: str, size: int, mtime_ns: int) -> bool:
    return (isinstance(record, dict) and set(KEYS) <= set(record) and record["path"] == resolved
            and record["size"] == size and record["mtime_ns"] == mtime_ns)


def fingerprints(paths, known: list[dict] | None = None) -> list[dict]:
    """The fingerprint of every input, in order.

    Args:
        paths: the input files, as given.
        known: fingerprints recorded earlier for the same positions (a resumed run's manifest);
            an input whose resolved path, size and mtime equal its record keeps the recorded
            sha256 without being read again.

    Returns:
        One ``{"path", "size", "mtime_ns", "sha256"}`` dict per input.
    """
    known = list(known or [])
    stats = [_stat(str(p)) for p in paths]
    records: list[dict | None] = []
    to_hash: list[int] = []
    for i, (resolved, size, mtime_ns) in enumerate(stats):
        record = known[i] if i < len(known) else None
        if _unchanged(record, resolved, size, mtime_ns):
            records.append(dict(record))
        else:
            records.append(None)
            to_hash.append(i)
    if to_hash:
        started = time.perf_counter()
        digests = sha256_files(stats[i][0] for i in to_hash)
        n_bytes = sum(stats[i][1] for i in to_hash)
        log.info("fingerprinted %d input file(s), %.1f MB, in %.1f s", len(to_hash), n_bytes / 1e6,
                 time.perf_counter() - started)
        for i, digest in zip(to_hash, digests, strict=True):
            resolved, size, mtime_ns = stats[i]
            records[i] = {"path": resolved, "size": size, "mtime_ns": mtime_ns, "sha256": digest}
    return records  # type: ignore[return-value]


def check_same_inputs(out, old: list[dict], new: list[dict], given) -> None:
    """Raise ``JJepaError`` naming the input that differs from the one the shards in ``out`` were made from.

    Args:
        out: the shard folder (for the message).
        old: the fingerprints recorded in its manifest.
        new: the fingerprints of the inputs given now (``fingerprints(given, old)``).
        given: the input paths as given now.
    """
    fix = "use another --out, or --force to delete these shards and start over"
    if len(old) != len(new):
        raise JJepaError(f"{out}: its shards were made from {len(old)} input file(s), {len(new)} given now; "
                         f"--resume needs the same inputs in the same order ({fix})")
    for i, (was, now, path) in enumerate(zip(old, new, given, strict=True)):
        if was.get("sha256") == now["sha256"] and was.get("size") == now["size"]:
            if was.get("path") != now["path"]:
                log.info("%s: same content as %s, which made these shards; accepted", path, was.get("path"))
            continue
        raise JJepaError(f"{out}: input {i + 1}, {path}, is not the file its shards were made from "
                         f"({was.get('path')}: {was.get('size')} bytes, sha256 {str(was.get('sha256'))[:16]}…; "
                         f"now {now['size']} bytes, sha256 {now['sha256'][:16]}…): it changed since, and "
                         f"resuming would mix old and new jets ({fix})")


def check_distinct(records: list[dict], given) -> None:
    """Raise ``InputError`` when two inputs are one file, or two files with the same content.

    The same jets given twice (a repeated path, a symlink, a byte-identical copy) would be
    clustered into shards twice, doubling them in training and leaking across splits.

    Args:
        records: the inputs' fingerprints (``fingerprints(given)``), whose resolved ``path`` and
            ``sha256`` tell a repeat.
        given: the input paths as given, for the message.
    """
    for key, what in (("path", "the same file as"), ("sha256", "a byte-identical copy of")):
        first: dict[str, int] = {}
        for i, record in enumerate(records):
            j = first.setdefault(record[key], i)
            if j != i:
                raise InputError(given[i], f"input {i + 1} is {what} input {j + 1}, {given[j]}: its jets "
                                 "would be clustered twice", hint="give each input file once")
