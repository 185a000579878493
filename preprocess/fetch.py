"""``jjepa-preprocess fetch``: download a public jet dataset, resumably, verify its md5s, unpack its tars.

Per file (``fetch_file``): bytes go to ``<dest>/<name>.part``; a rerun after an interruption asks
the server for the rest (``Range: bytes=<size>-``) and appends when it answers 206 Partial
Content, or starts over when it answers 200 (a server that ignores ranges). Only after the md5
matches is the ``.part`` renamed to its final name, so a final name always holds a verified file;
a ``.part`` failing its md5 is deleted. A final file that is already there is checked and skipped;
one failing its md5 is the user's to delete (or ``--force`` replaces it), never deleted silently.

JetClass tars are unpacked after verification (members with absolute paths, ``..`` or links are
refused); ``<dest>/.<tar name>.extracted`` records that, so a rerun neither downloads nor unpacks
them again. HTTP uses only ``urllib``; no dependency beyond tqdm for the progress bar.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shlex
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from jjepa.common.atomic import file_digest, write_json_atomic
from jjepa.common.errors import JJepaError
from jjepa.preprocess.datasets import PublicDataset, RemoteFile
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

#: Bytes per read from the network and per hashing step (1 MiB).
BLOCK = 1 << 20
#: Seconds a connect or a single read may stall before the download counts as interrupted.
TIMEOUT_S = 60.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


@dataclass(frozen=True)
class FetchOptions:
    """How to fetch (the CLI flags).

    Args:
        dest: folder the files (and unpacked tars) go to.
        verify: check md5s of downloaded and already-present files.
        force: replace an already-present file that fails its md5 instead of stopping.
        keep_archives: keep the tars after unpacking them (False deletes each once unpacked).
        progress: show a byte progress bar per download.
        timeout_s: seconds a connect or a read may stall.
    """

    dest: Path
    verify: bool = True
    force: bool = False
    keep_archives: bool = True
    progress: bool = True
    timeout_s: float = TIMEOUT_S


@dataclass
class FileReport:
    """What ``fetch`` did with one file.

    Attributes:
        name: the remote file.
        status: ``downloaded``, ``already present``, or ``already extracted`` (download skipped).
        size: its size in bytes (before any deletion of the archive); None when it was not looked at.
        check: ``md5 ok``, or ``not verified`` (``--no-verify``).
        notes: what else happened: resumed at a byte offset, unpacked into a folder, archive deleted.
    """

    name: str
    status: str
    size: int | None
    check: str
    notes: list[str] = field(default_factory=list)


@dataclass
class FetchReport:
    """The outcome of one ``fetch``: per file, and the commands that cluster the result."""

    dataset: str
    dest: str
    files: list[FileReport]
    next_commands: list[str]

    def lines(self) -> list[str]:
        """The report as text, one file a line, then the cluster commands."""
        width = max((len(f.name) for f in self.files), default=0)
        out = [f"{self.dataset} in {self.dest}:"]
        for f in self.files:
            size = "" if f.size is None else human_size(f.size)
            details = "; ".join([f.check, *f.notes])
            out.append(f"  {f.name:<{width}}  {f.status:<17} {size:>9}  {details}")
        if any(f.check == "not verified" for f in self.files):
            out.append("md5s were not checked (--no-verify): rerun without it to verify the files.")
        out.append("Cluster into shards with:")
        out.extend(f"  {command}" for command in self.next_commands)
        return out


def human_size(n_bytes: int) -> str:
    """``n_bytes`` in decimal units (kB, MB, GB), as the dataset sizes are quoted."""
    if n_bytes < 1000:
        return f"{n_bytes} B"
    size = n_bytes / 1000
    for unit in ("kB", "MB"):
        if size < 1000:
            return f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def md5_file(path: str | os.PathLike) -> str:
    """The md5 hex digest of a file (what the datasets publish)."""
    return file_digest(path, "md5")


# --- checksums --------------------------------------------------------------------------------------

def read_checksum_file(path: str | os.PathLike) -> dict[str, str]:
    """md5s from a file in ``md5sum`` format (``<md5>  <name>`` per line; blank and ``#`` lines skipped)."""
    checksums = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"\s*([0-9a-fA-F]{32})\s+\*?(.+?)\s*", line)
        if not match:
            raise JJepaError(f"{path}, line {number}: expected '<md5>  <file name>' as md5sum writes it, "
                             f"got {line!r}")
        checksums[Path(match[2]).name] = match[1].lower()
    return checksums


