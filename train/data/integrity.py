"""Shard integrity before training: each file's sha256 against its manifest, remembered per file.

A shard whose bytes changed after it was written (a flipped bit on a disk, a copy cut short, an
edit in place) would otherwise train to plausible numbers. ``verify_shards`` hashes every shard
and compares with the sha256 that ``manifest.json`` recorded when the shard was written. Hashing
runs at disk speed (docs/performance.md), so a verified file is remembered in a small JSON cache
keyed by its resolved path, size and modification time (ns) together with the expected digest:
a file is hashed again only when one of those changes. The cache lives in ``$JJEPA_CACHE_DIR``,
else ``$XDG_CACHE_HOME/jjepa``, else ``~/.cache/jjepa`` (never in the shard folder, which may be
read-only or tracked by DVC); a cache that cannot be read or written only costs re-hashing.

So a file is trusted once verified while its size and mtime stay the same: damage that keeps both (bit
rot on the disk after the first run) is found by ``jjepa-preprocess inspect --check``, which hashes every
shard, or by training with ``JJEPA_CACHE_DIR`` set to an empty folder.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from jjepa.common.atomic import sha256_files, write_json_atomic
from jjepa.common.errors import ShardError

log = logging.getLogger(__name__)

CACHE_ENV = "JJEPA_CACHE_DIR"
CACHE_NAME = "verified-shards.json"


def cache_file() -> Path:
    """Where verified shards are remembered (see the module docstring)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jjepa"
    return Path(root) / CACHE_NAME


def _read_cache(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _stamp(path: Path, sha256: str) -> list:
    """What a verified file is remembered by: [size in bytes, mtime in ns, the manifest's sha256]."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, sha256]


def verify_shards(paths: list[Path], expected: list[str], cache: Path | None = None) -> int:
    """Check that each file of ``paths`` has the sha256 of ``expected``; returns how many were hashed.

    Args:
        paths: shard files.
        expected: their sha256 hex digests from the manifest, in the same order.
        cache: the cache file (``cache_file()`` when None).

    Raises:
        ShardError: naming the first file (in ``paths`` order) whose digest differs.
    """
    cache = cache_file() if cache is None else cache
    entries = _read_cache(cache)
    keys = [str(Path(p).resolve()) for p in paths]
    todo = [i for i, (key, path, sha) in enumerate(zip(keys, paths, expected, strict=True))
            if entries.get(key) != _stamp(Path(path), sha)]
    if not todo:
        return 0
    size = sum(Path(paths[i]).stat().st_size for i in todo)
    log.info("verifying the sha256 of %d shard(s) (%.1f GB; remembered afterwards, --no-verify-shards skips it)",
             len(todo), size / 1e9)
    before = [_stamp(Path(paths[i]), expected[i]) for i in todo]
    digests = sha256_files(paths[i] for i in todo)
    bad = [i for i, digest in zip(todo, digests, strict=True) if digest != expected[i]]
    for i, digest, stamp in zip(todo, digests, before, strict=True):
        # Remembered only if the file did not change while it was read (same size and mtime after).
        if digest == expected[i] and _stamp(Path(paths[i]), expected[i]) == stamp:
            entries[keys[i]] = stamp
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache, entries)
    except OSError as err:
        log.warning("cannot remember verified shards in %s (%s); they will be hashed again next time", cache, err)
    if bad:
        i = bad[0]
        more = f" (and {len(bad) - 1} more shard(s))" if len(bad) > 1 else ""
        raise ShardError(f"{paths[i]}: sha256 {digests[todo.index(i)][:16]}… differs from the manifest's "
                         f"{expected[i][:16]}…{more}: the file is damaged or was changed after it was written; "
                         "rebuild it (`jjepa-preprocess cluster ... --resume` redoes damaged shards), or pass "
                         "--no-verify-shards to train on it anyway")
    return len(todo)
