"""The Dask driver of ``jjepa-preprocess cluster``: plan tasks, run them, keep the manifest true.

One task = one chunk of one file = one shard. The plan (inputs, chunking, clustering config) is
deterministic and recorded in ``manifest.json``; shard ``k`` is always task ``k``, so ``--resume``
redoes exactly the shards that are missing or whose sha256 no longer matches. The plan records each
input's fingerprint (``fingerprint.py``: content sha256, plus path, size and mtime to skip re-hashing),
so ``--resume`` refuses an input whose content changed, naming it, and accepts the same files given
by another path. The manifest is rewritten atomically after every completed shard and lists only
complete shards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jjepa.common.atomic import sha256_file
from jjepa.common.errors import InputError, JJepaError
from jjepa.common.schema import PARTICLE_DTYPES, ClusterConfig, bytes_per_jet, config_dict, validate_shard
from jjepa.common.shards import (
    MANIFEST_NAME,
    Manifest,
    ShardRecord,
    read_manifest,
    shard_name,
    write_manifest,
)
from jjepa.preprocess.diskfull import DiskFullError, disk_full_as_error
from jjepa.preprocess.fingerprint import check_distinct, check_same_inputs, fingerprints
from jjepa.preprocess.readers import FORMATS, detect_format, source_info
from jjepa.preprocess.readers.base import GenericOptions
from jjepa.preprocess.task import BACKENDS, ShardTask, run_task
from jjepa.preprocess.validate import ON_BAD_JET
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterRun:
    """A whole ``cluster`` invocation, as typed values (from CLI options or params.yaml).

    Attributes:
        inputs: input files, in the order their jets go into shards.
        out: output folder for shards and manifest.json.
        fmt: ``auto``, ``jetclass``, ``toptagging``, ``qg`` or ``generic``.
        cluster: algorithm, R, S and N.
        options: branch names for the generic reader.
        chunk_size: jets per task and per shard.
        backend: ``numba`` (default) or ``fastjet``.
        on_bad_jet: ``error`` or ``skip``.
        particle_dtype: storage dtype of ``particles``, ``float32`` or ``float16`` (about half the disk).
        workers: local Dask worker processes; 0 runs in this process without Dask.
        scheduler: address of an existing Dask scheduler (``tcp://host:8786``); overrides workers.
        resume: finish an interrupted run in ``out`` instead of refusing to touch it.
        force: delete an existing manifest and shards in ``out`` and start over.
        max_jets: stop after this many jets per input file (None: all).
        progress: show a progress bar.
    """

    inputs: tuple[str, ...]
    out: str
    fmt: str = "auto"
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    options: GenericOptions = field(default_factory=GenericOptions)
    chunk_size: int = 25_000
    backend: str = "numba"
    on_bad_jet: str = "error"
    particle_dtype: str = "float32"
    workers: int = 1
    scheduler: str | None = None
    resume: bool = False
    force: bool = False
    max_jets: int | None = None
    progress: bool = True

    def __post_init__(self):
        """Refuse values that would hang (workers < 0) or quietly do nothing (max_jets < 1), before any work."""
        if self.chunk_size < 1:
            raise JJepaError(f"chunk size must be at least 1, not {self.chunk_size}")
        if self.workers < 0:
            raise JJepaError(f"workers must be 0 (no Dask) or more, not {self.workers}")
        if self.max_jets is not None and self.max_jets < 1:
            raise JJepaError(f"max_jets must be at least 1 (or None for all jets), not {self.max_jets}")
        if self.on_bad_jet not in ON_BAD_JET:
            raise JJepaError(f"on_bad_jet must be one of {ON_BAD_JET}, not {self.on_bad_jet!r}")
        if self.backend not in BACKENDS:
            raise JJepaError(f"backend must be one of {BACKENDS}, not {self.backend!r}")
        if self.fmt not in FORMATS:
            raise JJepaError(f"format must be one of {FORMATS}, not {self.fmt!r}")
        if self.particle_dtype not in PARTICLE_DTYPES:
            raise JJepaError(f"particle_dtype must be one of {PARTICLE_DTYPES}, not {self.particle_dtype!r}")


#: Reader options only the ``generic`` layout reads (``tree`` names the TTree of any ROOT layout).
GENERIC_ONLY: tuple[str, ...] = ("px", "py", "pz", "pt", "eta", "phi", "energy", "label", "classes", "counts")


def plan_tasks(run: ClusterRun) -> tuple[list[ShardTask], tuple[str, ...]]:
    """Split every input into chunks of ``chunk_size`` jets; check the inputs agree on classes and hold jets."""
    tasks: list[ShardTask] = []
    classes: tuple[str, ...] | None = None
    n_found = 0
    for path in run.inputs:
        if not Path(path).exists():
            raise InputError(path, "no such file")
        fmt = detect_format(path) if run.fmt == "auto" else run.fmt
        ignored = [name for name in GENERIC_ONLY if getattr(run.options, name)]
        if fmt != "generic" and ignored:
            raise InputError(path, f"is read as {fmt}, which has its own branch names and classes, but "
                             f"{['--' + n for n in ignored]} were given", hint="drop them, or pass --format generic")
        info = source_info(fmt, path, run.options)
        if classes is None:
            classes = info.classes
        elif info.classes != classes:
            raise InputError(path, f"classes {list(info.classes)} differ from those of {run.inputs[0]} "
                             f"({list(classes)})", hint="cluster inputs with different classes into separate folders")
        n_jets = info.n_jets if run.max_jets is None else min(info.n_jets, run.max_jets)
        n_found += n_jets
        for start in range(0, n_jets, run.chunk_size):
            tasks.append(ShardTask(
                index=len(tasks), path=str(path), fmt=fmt, start=start, stop=min(start + run.chunk_size, n_jets),
                out=str(Path(run.out) / shard_name(len(tasks))), classes=classes, cluster=run.cluster,
                options=run.options, backend=run.backend, on_bad_jet=run.on_bad_jet,
                particle_dtype=run.particle_dtype))
    if not n_found:
        raise JJepaError(f"no jets to cluster: the input file(s) {', '.join(map(str, run.inputs))} hold 0 jets")
    return tasks, classes or ()


#: Version of the ``plan`` record in manifest.json; 2 fingerprints the inputs (``fingerprint.py``).
PLAN_VERSION = 2


def _input_fingerprints(run: ClusterRun, known: list[dict] | None = None) -> list[dict]:
    """The inputs' fingerprints (``fingerprint.fingerprints``), refusing an input given twice by any path."""
    inputs = fingerprints(run.inputs, known=known)
    check_distinct(inputs, run.inputs)
    return inputs


def _plan_record(run: ClusterRun, tasks: list[ShardTask], inputs: list[dict]) -> dict:
    """What must match for ``--resume`` to continue a run: inputs (by fingerprint), chunking and options.

    Chunks name their input by position, not path, so the same files given by another path match.
    """
    index = {str(p): i for i, p in enumerate(run.inputs)}
    return {
        "version": PLAN_VERSION,
        "inputs": inputs,
        "chunks": [[index[t.path], t.start, t.stop] for t in tasks],
        "format": run.fmt,
        "options": asdict(run.options) | {"classes": list(run.options.classes)},
        "backend": run.backend,
        "on_bad_jet": run.on_bad_jet,
        "particle_dtype": run.particle_dtype,
    }


def _legacy_plan_record(run: ClusterRun, tasks: list[ShardTask]) -> dict:
    """The plan record of manifests written before input fingerprints (compared by path)."""
    return {
        "inputs": [str(p) for p in run.inputs],
        "chunks": [[t.path, t.start, t.stop] for t in tasks],
        "format": run.fmt,
        "options": asdict(run.options) | {"classes": list(run.options.classes)},
        "backend": run.backend,
        "on_bad_jet": run.on_bad_jet,
    }


#: What each plan key means, for the message when a resumed run differs.
_PLAN_WORDS = {"chunks": "chunking (--chunk-size, --max-jets)", "format": "--format",
               "options": "generic reader options (branch names, classes)", "backend": "--backend",
               "on_bad_jet": "--on-bad-jet", "particle_dtype": "--particle-dtype"}


def _check_resumable(out: Path, old: Manifest, run: ClusterRun, tasks: list[ShardTask]) -> dict:
    """The plan of this run if it may continue the run that made ``old``; else a ``JJepaError`` saying why."""
    what = "--resume needs the same inputs, chunk size and clustering options as the run that made it"
    fix = "use another --out, or --force to delete these shards and start over"
    if old.cluster != run.cluster:
        raise JJepaError(f"{out}: {what}; the clustering differs (was {config_dict(old.cluster)}, now "
                         f"{config_dict(run.cluster)}) ({fix})")
    if old.plan.get("version") != PLAN_VERSION:  # an older manifest: inputs by path, as it was checked then
        if old.plan != _legacy_plan_record(run, tasks) or run.particle_dtype != "float32":  # all float32 then
            raise JJepaError(f"{out}: {what} ({fix})")
        log.warning("%s was written without input fingerprints: resuming by path, so a changed input cannot "
                    "be detected this once; the manifest records them from now on", out)
        return _plan_record(run, tasks, _input_fingerprints(run))
    inputs = _input_fingerprints(run, known=old.plan.get("inputs"))
    check_same_inputs(out, old.plan.get("inputs", []), inputs, run.inputs)
    plan = _plan_record(run, tasks, inputs)
    differ = [key for key in plan if key != "inputs" and plan[key] != old.plan.get(key)]
    if differ:
        raise JJepaError(f"{out}: {what}; the {', '.join(_PLAN_WORDS.get(k, k) for k in differ)} differ ({fix})")
    return plan


def _intact(folder: Path, record: ShardRecord) -> bool:
    path = folder / record.file
    return path.exists() and sha256_file(path) == record.sha256 and not validate_shard(path)


def _start_manifest(run: ClusterRun, tasks: list[ShardTask], classes) -> tuple[Manifest, list[ShardTask]]:
    """The manifest to start from and the tasks still to do, honouring --resume / --force."""
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".shard-*.tmp"):
        stale.unlink()
    if not (out / MANIFEST_NAME).exists() or run.force:
        plan = _plan_record(run, tasks, _input_fingerprints(run))  # before deleting anything: inputs may be refused
        leftovers = sorted(out.glob("shard-*.h5"))
        if leftovers and not run.force:
            names = leftovers[0].name if len(leftovers) == 1 else f"{leftovers[0].name} to {leftovers[-1].name}"
            raise JJepaError(f"{out} holds {len(leftovers)} shard file(s) ({names}) but no {MANIFEST_NAME} saying "
                             "what they are; new shards would mix with them (use another --out, or --force to "
                             "delete them and start over)")
        for old in leftovers:
            old.unlink()
        return Manifest(cluster=run.cluster, classes=classes, shards=[], plan=plan), tasks
    if not run.resume:
        raise JJepaError(f"{out} already holds shards ({MANIFEST_NAME} exists); pass --resume to finish that run "
                         "or --force to delete it and start over")
    old = read_manifest(out)
    plan = _check_resumable(out, old, run, tasks)
    kept = [r for r in old.shards if _intact(out, r)]
    if len(kept) < len(old.shards):
        log.warning("%d shard(s) in %s are missing or damaged and will be redone", len(old.shards) - len(kept), out)
    done = {r.file for r in kept}
    todo = [t for t in tasks if Path(t.out).name not in done]
    return Manifest(cluster=run.cluster, classes=classes, shards=kept, plan=plan), todo


