"""Reading and writing shard files (schema v1) and their ``manifest.json``.

Writers go through ``write_shard`` (temporary name, then rename) and ``write_manifest``; readers
memory-map with ``open_memmaps`` so that a batch is a slice of the page cache, not an h5py call.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from jjepa.common.atomic import atomic_path, sha256_file, write_json_atomic
from jjepa.common.errors import ShardError
from jjepa.common.schema import (
    DATASET_NAMES,
    SCHEMA_VERSION,
    SHARD_ARRAYS,
    ClusterConfig,
    ShardArrays,
    ShardAttrs,
    cluster_config_from_attrs,
    config_dict,
    dataset_dtype,
    particle_dtype_of,
)

MANIFEST_NAME = "manifest.json"


def shard_name(index: int) -> str:
    """File name of shard number ``index``: ``shard-00000.h5``."""
    return f"shard-{index:05d}.h5"


@contextlib.contextmanager
def shard_writer(path: str | os.PathLike, n_jets: int, attrs: ShardAttrs):
    """Open a shard for writing in blocks of jets; yield ``write(start, arrays)``.

    The datasets are created contiguous with their full (J, S, N, 4)… shapes, so a producer can
    fill the shard a block at a time from a small reused buffer. The file lives under a
    temporary name until the ``with`` block ends without error, then it is renamed to ``path``;
    on error it is deleted. The rename makes a killed process leave either the whole shard or
    nothing; the sha256 that the manifest records catches the rarer torn file after a power loss.
    ``particles`` are stored as ``attrs.particle_dtype``; a float16 value that overflows
    (|x| > 65504, i.e. a constituent above 65 TeV) is an error, never a silent inf.
    """
    cluster = attrs.cluster
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver="latest") as f:
        datasets = {spec.name: f.create_dataset(spec.name, spec.shape(n_jets, cluster.n_subjets, cluster.n_particles),
                                                dtype=dataset_dtype(spec.name, attrs.particle_dtype),
                                                track_times=False) for spec in SHARD_ARRAYS}

        def write(start: int, arrays: ShardArrays) -> None:
            stop = start + arrays.n_jets
            for name, ds in datasets.items():
                source = getattr(arrays, name)
                with np.errstate(over="ignore"):  # an overflow is reported below, naming the jet
                    block = np.ascontiguousarray(source, dtype=ds.dtype)
                if block.shape[1:] != ds.shape[1:] or stop > ds.shape[0]:
                    raise ValueError(f"{name}: block of shape {block.shape} does not fit jets {start}-{stop} "
                                     f"of a shard shaped {ds.shape}")
                overflow = block.dtype != source.dtype and block.dtype.kind == "f" and not np.isfinite(block).all()
                if overflow:  # values finite before the cast and not after: out of range of the stored dtype
                    lost = (~np.isfinite(block) & np.isfinite(source)).reshape(len(block), -1).any(1)
                    overflow = lost.any()
                if overflow:
                    bad = start + int(np.flatnonzero(lost)[0])
                    raise ShardError(f"{path}: jet {bad}: {name} values beyond the range of {ds.dtype} "
                                     f"(|x| > {np.finfo(ds.dtype).max:g}); write this input with float32 particles")
                ds[start:stop] = block

        yield write
        for key, value in attrs.to_hdf5().items():
            f.attrs[key] = value


def write_shard(path: str | os.PathLike, arrays: ShardArrays, attrs: ShardAttrs) -> None:
    """Write one whole shard atomically (see ``shard_writer``).

    Args:
        path: final file name, e.g. ``out/shard-00003.h5``.
        arrays: the shard's arrays, shaped (J, S, N, 4) etc. as in ``jjepa.common.schema.SHARD_ARRAYS``.
        attrs: clustering config, class names and source record.
    """
    with shard_writer(path, arrays.n_jets, attrs) as write:
        if arrays.n_jets:
            write(0, arrays)


def read_shard(path: str | os.PathLike) -> ShardArrays:
    """Read a whole shard into memory (for tests and small files; training uses ``open_memmaps``).

    Arrays keep their stored dtype: ``particles`` is float16 in a shard written with float16 particles.
    """
    with h5py.File(path, "r") as f:
        return ShardArrays(**{name: f[name][...] for name in DATASET_NAMES})


def open_memmaps(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Memory-map every dataset of a shard, read-only.

    Returns a dict name → array of the schema's dtype and shape; ``particles`` has the dtype the
    file's ``particle_dtype`` attribute names (float32 or float16: copying a slice into a float32
    array converts it). Zero-length datasets come back as empty in-memory arrays (HDF5 allocates
    no storage for them).
    """
    maps = {}
    with h5py.File(path, "r") as f:
        try:
            particle_dtype = particle_dtype_of(f.attrs)
            dtypes = {spec.name: dataset_dtype(spec.name, particle_dtype) for spec in SHARD_ARRAYS}
        except ShardError as err:
            raise ShardError(f"{path}: {err}") from None
        for spec in SHARD_ARRAYS:
            ds = f[spec.name]
            offset = ds.id.get_offset()
            if ds.dtype != dtypes[spec.name]:
                raise ShardError(f"{path}: dataset {spec.name!r} is {ds.dtype}, expected {dtypes[spec.name]} "
                                 f"(particle_dtype attribute {particle_dtype!r})")
            if ds.size == 0:
                maps[spec.name] = np.zeros(ds.shape, ds.dtype)
            elif offset is None or ds.chunks is not None or ds.compression is not None:
                raise ShardError(f"{path}: dataset {spec.name!r} is not contiguous and cannot be memory-mapped")
            else:
                maps[spec.name] = np.memmap(path, mode="r", dtype=ds.dtype, offset=offset, shape=ds.shape)
    return maps