def read_record_api(url: str, timeout_s: float = TIMEOUT_S) -> dict[str, str]:
    """md5s listed by a Zenodo record API (JSON ``files[*].key`` and ``files[*].checksum`` = ``md5:...``)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            record = json.load(response)
        return {f["key"]: f["checksum"].removeprefix("md5:").lower() for f in record["files"]
                if f.get("checksum", "").startswith("md5:")}
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError, AttributeError) as err:
        _close_http_error(err)
        raise JJepaError(f"cannot read the md5s from {url} ({err}); pass them with --checksums FILE "
                         "(lines '<md5>  <file name>', as md5sum writes them), or skip verification with "
                         "--no-verify") from None


def resolve_checksums(spec: PublicDataset, files: Iterable[RemoteFile],
                      checksum_file: str | os.PathLike | None = None, verify: bool = True,
                      timeout_s: float = TIMEOUT_S) -> dict[str, str | None]:
    """The md5 of each file: from ``checksum_file`` if it lists it, else the registry, else the record API.

    The record API is asked only when some file has no md5 otherwise and ``verify`` is on; with
    ``verify`` off, files without an md5 map to None.
    """
    given = read_checksum_file(checksum_file) if checksum_file else {}
    md5s = {f.name: given.get(f.name, f.md5) for f in files}
    missing = [name for name, md5 in md5s.items() if md5 is None]
    if not missing or not verify:
        return md5s
    if spec.record_api is None:
        raise JJepaError(f"no md5 known for {missing}; pass --checksums FILE or --no-verify")
    listed = read_record_api(spec.record_api, timeout_s)
    absent = [name for name in missing if name not in listed]
    if absent:
        raise JJepaError(f"{spec.record_api} lists no md5 for {absent}; pass --checksums FILE "
                         "(lines '<md5>  <file name>') or --no-verify")
    return {name: md5 or listed[name] for name, md5 in md5s.items()}


# --- one download -----------------------------------------------------------------------------------

def _part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _close_http_error(err: Exception) -> None:
    """Release the connection an ``HTTPError`` holds (it doubles as the error response)."""
    if isinstance(err, urllib.error.HTTPError):
        err.close()


def _network_error(url: str, err: Exception, part: Path) -> JJepaError:
    """The error for a failed transfer: the URL, the cause, and that a rerun resumes."""
    _close_http_error(err)
    http_error = isinstance(err, urllib.error.HTTPError)
    cause = f"HTTP {err.code} {err.reason}" if http_error else str(err) or repr(err)
    kept = f"{part.stat().st_size} bytes kept in {part}; " if part.is_file() else ""
    return JJepaError(f"downloading {url} failed: {cause}; {kept}rerun the same command to resume "
                      "(check --base-url if the file is not found)")


def _open(url: str, offset: int, timeout_s: float) -> tuple[http.client.HTTPResponse | None, int]:
    """Open ``url`` asking for the bytes from ``offset`` on; return the response and where its body starts.

    A 206 answer starts at ``offset``; a 200 answer (the server ignored ``Range``) starts at 0. A
    416 answer (nothing from ``offset`` on) means the ``.part`` already holds the whole file (an
    earlier run was stopped before the rename): the response is None and it goes to verification.
    """
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            _close_http_error(err)
            return None, offset
        raise
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match[1]) != offset:
            response.close()
            raise JJepaError(f"{url}: asked for bytes from {offset}, the server sent "
                             f"{response.headers.get('Content-Range')!r}; delete the .part file and rerun")
        return response, offset
    return response, 0


def _transfer(response: http.client.HTTPResponse, part: Path, start: int, name: str, progress: bool) -> None:
    """Write the body of ``response`` into ``part`` from byte ``start`` on, with a byte progress bar."""
    length = response.headers.get("Content-Length")
    total = start + int(length) if length is not None else None
    written = start
    with open(part, "ab" if start else "wb") as out, \
            tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                 disable=not progress, leave=False) as bar:
        while chunk := response.read(BLOCK):
            out.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    if total is not None and written < total:
        raise http.client.IncompleteRead(b"", total - written)


def download(url: str, path: Path, progress: bool = True, timeout_s: float = TIMEOUT_S) -> int:
    """Download ``url`` into ``<path>.part``, resuming what an earlier attempt left there.

    Returns the byte offset the download resumed from (0: from the start). Network errors become a
    ``JJepaError`` naming the URL; the ``.part`` is kept for the next attempt.
    """
    part = _part_path(path)
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response, start = _open(url, offset, timeout_s)
        if response is None:
            log.info("%s: the .part already holds all %d bytes", path.name, offset)
            return offset
        with response:
            if offset and not start:
                log.warning("%s: the server ignores byte ranges; restarting from zero", url)
            elif offset:
                log.info("%s: resuming at %s", path.name, human_size(offset))
            _transfer(response, part, start, path.name, progress)
    except (OSError, http.client.HTTPException) as err:
        raise _network_error(url, err, part) from err
    return start


def _check_download(part: Path, final_name: str, md5: str) -> None:
    """Check a fresh download's md5; on a mismatch delete it and raise."""
    actual = md5_file(part)
    if actual != md5:
        part.unlink()
        raise JJepaError(f"{final_name}: md5 mismatch after download: expected {md5}, got {actual}; the bad "
                         "download was deleted. Fetch it again; if it fails again, the mirror (--base-url) "
                         "serves a different file")


