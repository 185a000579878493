"""The Dask driver of ``jjepa-preprocess cluster``: plan tasks, run them, keep the manifest true.

One task = one chunk of one file = one shard. The plan (inputs, chunking, clustering config) is
deterministic and recorded in ``manifest.json``; shard ``k`` is always task ``k``, so ``--resume``
redoes exactly the shards that are missing or whose sha256 no longer matches. The manifest is
rewritten atomically after every completed shard and lists only complete shards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jjepa.common.atomic import sha256_file
from jjepa.common.errors import InputError, JJepaError
from jjepa.common.schema import ClusterConfig, validate_shard
from jjepa.common.shards import (
    MANIFEST_NAME,
    Manifest,
    ShardRecord,
    read_manifest,
    shard_name,
    write_manifest,
)
from jjepa.preprocess.readers import detect_format, source_info
from jjepa.preprocess.readers.base import GenericOptions
from jjepa.preprocess.task import ShardTask, run_task
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
    workers: int = 1
    scheduler: str | None = None
    resume: bool = False
    force: bool = False
    max_jets: int | None = None
    progress: bool = True


def plan_tasks(run: ClusterRun) -> tuple[list[ShardTask], tuple[str, ...]]:
    """Split every input into chunks of ``chunk_size`` jets; check the inputs agree on classes."""
    if run.chunk_size < 1:
        raise JJepaError(f"chunk size must be at least 1, not {run.chunk_size}")
    tasks: list[ShardTask] = []
    classes: tuple[str, ...] | None = None
    for path in run.inputs:
        if not Path(path).exists():
            raise InputError(path, "no such file")
        fmt = detect_format(path) if run.fmt == "auto" else run.fmt
        info = source_info(fmt, path, run.options)
        if classes is None:
            classes = info.classes
        elif info.classes != classes:
            raise InputError(path, f"classes {list(info.classes)} differ from those of {run.inputs[0]} "
                             f"({list(classes)})", hint="cluster inputs with different classes into separate folders")
        n_jets = info.n_jets if run.max_jets is None else min(info.n_jets, run.max_jets)
        for start in range(0, n_jets, run.chunk_size):
            tasks.append(ShardTask(
                index=len(tasks), path=str(path), fmt=fmt, start=start, stop=min(start + run.chunk_size, n_jets),
                out=str(Path(run.out) / shard_name(len(tasks))), classes=classes, cluster=run.cluster,
                options=run.options, backend=run.backend, on_bad_jet=run.on_bad_jet))
    return tasks, classes or ()


def _plan_record(run: ClusterRun, tasks: list[ShardTask]) -> dict:
    """What must match for ``--resume`` to continue a run: inputs, chunking and options."""
    return {
        "inputs": [str(p) for p in run.inputs],
        "chunks": [[t.path, t.start, t.stop] for t in tasks],
        "format": run.fmt,
        "options": asdict(run.options) | {"classes": list(run.options.classes)},
        "backend": run.backend,
        "on_bad_jet": run.on_bad_jet,
    }


def _intact(folder: Path, record: ShardRecord) -> bool:
    path = folder / record.file
    return path.exists() and sha256_file(path) == record.sha256 and not validate_shard(path)


def _start_manifest(run: ClusterRun, tasks: list[ShardTask], classes) -> tuple[Manifest, list[ShardTask]]:
    """The manifest to start from and the tasks still to do, honouring --resume / --force."""
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".shard-*.tmp"):
        stale.unlink()
    plan = _plan_record(run, tasks)
    fresh = Manifest(cluster=run.cluster, classes=classes, shards=[], plan=plan)
    if not (out / MANIFEST_NAME).exists():
        return fresh, tasks
    if run.force:
        for old in out.glob("shard-*.h5"):
            old.unlink()
        return fresh, tasks
    if not run.resume:
        raise JJepaError(f"{out} already holds shards ({MANIFEST_NAME} exists); pass --resume to finish that run "
                         "or --force to delete it and start over")
    old = read_manifest(out)
    if old.cluster != run.cluster or old.plan != plan:
        raise JJepaError(f"{out}: --resume needs the same inputs, chunk size and clustering options as the run "
                         "that made it; use another --out, or --force to start over")
    kept = [r for r in old.shards if _intact(out, r)]
    if len(kept) < len(old.shards):
        log.warning("%d shard(s) in %s are missing or damaged and will be redone", len(old.shards) - len(kept), out)
    done = {r.file for r in kept}
    todo = [t for t in tasks if Path(t.out).name not in done]
    return Manifest(cluster=run.cluster, classes=classes, shards=kept, plan=plan), todo


@contextlib.contextmanager
def _dask_client(run: ClusterRun):
    from distributed import Client, LocalCluster

    if run.scheduler:
        with Client(run.scheduler) as client:
            yield client
        return
    # One single-threaded process per worker: Numba kernels hold the GIL-free core to themselves.
    with LocalCluster(n_workers=run.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as local, Client(local) as client:
        yield client


def run_cluster(run: ClusterRun) -> Manifest:
    """Run (or resume) a ``cluster`` job; return the final manifest.

    Raises ``InputError`` for bad input after the shards that did succeed are recorded, so a
    later ``--resume`` only redoes the failed chunks once the input is fixed.
    """
    tasks, classes = plan_tasks(run)
    manifest, todo = _start_manifest(run, tasks, classes)
    write_manifest(run.out, manifest)
    total = sum(t.n_jets for t in todo)
    log.info("%d shard(s) to write (%d jets) into %s", len(todo), total, run.out)
    errors: list[Exception] = []
    started = time.perf_counter()
    bar = tqdm(total=total, unit="jet", unit_scale=True, disable=not run.progress, desc="cluster")

    def done(task: ShardTask, record: ShardRecord | None, error: Exception | None):
        bar.update(task.n_jets)
        if error is not None:
            errors.append(error)
            return
        manifest.shards.append(record)
        manifest.shards.sort(key=lambda r: r.file)
        write_manifest(run.out, manifest)

    try:
        if run.workers == 0 and not run.scheduler:
            for task in todo:
                try:
                    done(task, run_task(task), None)
                except InputError as err:
                    done(task, None, err)
        elif todo:
            _run_on_dask(run, todo, done)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    log.info("wrote %d shard(s), %d jets in %.1f s (%.0f jets/s)", len(todo) - len(errors),
             total, elapsed, total / max(elapsed, 1e-9))
    if errors:
        for err in errors[1:]:
            log.error("%s", err)
        raise errors[0]
    return manifest


def _run_on_dask(run: ClusterRun, todo: list[ShardTask], done) -> None:
    from distributed import as_completed

    with _dask_client(run) as client:
        futures = {client.submit(run_task, t, key=f"jjepa-shard-{t.index}-{os.getpid()}", pure=False): t
                   for t in todo}
        try:
            for future in as_completed(futures):
                task = futures[future]
                try:
                    done(task, future.result(), None)
                except InputError as err:
                    done(task, None, err)
        except BaseException:
            client.cancel(list(futures))
            raise
