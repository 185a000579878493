"""Shard schema version 1: the one place that names the datasets, dtypes, shapes and attributes.

A shard is one HDF5 file holding J jets, each reclustered into up to S subjets of up to N
constituents. Every dataset is contiguous (no chunking, no filters) so that the trainer can
``np.memmap`` it at ``dataset.id.get_offset()``. The preprocessing writer, the trainer's loader
and the validator all read the names below; nothing else spells them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import h5py
import numpy as np
from jjepa.common.errors import ShardError

SCHEMA_VERSION = 1

#: Per-constituent and per-subjet features, in this order along the last axis.
FEATURE_NAMES: tuple[str, ...] = ("pt", "deta", "sin_dphi_half", "energy")
#: Per-jet quantities in ``jets``: pT [GeV], η, φ [rad, (−π, π]], E [GeV], mass [GeV], constituents.
JET_FEATURE_NAMES: tuple[str, ...] = ("pt", "eta", "phi", "energy", "mass", "n_constituents")

ALGORITHMS: tuple[str, ...] = ("ca", "kt", "antikt")
#: Storage dtypes of ``particles`` (file attribute ``particle_dtype``); float16 halves a shard's size.
#: Readers accept both; the trainer's loader converts float16 to float32 as it copies a batch.
PARTICLE_DTYPES: tuple[str, ...] = ("float32", "float16")


@dataclass(frozen=True)
class ArraySpec:
    """One dataset of a shard: its dtype and its shape in terms of (J, S, N)."""

    name: str
    dtype: np.dtype
    dims: tuple[str, ...]
    meaning: str

    def shape(self, n_jets: int, n_subjets: int, n_particles: int) -> tuple[int, ...]:
        sizes = {"J": n_jets, "S": n_subjets, "N": n_particles, "F": len(FEATURE_NAMES),
                 "JF": len(JET_FEATURE_NAMES)}
        return tuple(sizes[d] for d in self.dims)


SHARD_ARRAYS: tuple[ArraySpec, ...] = (
    ArraySpec("particles", np.dtype("float32"), ("J", "S", "N", "F"),
                "per constituent: pT [GeV], Δη, sin(Δφ/2), E [GeV] relative to the jet axis; 0 where padded"),
    ArraySpec("particle_mask", np.dtype("bool"), ("J", "S", "N"), "true where a real constituent sits"),
    ArraySpec("subjets", np.dtype("float32"), ("J", "S", "F"),
                "per subjet four-vector sum: pT [GeV], Δη, sin(Δφ/2), E [GeV]; 0 where padded"),
    ArraySpec("subjet_mask", np.dtype("bool"), ("J", "S"), "true where a real subjet sits"),
    ArraySpec("subjet_nparticles", np.dtype("int16"), ("J", "S"), "constituents before truncation to N"),
    ArraySpec("jets", np.dtype("float32"), ("J", "JF"), "jet pT, η, φ, E, mass, number of constituents"),
    ArraySpec("labels", np.dtype("int64"), ("J",), "class index; −1 for unlabeled data"),
)
DATASET_NAMES: tuple[str, ...] = tuple(d.name for d in SHARD_ARRAYS)


def dataset_dtype(name: str, particle_dtype: str = "float32") -> np.dtype:
    """The dtype of dataset ``name`` in a shard whose ``particles`` are stored as ``particle_dtype``."""
    if particle_dtype not in PARTICLE_DTYPES:
        raise ShardError(f"particle_dtype must be one of {PARTICLE_DTYPES}, not {particle_dtype!r}")
    return np.dtype(particle_dtype) if name == "particles" else next(d.dtype for d in SHARD_ARRAYS if d.name == name)


def particle_dtype_of(attrs) -> str:
    """The ``particle_dtype`` attribute of a shard (``float32`` for shards written before it existed)."""
    value = attrs.get("particle_dtype", "float32")
    return value.decode() if isinstance(value, bytes) else str(value)


def bytes_per_jet(n_subjets: int, n_particles: int, particle_dtype: str = "float32") -> int:
    """Bytes one jet takes in a shard (every dataset; HDF5 adds a few kB per file, nothing per jet).

    S=20, N=30: 10,612 bytes with float32 particles, 5,812 with float16 (particles are 9,600 and 4,800).
    """
    return sum(int(np.prod(spec.shape(1, n_subjets, n_particles))) * dataset_dtype(spec.name, particle_dtype).itemsize
               for spec in SHARD_ARRAYS)


@dataclass(frozen=True)
class ClusterConfig:
    """How jets are reclustered into subjets and cut to a fixed size.

    Attributes:
        algorithm: ``ca`` (Cambridge–Aachen), ``kt`` or ``antikt``; inclusive subjets, E-scheme.
        radius: the subjet radius R (in (y, φ)).
        n_subjets: S, the subjets kept per jet (the hardest in pT).
        n_particles: N, the constituents kept per subjet (the hardest in pT).
    """

    algorithm: str = "ca"
    radius: float = 0.2
    n_subjets: int = 20
    n_particles: int = 30

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, not {self.algorithm!r}")
        if not self.radius > 0:
            raise ValueError(f"radius must be positive, not {self.radius}")
        if self.n_subjets < 1 or self.n_particles < 1:
            raise ValueError("n_subjets and n_particles must be at least 1")
        if self.n_particles > np.iinfo(np.int16).max:
            raise ValueError("n_particles must fit in int16")


@dataclass
class ShardArrays:
    """The arrays of one shard, in memory, shaped as in ``SHARD_ARRAYS``."""

    particles: np.ndarray
    particle_mask: np.ndarray
    subjets: np.ndarray
    subjet_mask: np.ndarray
    subjet_nparticles: np.ndarray
    jets: np.ndarray
    labels: np.ndarray

    @property
    def n_jets(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def empty(cls, n_jets: int, n_subjets: int, n_particles: int) -> ShardArrays:
        """Zero-filled arrays for ``n_jets`` jets (labels −1)."""
        arrays = {d.name: np.zeros(d.shape(n_jets, n_subjets, n_particles), d.dtype) for d in SHARD_ARRAYS}
        arrays["labels"][:] = -1
        return cls(**arrays)

    def take(self, index: np.ndarray) -> ShardArrays:
        """The jets at ``index`` (an integer array or a boolean mask over jets)."""
        return ShardArrays(**{name: getattr(self, name)[index] for name in DATASET_NAMES})


@dataclass(frozen=True)
class ShardAttrs:
    """File attributes of a shard (``schema_version`` and ``jjepa_version`` are added on write)."""

    cluster: ClusterConfig
    classes: tuple[str, ...]
    source: dict = field(default_factory=dict)
    particle_dtype: str = "float32"

    def __post_init__(self):
        dataset_dtype("particles", self.particle_dtype)  # a clear error for anything but float32/float16

    def to_hdf5(self) -> dict:
        import json

        from jjepa.common.version import jjepa_version

        return {
            "schema_version": SCHEMA_VERSION,
            "n_subjets": self.cluster.n_subjets,
            "n_particles": self.cluster.n_particles,
            "algorithm": self.cluster.algorithm,
            "radius": self.cluster.radius,
            "feature_names": list(FEATURE_NAMES),
            "jet_feature_names": list(JET_FEATURE_NAMES),
            "classes": list(self.classes),
            "source": json.dumps(self.source),
            "particle_dtype": self.particle_dtype,
            "jjepa_version": jjepa_version(),
        }


def cluster_config_from_attrs(attrs) -> ClusterConfig:
    """The clustering configuration recorded in a shard's attributes."""
    return ClusterConfig(
        algorithm=str(attrs["algorithm"]),
        radius=float(attrs["radius"]),
        n_subjets=int(attrs["n_subjets"]),
        n_particles=int(attrs["n_particles"]),
    )