@contextlib.contextmanager
def _dask_client(run: ClusterRun):
    from distributed import Client, LocalCluster

    # Importing distributed sets its loggers to INFO (~30 lines of scheduler chatter per run); warnings stay.
    logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    if run.scheduler:
        with Client(run.scheduler) as client:
            yield client
        return
    # One single-threaded process per worker: Numba kernels hold the GIL-free core to themselves.
    with LocalCluster(n_workers=run.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as local, Client(local) as client:
        yield client


#: Bytes a shard file takes beyond its jets' (HDF5 superblock, object headers, attributes): ~10 kB.
SHARD_OVERHEAD_BYTES = 16_384


def check_disk_space(out: str | os.PathLike, n_jets: int, n_shards: int, cluster: ClusterConfig,
                     particle_dtype: str) -> int:
    """Log the size the shards will take; refuse to start when the filesystem of ``out`` has less free.

    The size is exact up to the HDF5 overhead: jets × ``bytes_per_jet`` (the schema's fixed-size
    arrays) + ``SHARD_OVERHEAD_BYTES`` per shard; jets skipped as bad (``--on-bad-jet skip``) only
    make it smaller. Returns the expected bytes.

    Raises:
        JJepaError: less free space than that on the filesystem of ``out``.
    """
    from jjepa.preprocess.fetch import human_size

    per_jet = bytes_per_jet(cluster.n_subjets, cluster.n_particles, particle_dtype)
    need = n_jets * per_jet + n_shards * SHARD_OVERHEAD_BYTES
    free = shutil.disk_usage(out).free
    log.info("expected output: %s (%d jets x %d bytes, %s particles, S=%d, N=%d); %s free in %s", human_size(need),
             n_jets, per_jet, particle_dtype, cluster.n_subjets, cluster.n_particles, human_size(free), out)
    if need > free:
        smaller = ", or --particle-dtype float16 (about half the size)" if particle_dtype == "float32" else ""
        raise JJepaError(f"{out}: the shards need about {human_size(need)} ({n_jets} jets x {per_jet} bytes) but "
                         f"only {human_size(free)} are free there; free some space, choose another --out{smaller}")
    return need


def run_cluster(run: ClusterRun) -> Manifest:
    """Run (or resume) a ``cluster`` job; return the final manifest.

    Raises ``InputError`` for bad input after the shards that did succeed are recorded, so a
    later ``--resume`` only redoes the failed chunks once the input is fixed; ``DiskFullError``
    ("no space left on device: <path>") when the disk fills, after stopping the remaining tasks and
    removing their partial files, so ``--resume`` finishes once there is space.
    """
    tasks, classes = plan_tasks(run)
    manifest, todo = _start_manifest(run, tasks, classes)
    total = sum(t.n_jets for t in todo)
    try:
        check_disk_space(run.out, total, len(todo), run.cluster, run.particle_dtype)
    except JJepaError:
        if not manifest.shards:  # (--force deleted them) a manifest would list shards that are gone
            (Path(run.out) / MANIFEST_NAME).unlink(missing_ok=True)
        raise
    manifest_path = Path(run.out) / MANIFEST_NAME
    with disk_full_as_error(manifest_path):
        write_manifest(run.out, manifest)
    log.info("%d shard(s) to write (%d jets) into %s", len(todo), total, run.out)
    errors: list[Exception] = []
    written = {"shards": 0, "jets": 0}  # jets read into shards this run (skipped bad jets included)
    started = time.perf_counter()
    bar = tqdm(total=total, unit="jet", unit_scale=True, disable=not run.progress, desc="cluster")

    def done(task: ShardTask, record: ShardRecord | None, error: Exception | None):
        bar.update(task.n_jets)
        if error is not None:
            errors.append(error)
            return
        manifest.shards.append(record)
        manifest.shards.sort(key=lambda r: r.file)
        written["shards"] += 1
        written["jets"] += task.n_jets
        with disk_full_as_error(manifest_path):
            write_manifest(run.out, manifest)

    try:
        if run.workers == 0 and not run.scheduler:
            for task in todo:
                done(task, *_outcome(task))
                if errors and isinstance(errors[-1], DiskFullError):
                    break  # every later shard would fail the same way
        elif todo:
            _run_on_dask(run, todo, done)
    finally:
        bar.close()
        for partial in Path(run.out).glob(".shard-*.tmp"):  # of tasks cancelled mid-write: never trusted
            partial.unlink(missing_ok=True)
    elapsed = time.perf_counter() - started
    log.info("wrote %d shard(s), %d jets in %.1f s (%.0f jets/s)", written["shards"], written["jets"], elapsed,
             written["jets"] / max(elapsed, 1e-9))
    if errors:
        first = next((e for e in errors if isinstance(e, DiskFullError)), errors[0])
        for err in errors:
            if err is not first:
                log.error("%s", err)
        raise first
    if not manifest.n_jets:
        raise _all_skipped_error(run, manifest)
    return manifest


def _all_skipped_error(run: ClusterRun, manifest: Manifest) -> JJepaError:
    """The error for a run whose shards hold no jet at all: every jet read was bad and skipped.

    (Inputs with no jets are refused by ``plan_tasks``, before anything is written.)
    """
    n_skipped = sum(r.n_skipped for r in manifest.shards)
    return JJepaError(f"{run.out}: no jets written: all {n_skipped} jet(s) read were skipped as bad "
                      f"(--on-bad-jet skip), so the {len(manifest.shards)} shard(s) there are empty; rerun with "
                      "--on-bad-jet error to stop at the first bad jet, naming its file, entry and problem")


def _outcome(task: ShardTask) -> tuple[ShardRecord | None, JJepaError | None]:
    """``(record, None)``, or ``(None, error)`` for bad input or a full disk, which are returned rather
    than raised so that a Dask worker logs no traceback for what the user gets as one line."""
    try:
        return run_task(task), None
    except (InputError, DiskFullError) as err:
        return None, err


def _run_on_dask(run: ClusterRun, todo: list[ShardTask], done) -> None:
    from distributed import as_completed

    with _dask_client(run) as client:
        futures = {client.submit(_outcome, t, key=f"jjepa-shard-{t.index}-{os.getpid()}", pure=False): t
                   for t in todo}
        try:
            for future in as_completed(futures):
                task = futures[future]
                record, error = future.result()
                done(task, record, error)
                if isinstance(error, DiskFullError):  # every later shard would fail the same way
                    client.cancel(list(futures))
                    break
        except BaseException:
            client.cancel(list(futures))
            raise