def fetch_file(url: str, path: Path, md5: str | None, options: FetchOptions) -> FileReport:
    """Make ``path`` hold the verified file at ``url``: check what is there, else download it.

    Args:
        url: where to download from.
        path: final location.
        md5: expected md5; None (or ``options.verify`` off) skips verification, as the report says.
        options: verify, force, progress, timeout.
    """
    check = "md5 ok" if options.verify and md5 else "not verified"
    if path.is_file():
        if not (options.verify and md5):
            return FileReport(path.name, "already present", path.stat().st_size, check)
        actual = md5_file(path)
        if actual == md5:
            return FileReport(path.name, "already present", path.stat().st_size, check)
        if not options.force:
            raise JJepaError(f"{path} is there but fails its md5 (expected {md5}, got {actual}); "
                             "delete it and rerun, or rerun with --force to replace it")
        log.warning("%s fails its md5; replacing it (--force)", path)
        _part_path(path).unlink(missing_ok=True)
    log.info("downloading %s", url)
    resumed_at = download(url, path, progress=options.progress, timeout_s=options.timeout_s)
    if options.verify and md5:
        _check_download(_part_path(path), path.name, md5)
    os.replace(_part_path(path), path)
    notes = [f"resumed at {human_size(resumed_at)}"] if resumed_at else []
    return FileReport(path.name, "downloaded", path.stat().st_size, check, notes)


# --- tars -------------------------------------------------------------------------------------------

def marker_path(dest: Path, archive_name: str) -> Path:
    """The file recording that ``archive_name`` was unpacked: ``<dest>/.<archive_name>.extracted``."""
    return dest / f".{archive_name}.extracted"


def _check_member(archive: Path, member: tarfile.TarInfo) -> PurePosixPath:
    """The member's normalised name; a ``JJepaError`` for names or types that could escape the folder."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or re.match(r"^[A-Za-z]:", member.name):
        raise JJepaError(f"{archive}: refusing unsafe member {member.name!r} (absolute path or '..'); "
                         "the archive is not a genuine dataset file")
    if not (member.isfile() or member.isdir()):
        raise JJepaError(f"{archive}: refusing member {member.name!r}: links and special files are not "
                         "expected in a dataset archive")
    return PurePosixPath(*[p for p in name.parts if p != "."])


def extraction_dir(dest: Path, extract_to: str, names: Iterable[PurePosixPath]) -> Path:
    """Where to unpack so files land in ``<dest>/<extract_to>``: its parent if members carry the folder."""
    target = dest / extract_to
    names = [n for n in names if n.parts]
    if names and all(n.parts[0] == target.name for n in names):
        return target.parent
    return target


def extract_tar(archive: Path, dest: Path, extract_to: str) -> tuple[Path, int]:
    """Unpack ``archive`` safely so its files land in ``<dest>/<extract_to>``; return that folder, #files."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            names = [_check_member(archive, m) for m in members]
            into = extraction_dir(dest, extract_to, names)
            into.mkdir(parents=True, exist_ok=True)
            log.info("unpacking %s into %s", archive.name, into)
            _extractall(tar, into, members)
    except (tarfile.TarError, EOFError) as err:
        raise JJepaError(f"{archive}: cannot unpack ({err}); delete it and fetch it again") from None
    return dest / extract_to, sum(m.isfile() for m in members)