def validate_shard(path, deep: bool = False) -> list[str]:
    """Check a shard file against schema v1; return the problems found (empty if it conforms).

    Args:
        path: the shard file.
        deep: also read the data and check that masks and padding agree (reads the whole file).
    """
    problems: list[str] = []
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        return [f"cannot open as HDF5: {err}"]
    with f:
        attrs = f.attrs
        for key in ("schema_version", "n_subjets", "n_particles", "algorithm", "radius", "feature_names",
                    "classes", "source", "jjepa_version"):
            if key not in attrs:
                problems.append(f"missing attribute {key!r}")
        if problems:
            return problems
        if int(attrs["schema_version"]) != SCHEMA_VERSION:
            problems.append(f"schema_version is {attrs['schema_version']}, expected {SCHEMA_VERSION}")
        if [str(x) for x in attrs["feature_names"]] != list(FEATURE_NAMES):
            problems.append(f"feature_names are {list(attrs['feature_names'])}, expected {list(FEATURE_NAMES)}")
        n_subjets, n_particles = int(attrs["n_subjets"]), int(attrs["n_particles"])
        if "labels" not in f:
            return problems + ["missing dataset 'labels'"]
        n_jets = f["labels"].shape[0]
        particle_dtype = particle_dtype_of(attrs)
        if particle_dtype not in PARTICLE_DTYPES:
            problems.append(f"particle_dtype is {particle_dtype!r}, expected one of {PARTICLE_DTYPES}")
            particle_dtype = "float32"
        for spec in SHARD_ARRAYS:
            if spec.name not in f:
                problems.append(f"missing dataset {spec.name!r}")
                continue
            ds = f[spec.name]
            expected = spec.shape(n_jets, n_subjets, n_particles)
            if ds.shape != expected:
                problems.append(f"{spec.name}: shape {ds.shape}, expected {expected}")
            dtype = dataset_dtype(spec.name, particle_dtype)
            if ds.dtype != dtype:
                problems.append(f"{spec.name}: dtype {ds.dtype}, expected {dtype}")
            if ds.chunks is not None or ds.compression is not None:
                problems.append(f"{spec.name}: not contiguous (chunks={ds.chunks}, compression={ds.compression})")
            elif n_jets and ds.id.get_offset() is None:
                problems.append(f"{spec.name}: no storage allocated")
        if problems or not deep:
            return problems
        problems += _check_contents(f, len(attrs["classes"]))
    return problems


