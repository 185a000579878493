"""Shard schema v1: writing, memory-mapping, validation, manifest, atomic writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from jjepa.common.atomic import atomic_path
from jjepa.common.errors import ShardError
from jjepa.common.schema import SHARD_ARRAYS, ClusterConfig, ShardArrays, ShardAttrs, validate_shard
from jjepa.common.shards import (
    Manifest,
    open_memmaps,
    read_manifest,
    read_shard,
    record_for,
    write_manifest,
    write_shard,
)

CFG = ClusterConfig(n_subjets=5, n_particles=3)


def small_arrays(n_jets=4, seed=0) -> ShardArrays:
    rng = np.random.default_rng(seed)
    a = ShardArrays.empty(n_jets, CFG.n_subjets, CFG.n_particles)
    a.particle_mask[:, :2, :2] = True
    a.particles[a.particle_mask] = rng.random((a.particle_mask.sum(), 4))
    a.subjet_mask[:, :2] = True
    a.subjets[a.subjet_mask] = rng.random((a.subjet_mask.sum(), 4))
    a.subjet_nparticles[:, :2] = 2
    a.jets[:] = rng.random((n_jets, 6))
    a.labels[:] = np.arange(n_jets) % 2
    return a


def test_write_then_memmap_reads_the_same_arrays(tmp_path):
    arrays = small_arrays()
    path = tmp_path / "shard-00000.h5"
    write_shard(path, arrays, ShardAttrs(CFG, ("QCD", "top"), {"file": "x.root", "start": 0, "stop": 4}))
    assert validate_shard(path, deep=True) == []
    maps = open_memmaps(path)
    for spec in SHARD_ARRAYS:
        assert maps[spec.name].dtype == spec.dtype
        np.testing.assert_array_equal(maps[spec.name], getattr(arrays, spec.name))
    back = read_shard(path)
    np.testing.assert_array_equal(back.particles, arrays.particles)
    with h5py.File(path) as f:
        assert f.attrs["schema_version"] == 1 and list(f.attrs["classes"]) == ["QCD", "top"]
        assert f.attrs["n_subjets"] == 5 and f.attrs["algorithm"] == "ca"
        assert all(f[s.name].chunks is None for s in SHARD_ARRAYS)


def test_validator_names_each_problem(tmp_path):
    path = tmp_path / "bad.h5"
    arrays = small_arrays()
    write_shard(path, arrays, ShardAttrs(CFG, ("QCD", "top")))
    with h5py.File(path, "r+") as f:
        del f["labels"]
        f.create_dataset("labels", data=arrays.labels.astype(np.int32), chunks=True)
        f["particles"][0, 4, 2, 0] = 1.0  # value in a padded slot
    problems = validate_shard(path, deep=True)
    assert any("labels: dtype int32" in p for p in problems)
    assert any("labels: not contiguous" in p for p in problems)
    problems = validate_shard(path, deep=False)
    assert problems and not any("padded" in p for p in problems)
    with h5py.File(path, "r+") as f:
        del f["labels"]
        f.create_dataset("labels", data=arrays.labels)
    assert validate_shard(path, deep=True) == ["particles: non-zero values in padded constituent slots"]
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert "cannot open" in validate_shard(tmp_path / "junk.h5")[0]


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_deep_validation_finds_non_finite_jets(tmp_path, value):
    path = tmp_path / "shard-00000.h5"
    write_shard(path, small_arrays(), ShardAttrs(CFG, ("QCD", "top")))
    with h5py.File(path, "r+") as f:
        f["jets"][2, 1] = value  # the η of jet 2
    assert validate_shard(path, deep=True) == ["jets: non-finite values"]


def test_wrong_shape_is_refused_and_leaves_no_file(tmp_path):
    arrays = small_arrays()
    arrays.subjets = arrays.subjets[:, :3]
    path = tmp_path / "shard-00000.h5"
    with pytest.raises(ValueError, match="subjets: block of shape"):
        write_shard(path, arrays, ShardAttrs(CFG, ()))
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_removes_the_temporary_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_manifest_round_trip_and_counts(tmp_path):
    arrays = small_arrays(n_jets=5)
    path = tmp_path / "shard-00000.h5"
    write_shard(path, arrays, ShardAttrs(CFG, ("QCD", "top")))
    record = record_for(path, arrays.labels, ("QCD", "top"), {"file": "a", "start": 0, "stop": 5})
    assert record.class_counts == [3, 2] and record.n_jets == 5 and len(record.sha256) == 64
    write_manifest(tmp_path, Manifest(cluster=CFG, classes=("QCD", "top"), shards=[record]))
    back = read_manifest(tmp_path)
    assert back.cluster == CFG and back.n_jets == 5 and back.shards[0] == record
    with pytest.raises(ShardError, match="no manifest.json"):
        read_manifest(tmp_path / "elsewhere")