def _extractall(tar: tarfile.TarFile, into: Path, members: list[tarfile.TarInfo]) -> None:
    """``extractall`` with the ``data`` filter where Python has it (3.10.12+, 3.11.4+)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(into, members=members, filter="data")
    else:  # pragma: no cover - old Python: the member checks are the safety net
        tar.extractall(into, members=members)


def _unpack(file: RemoteFile, md5: str | None, report: FileReport, options: FetchOptions) -> None:
    """Unpack a downloaded (and, unless --no-verify, verified) tar, write its marker, maybe delete it."""
    archive = options.dest / file.name
    folder, n_files = extract_tar(archive, options.dest, file.extract_to)
    write_json_atomic(marker_path(options.dest, file.name),
                      {"archive": file.name, "md5": md5 if options.verify else None, "into": file.extract_to,
                       "files": n_files})
    report.notes.append(f"extracted {n_files} files into {folder}")
    _drop_archive(archive, report, options)


def _drop_archive(archive: Path, report: FileReport, options: FetchOptions) -> None:
    if not options.keep_archives and archive.is_file():
        archive.unlink()
        report.notes.append("archive deleted")


# --- a whole dataset --------------------------------------------------------------------------------

def plan_lines(spec: PublicDataset, files: Iterable[RemoteFile], md5s: Mapping[str, str | None],
               dest: Path) -> list[str]:
    """What ``fetch`` would do (``--dry-run``): per file its URL, md5 and what is already in ``dest``."""
    files = tuple(files)
    width = max((len(f.name) for f in files), default=0)
    lines = [f"{spec.name} into {dest} (dry run, nothing downloaded):"]
    for f in files:
        md5 = md5s.get(f.name) or (f"from {spec.record_api}" if spec.record_api else "not published")
        lines.append(f"  {f.name:<{width}}  {_state(f, dest):<24}  md5 {md5}  {spec.url(f)}")
    return lines


def _state(file: RemoteFile, dest: Path) -> str:
    """What of ``file`` is already in ``dest``, in a few words."""
    path, part = dest / file.name, _part_path(dest / file.name)
    if file.extract_to and marker_path(dest, file.name).is_file():
        return "already extracted"
    if path.is_file():
        return f"present, {human_size(path.stat().st_size)}"
    if part.is_file():
        return f"partial, {human_size(part.stat().st_size)} to resume from"
    return "to download"


def cluster_commands(dataset: str, dest: Path, splits: Iterable[str]) -> list[str]:
    """The ``jjepa-preprocess cluster`` command lines that turn each fetched split into shards."""
    return [f"jjepa-preprocess cluster --dataset {dataset} --root {shlex.quote(str(dest))} --split {split} "
            f"--out data/shards/{split}" for split in dict.fromkeys(splits)]


def fetch_dataset(spec: PublicDataset, files: Iterable[RemoteFile], md5s: Mapping[str, str | None],
                  options: FetchOptions) -> FetchReport:
    """Fetch ``files`` of ``spec`` into ``options.dest``: download, verify, unpack; report per file.

    Args:
        spec: the dataset (base URL, layout).
        files: the files to fetch (see ``datasets.select_files``).
        md5s: expected md5 per file name (see ``resolve_checksums``); None entries are not verified.
        options: destination and flags.
    """
    files = tuple(files)
    options.dest.mkdir(parents=True, exist_ok=True)
    reports = []
    for f in files:
        md5 = md5s.get(f.name)
        path = options.dest / f.name
        marker = marker_path(options.dest, f.name)
        if f.extract_to and marker.is_file():
            checked = json.loads(marker.read_text()).get("md5")
            report = FileReport(f.name, "already extracted", path.stat().st_size if path.is_file() else None,
                                "md5 ok (when extracted)" if checked else "not verified")
            _drop_archive(path, report, options)
        else:
            report = fetch_file(spec.url(f), path, md5, options)
            if f.extract_to:
                _unpack(f, md5, report, options)
        log.info("%s: %s", f.name, report.status)
        reports.append(report)
    return FetchReport(spec.name, str(options.dest), reports,
                       cluster_commands(spec.name, options.dest, (f.split for f in files)))