def _check_contents(f: h5py.File, n_classes: int) -> list[str]:
    problems = []
    pmask = f["particle_mask"][...]
    smask = f["subjet_mask"][...]
    particles = f["particles"][...]
    subjets = f["subjets"][...]
    nparts = f["subjet_nparticles"][...]
    labels = f["labels"][...]
    if np.any(particles[~pmask] != 0):
        problems.append("particles: non-zero values in padded constituent slots")
    if np.any(subjets[~smask] != 0):
        problems.append("subjets: non-zero values in padded subjet slots")
    if np.any(pmask.any(axis=2) != smask):
        problems.append("subjet_mask disagrees with particle_mask (a real subjet needs a real constituent)")
    if np.any(pmask.sum(axis=2) != np.minimum(nparts, pmask.shape[2])):
        problems.append("subjet_nparticles disagrees with particle_mask")
    if not np.all(np.isfinite(particles)) or not np.all(np.isfinite(subjets)):
        problems.append("non-finite values in particles or subjets")
    if not np.all(np.isfinite(f["jets"][...])):
        problems.append("jets: non-finite values")
    if np.any((labels < -1) | (labels >= max(n_classes, 0))) and n_classes:
        problems.append(f"labels outside [-1, {n_classes})")
    return problems


def config_dict(cluster: ClusterConfig) -> dict:
    """The clustering configuration as plain JSON-able values."""
    return asdict(cluster)