@dataclass
class ShardRecord:
    """One complete shard as listed in the manifest."""

    file: str
    n_jets: int
    class_counts: list[int]
    sha256: str
    source: dict
    n_skipped: int = 0

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "n_jets": self.n_jets,
            "class_counts": self.class_counts,
            "sha256": self.sha256,
            "source": self.source,
            "n_skipped": self.n_skipped,
        }


@dataclass
class Manifest:
    """The ``manifest.json`` of a shard folder: config, classes, and the complete shards."""

    cluster: ClusterConfig
    classes: tuple[str, ...]
    shards: list[ShardRecord] = field(default_factory=list)
    plan: dict = field(default_factory=dict)

    @property
    def n_jets(self) -> int:
        return sum(s.n_jets for s in self.shards)

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "cluster": config_dict(self.cluster),
            "classes": list(self.classes),
            "n_jets": self.n_jets,
            "plan": self.plan,
            "shards": [s.to_json() for s in sorted(self.shards, key=lambda s: s.file)],
        }

    @classmethod
    def from_json(cls, obj: dict) -> Manifest:
        if obj.get("schema_version") != SCHEMA_VERSION:
            raise ShardError(f"manifest schema_version {obj.get('schema_version')}, expected {SCHEMA_VERSION}")
        return cls(
            cluster=ClusterConfig(**obj["cluster"]),
            classes=tuple(obj["classes"]),
            shards=[ShardRecord(**s) for s in obj["shards"]],
            plan=obj.get("plan", {}),
        )


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> None:
    """Write ``folder/manifest.json`` atomically."""
    write_json_atomic(Path(folder) / MANIFEST_NAME, manifest.to_json())


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """Read ``folder/manifest.json``; a clear error if the folder holds no shards."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        raise ShardError(f"{folder}: no {MANIFEST_NAME} (is this the output folder of `jjepa-preprocess cluster`?)")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ShardError(f"{path}: not valid JSON ({err})") from None
    return Manifest.from_json(obj)


def record_for(path: str | os.PathLike, labels: np.ndarray, classes, source: dict, n_skipped: int = 0) -> ShardRecord:
    """The manifest record of a shard just written at ``path`` holding jets with ``labels``."""
    counts = np.bincount(labels[labels >= 0], minlength=len(classes)).tolist() if len(classes) else []
    return ShardRecord(
        file=Path(path).name,
        n_jets=int(labels.shape[0]),
        class_counts=counts,
        sha256=sha256_file(path),
        source=source,
        n_skipped=n_skipped,
    )


def shard_cluster_config(path: str | os.PathLike) -> ClusterConfig:
    """The clustering configuration stored in a shard's attributes."""
    with h5py.File(path, "r") as f:
        return cluster_config_from_attrs(f.attrs)
