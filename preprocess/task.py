"""One preprocessing task: one chunk of one input file becomes one shard.

A task carries only picklable, typed values, so Dask can ship it to any worker; the worker reads
its own entry range, checks it, clusters it, builds the features and writes the shard atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jjepa.common.schema import ClusterConfig, ShardAttrs
from jjepa.common.shards import ShardRecord, record_for, write_shard
from jjepa.preprocess.cluster import cluster, cluster_fastjet
from jjepa.preprocess.features import build_features
from jjepa.preprocess.readers import read_chunk
from jjepa.preprocess.readers.base import GenericOptions
from jjepa.preprocess.validate import check_chunk

BACKENDS = ("numba", "fastjet")


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to turn entries ``[start, stop)`` of ``path`` into ``out``."""

    index: int
    path: str
    fmt: str
    start: int
    stop: int
    out: str
    classes: tuple[str, ...]
    cluster: ClusterConfig
    options: GenericOptions
    backend: str = "numba"
    on_bad_jet: str = "error"

    @property
    def n_jets(self) -> int:
        return self.stop - self.start

    def source(self) -> dict:
        return {"file": self.path, "start": self.start, "stop": self.stop}


def run_task(task: ShardTask) -> ShardRecord:
    """Read, check, cluster and featurise one chunk, write its shard, return the manifest record.

    Raises ``InputError`` (naming file and entry) on bad input; nothing is written then.
    """
    chunk = read_chunk(task.fmt, task.path, task.start, task.stop, task.options)
    chunk, n_skipped = check_chunk(chunk, task.on_bad_jet)
    clusterer = cluster if task.backend == "numba" else cluster_fastjet
    assign, n_subjets = clusterer(chunk.px, chunk.py, chunk.pz, chunk.energy, chunk.offsets,
                                  task.cluster.algorithm, task.cluster.radius)
    arrays = build_features(chunk.px, chunk.py, chunk.pz, chunk.energy, chunk.offsets, assign, n_subjets,
                            chunk.labels, task.cluster)
    path = Path(task.out)
    attrs = ShardAttrs(cluster=task.cluster, classes=task.classes, source=task.source())
    write_shard(path, arrays, attrs)
    return record_for(path, arrays, task.classes, task.source(), n_skipped=n_skipped)
